"""Robustness perturbations: parsing, each family against a hand-computed or OpenCV reference, determinism,
and `eval --perturb` end to end (AUC per perturbation and severity, plot, CLI errors)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from test_evaluation import save_calibrated_pair, tiny_detector

from fakemerge.cli import main
from fakemerge.config import EvalOptions
from fakemerge.data.formats import load_records
from fakemerge.data.records import select
from fakemerge.errors import InputError
from fakemerge.evaluation.perturbations import FAMILIES, Perturbation, parse
from fakemerge.evaluation.runner import evaluate, read_predictions
from fakemerge.models.preprocessing import batch_inputs


def image(size: int = 32, seed: int = 0) -> np.ndarray:
    out = np.random.default_rng(seed).integers(30, 220, (size, size, 3), dtype=np.uint8)
    out.flags.writeable = False  # decoded images may be shared read-only: perturbations must copy
    return out


def test_parse_ladders_names_and_errors():
    assert [p.name for p in parse("jpeg:50, blur:1.5")] == ["jpeg:50", "blur:1.5"]
    assert [p.name for p in parse("blur")] == ["blur:1.167", "blur:1.5", "blur:2.167", "blur:2.833", "blur:3.5"]
    assert [p.level for p in parse("blur")] == [1, 2, 3, 4, 5] and parse("blur:1.2")[0].level is None
    assert len(parse("all")) == 5 * len(FAMILIES) and len(parse(["noise", "jpeg:10"])) == 6
    assert parse("resize:0.5")[0] == Perturbation("resize", 0.5)
    for spec, message in [("sharpen:1", "unknown perturbation"), ("jpeg:101", "JPEG quality must be in"),
                          ("jpeg:50.5", "whole number"), ("blur:0", r"must be in \(0"), ("noise:x", "not a number"),
                          ("jpeg:50,jpeg:50", "given more than once"), ("resize:nan", "finite")]:
        with pytest.raises(InputError, match=message):
            parse(spec)
    assert EvalOptions(perturbations=["jpeg", "blur:1.5"]).perturbations[-1] == "blur:1.5"
    with pytest.raises(InputError, match="unknown perturbation"):
        EvalOptions(perturbations=["sharpen"])


def test_families_match_their_references():
    im = image()
    ok, enc = cv2.imencode(".jpg", cv2.cvtColor(im, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 50])
    assert np.array_equal(parse("jpeg:50")[0](im, "a"), cv2.cvtColor(cv2.imdecode(enc, 1), cv2.COLOR_BGR2RGB))
    # DeeperForensics GB: kernel k, sigma k/6. Level 2 is k = 9, level 1 k = 7.
    assert np.array_equal(parse("blur:1.5")[0](im, "a"), cv2.GaussianBlur(im, (9, 9), 1.5))
    assert np.array_equal(parse("blur:1.167")[0](im, "a"), cv2.GaussianBlur(im, (7, 7), 1.167))
    small = cv2.resize(im, (16, 16), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(parse("resize:0.5")[0](im, "a"), cv2.resize(small, (32, 32), interpolation=cv2.INTER_LINEAR))
    flat = np.full((4, 4, 3), 200, np.uint8)
    assert (parse("contrast:0.5")[0](flat, "a") == 100).all()
    assert (parse("brightness:0.2")[0](flat, "a") == 251).all() and (parse("brightness:0.5")[0](flat, "a") == 255).all()
    grey = parse("saturation:0")[0](im, "a").astype(int)
    assert np.abs(grey - grey.mean(-1, keepdims=True)).max() <= 1  # no chroma left
    luma = cv2.cvtColor(im, cv2.COLOR_RGB2YCrCb)[..., 0].astype(int)
    assert np.abs(grey[..., 0] - luma).max() <= 1  # brightness kept
    assert np.abs(parse("saturation:1")[0](im, "a").astype(int) - im).max() <= 1


def test_noise_and_blocks_are_seeded_by_image_key_and_seed():
    im = np.full((64, 64, 3), 128, np.uint8)
    noise = parse("noise:0.05")[0]
    a, b = noise(im, "x/1.png"), noise(im, "x/1.png")
    assert np.array_equal(a, b) and not np.array_equal(a, noise(im, "x/2.png"))
    assert not np.array_equal(a, noise(im, "x/1.png", seed=1))
    luma = cv2.cvtColor(a, cv2.COLOR_RGB2YCrCb)[..., 0].astype(float)
    assert luma.std() == pytest.approx(0.05 * 255, rel=0.15)  # sigma in units of the full range
    block = parse("block:16")[0]
    big = image(256, seed=1)
    out = block(big, "k")
    changed = (out != big).any(-1)
    assert np.array_equal(out, block(big, "k")) and 0 < changed.sum() <= 16 * 64
    assert (out[changed] == 128).all()
    ys, xs = np.nonzero(changed)
    assert ys.max() - ys.min() >= 8  # several 8-px squares, not one
    assert (block(image(64), "k") != image(64)).any(-1).sum() <= 16 * 4  # 2-px squares on 64-px crops


@pytest.fixture
def two_models(tmp_path):
    return save_calibrated_pair(tmp_path)


def test_eval_reports_auc_per_perturbation_from_perturbed_images(tiny_data, tmp_path):
    det = tiny_detector()
    options = EvalOptions(perturbations=["jpeg:30", "contrast:0", "noise:0.1"], batch_size=7, seed=3)
    report = evaluate(det, tiny_data, tmp_path, options=options)
    names = [e["perturbation"] for e in report["robustness"]]
    assert names == ["jpeg:30", "contrast:0", "noise:0.1"] and report["perturbation_seed"] == 3
    root, records = load_records(tiny_data)
    test = select(records, "test")
    pred = read_predictions(tmp_path / "perturbed" / "noise_0.1.csv")
    noise = parse("noise:0.1")[0]
    images = [noise(cv2.cvtColor(cv2.imread(str(root / r.path)), cv2.COLOR_BGR2RGB), r.path, seed=3) for r in test]
    direct = det.predict_proba(batch_inputs(images, det.preprocessing)).numpy()
    np.testing.assert_allclose(pred["score"], direct, rtol=1e-4, atol=1e-6)
    entry = report["robustness"][2]
    assert entry["overall"]["auc"] == pytest.approx(roc_auc_score(pred["label"], pred["score"]))
    fr = (pred["label"] == 0) | (pred["family"] == "FR")
    assert entry["families"]["FR"]["auc"] == pytest.approx(roc_auc_score(pred["label"][fr], pred["score"][fr]))
    black = report["robustness"][1]  # contrast 0: every image black, one score for all
    assert black["overall"]["auc"] == 0.5 and black["level"] is None
    assert report["robustness"][0]["overall"]["auc"] != report["overall"]["auc"]
    assert "## Robustness" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["robustness"][1]["perturbation"] == "contrast:0"


def test_acc_at_the_calibrated_threshold_beside_0_5(tiny_data, tmp_path, two_models):
    from fakemerge.evaluation import metrics

    main(["eval", *map(str, two_models), "--data", str(tiny_data), "--out", str(tmp_path / "out"), "--no-roc"])
    for path, threshold in zip(two_models, (None, 0.001), strict=True):
        report = json.loads((tmp_path / "out" / path.stem / "report.json").read_text())
        pred = read_predictions(tmp_path / "out" / path.stem / "predictions.csv")
        assert report["threshold"] == threshold
        assert report["overall"]["acc"] == metrics.accuracy(pred["label"], pred["score"], 0.5)
        md = (tmp_path / "out" / path.stem / "report.md").read_text()
        if threshold is None:
            assert "acc_calibrated" not in report["overall"] and "Uncalibrated" in md
        else:
            assert report["overall"]["acc_calibrated"] == metrics.accuracy(pred["label"], pred["score"], 0.001)
            assert report["overall"]["acc_calibrated"] != report["overall"]["acc"]
            assert "ACC@thr" in md and "calibrated threshold 0.001" in md
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["model"]: r["acc_calibrated"] is None for r in rows} == {"spec_FS": True, "spec_FR": False}
    assert not (tmp_path / "out" / "spec_FS" / "roc.png").exists()


def test_cli_eval_perturb_writes_robustness_results_and_refuses_bad_specs(tiny_data, tmp_path, two_models, capsys):
    out = tmp_path / "out"
    main(["eval", *map(str, two_models), "--data", str(tiny_data), "--out", str(out), "--perturb", "jpeg:50,blur:1.5",
          "--perturb", "resize:0.5", "--no-roc"])
    printed = capsys.readouterr().out
    assert "AUC under perturbations" in printed and "blur:1.5" in printed
    rows = json.loads((out / "robustness.json").read_text())
    assert {(r["model"], r["perturbation"]) for r in rows if r["family"] == "overall"} == {
        (m, p) for m in ("spec_FS", "spec_FR") for p in ("jpeg:50", "blur:1.5", "resize:0.5")}
    report = json.loads((out / "spec_FR" / "report.json").read_text())
    overall = next(r for r in rows if (r["model"], r["perturbation"], r["family"]) == ("spec_FR", "blur:1.5",
                                                                                         "overall"))
    assert overall["auc"] == report["robustness"][1]["overall"]["auc"]
    assert overall["auc_drop"] == pytest.approx(report["overall"]["auc"] - overall["auc"])
    assert (out / "robustness_heatmap.png").exists() and "| spec_FR |" in (out / "robustness.md").read_text()
    with pytest.raises(SystemExit) as e:
        main(["eval", str(two_models[0]), "--data", str(tiny_data), "--out", str(tmp_path / "bad"),
              "--perturb", "jpeg:500"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "jpeg:500: JPEG quality must be in [1, 100]" in " ".join(err.split())
    assert not (tmp_path / "bad").exists()  # refused before any work
