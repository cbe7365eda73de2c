"""`fakemerge demo` end to end at a tiny scale: every stage runs, results.json has the documented schema."""

import json

import pytest

from fakemerge import demo
from fakemerge.cli import main
from fakemerge.evaluation.calibration import DEFAULT_RULE
from fakemerge.lab import generate as gen
from fakemerge.lab import pretrain as pt
from fakemerge.lab.families import FAMILIES, SEEN_FAMILIES
from fakemerge.models.detector import read_meta
from fakemerge.study.entries import load_entries

ROW_KEYS = {"model", "kind", "method", "trained_on", "family", "seen", "auc", "ap", "eer", "acc", "acc_calibrated",
            "video_auc"}


@pytest.fixture()
def tiny_demo(monkeypatch):
    monkeypatch.setitem(gen.SCALES, "tiny", gen.Scale((4, 2, 3), real_videos=1, fake_videos=1, frames=2))
    monkeypatch.setitem(pt.SETTINGS, "tiny", {"identities": 4, "per_identity": 4, "epochs": 1, "lr": 1e-3,
                                              "batch": 8})
    real_images = pt.real_images
    monkeypatch.setattr(pt, "real_images", lambda n, per, seed, size: real_images(min(n, 4), min(per, 4), seed,
                                                                                    size))
    monkeypatch.setitem(demo.SCALES, "tiny", demo.DemoScale(epochs=1, batch_size=8))
    return "tiny"


def test_demo_runs_every_stage_and_writes_results(tiny_demo, tmp_path, capsys):
    main(["demo", "--out", str(tmp_path / "d"), "--scale", tiny_demo])  # exits (SystemExit) only on failure
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "d" / "results.json").read_text())
    assert rows and all(set(r) == ROW_KEYS for r in rows)
    models = {r["model"]: r for r in rows}
    assert {"FS", "FR", "EFS", "FE", "joint", "average", "r2m", "r2m(FS,FR,EFS)+FE"} <= set(models)
    assert {r["family"] for r in rows} == set(FAMILIES)
    assert all(r["seen"] == (r["family"] in SEEN_FAMILIES) for r in rows)
    assert models["FS"]["kind"] == "specialist" and models["FS"]["trained_on"] == ["FS"]
    assert models["joint"]["trained_on"] == SEEN_FAMILIES and models["r2m"]["kind"] == "merged"
    added = {r["family"]: r["auc"] for r in rows if r["model"] == "r2m(FS,FR,EFS)+FE"}
    assert added == {r["family"]: r["auc"] for r in rows if r["model"] == "r2m"}  # composable re-merge
    assert "AUC on the test split" in out and "detect " in out
    for name in ("auc_heatmap.png", "results.md", "timings.json", "models/merged-r2m.safetensors"):
        assert (tmp_path / "d" / name).is_file()
    assert json.loads((tmp_path / "d" / "tuning.json").read_text()) == {"full": {}}  # defaults at this scale
    # Every merged model is calibrated on validation; its rows report ACC at 0.5 and at the threshold.
    merged = [r for r in rows if r["kind"] == "merged"]
    assert merged and all(r["acc_calibrated"] is not None for r in merged)
    assert all(r["acc_calibrated"] is None for r in rows if r["kind"] != "merged")
    meta = read_meta(tmp_path / "d" / "models" / "merged-r2m.safetensors")
    assert meta.calibration["split"] == "val" and meta.calibration["rule"] == DEFAULT_RULE
    assert "threshold" in out and "calibrated" in out  # the detect step shows calibrated verdicts
    entries = {e.name: e for e in load_entries(tmp_path / "d" / "models.json")}
    assert set(entries) == set(models) and entries["r2m"].method == "r2m" and entries["FS"].group == "full"
    assert entries["r2m(FS,FR,EFS)+FE"].role == "composable" and entries["r2m"].path.is_file()
