"""Evaluation runner, reports, plots and `fakemerge eval` on the tiny dataset."""

import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from transformers import CLIPVisionModel

from fakemerge.cli import main
from fakemerge.config import EvalOptions
from fakemerge.data.formats import load_records
from fakemerge.data.records import select
from fakemerge.evaluation import metrics
from fakemerge.evaluation.plots import auc_heatmap
from fakemerge.evaluation.report import results_markdown
from fakemerge.evaluation.runner import evaluate, evaluate_many, family_rows, predict, read_predictions
from fakemerge.models.backbone import tiny_config
from fakemerge.models.detector import Detector, ModelMeta, save_detector
from fakemerge.models.preprocessing import Preprocessing, batch_inputs

TINY = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64)


def tiny_detector(seed=0) -> Detector:
    torch.manual_seed(seed)
    det = Detector(CLIPVisionModel(tiny_config(**TINY))).eval()
    with torch.no_grad():  # a large head so scores spread over (0, 1) instead of all ~0.5
        det.head.weight.mul_(20)
    return det


def save_calibrated_pair(directory) -> list:
    """Two specialist files: spec_FS uncalibrated, spec_FR with a calibrated threshold of 0.001 (inside the
    spread of its scores, so ACC there differs from ACC at 0.5)."""
    paths = []
    for i, (fam, threshold) in enumerate((("FS", None), ("FR", 0.001))):
        det = tiny_detector(i)
        det.threshold = threshold
        paths.append(directory / f"spec_{fam}.safetensors")
        save_detector(det, paths[-1], ModelMeta(kind="specialist", method="full", families=[fam]))
    return paths


def test_predict_streams_scores_equal_to_direct_forward(tiny_data, tmp_path):
    det = tiny_detector()
    root, records = load_records(tiny_data)
    test = select(records, "test")
    seen = []
    path = predict(det, root, test, tmp_path / "p.csv", options=EvalOptions(batch_size=7),
                   progress=lambda stage, done, total, **info: seen.append((done, total)))
    pred = read_predictions(path)
    assert len(pred["score"]) == len(test) and seen[-1] == (len(test), len(test))
    import cv2

    images = [cv2.cvtColor(cv2.imread(str(root / r.path)), cv2.COLOR_BGR2RGB) for r in test]
    direct = det.predict_proba(batch_inputs(images, Preprocessing(size=32))).numpy()
    assert pred["path"].tolist() == [r.path for r in test]
    assert pred["video"].tolist() == [r.video for r in test]
    np.testing.assert_allclose(pred["score"], direct, rtol=1e-4, atol=1e-6)


def test_models_sharing_a_pass_score_as_they_would_alone(tiny_data, tmp_path):
    dets = [tiny_detector(seed) for seed in (0, 1, 2)]
    root, records = load_records(tiny_data)
    test = select(records, "test")
    shared = predict(dets, root, test, [tmp_path / f"s{i}.csv" for i in range(3)], options=EvalOptions(batch_size=5))
    for i, det in enumerate(dets):
        alone = read_predictions(predict(det, root, test, tmp_path / f"a{i}.csv", options=EvalOptions(batch_size=64)))
        together = read_predictions(shared[i])
        assert together["path"].tolist() == alone["path"].tolist()
        np.testing.assert_allclose(together["score"], alone["score"], rtol=1e-4, atol=1e-6)
    assert not np.allclose(read_predictions(shared[0])["score"], read_predictions(shared[1])["score"])
    reports = evaluate_many(dets, tiny_data, [tmp_path / "e0", tmp_path / "e1", tmp_path / "e2"],
                            names=["m0", "m1", "m2"], options=EvalOptions(models_per_pass=2, roc=False))
    assert [r["model"] for r in reports] == ["m0", "m1", "m2"]
    for i, report in enumerate(reports):
        pred = read_predictions(tmp_path / f"e{i}" / "predictions.csv")
        assert report["overall"]["auc"] == pytest.approx(roc_auc_score(pred["label"], pred["score"]))
    with pytest.raises(ValueError, match="3 detectors but 2 CSV paths"):
        predict(dets, root, test, [tmp_path / "x.csv", tmp_path / "y.csv"])


def test_evaluate_report_matches_sklearn_per_family(tiny_data, tmp_path):
    report = evaluate(tiny_detector(), tiny_data, tmp_path, name="m", options=EvalOptions(video_agg="max"))
    pred = read_predictions(tmp_path / "predictions.csv")
    y, s, fam = pred["label"], pred["score"], pred["family"]
    assert report["overall"]["auc"] == pytest.approx(roc_auc_score(y, s))
    assert set(report["families"]) == {"FS", "FR"}
    for f, m in report["families"].items():
        rows = (y == 0) | (fam == f)  # each fake family vs ALL reals of the split
        assert m["auc"] == pytest.approx(roc_auc_score(y[rows], s[rows]))
        assert m["n_real"] == int((y == 0).sum()) and m["n_fake"] == int((fam == f).sum())
        _, vy, vs = metrics.video_scores(pred["video"][rows], y[rows], s[rows], how="max")
        assert m["video_auc"] == pytest.approx(roc_auc_score(vy, vs))
        assert m["n_videos"] == len(set(pred["video"][rows].tolist()))
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["overall"]["auc"] == pytest.approx(report["overall"]["auc"])
    assert "| FS |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "roc.png").read_bytes()[:4] == b"\x89PNG"


def test_unreadable_and_missing_images_are_reported_not_dropped(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data.parent, data)
    root, records = load_records(data / tiny_data.name)
    test = select(records, "test")
    (root / test[0].path).write_bytes(b"not a png")
    (root / test[1].path).unlink()
    report = evaluate(tiny_detector(), data / tiny_data.name, tmp_path / "out")
    assert report["n_scored"] == len(test) - 2
    assert len(report["skipped"]) == 2
    assert any(test[0].path in line for line in report["skipped"])
    assert any(test[1].path in line for line in report["skipped"])
    with open(tmp_path / "out" / "predictions.csv") as f:
        assert len(list(csv.DictReader(f))) == len(test) - 2


def test_family_filter_and_rows_schema(tiny_data, tmp_path):
    report = evaluate(tiny_detector(), tiny_data, tmp_path, options=EvalOptions(families=["FR"]))
    assert list(report["families"]) == ["FR"]
    rows = family_rows(report, "spec", "specialist", "full", ["FR"], ["FS", "FR"])
    fr = report["families"]["FR"]
    assert rows == [{"model": "spec", "kind": "specialist", "method": "full", "trained_on": ["FR"],
                     "family": "FR", "seen": True, "auc": fr["auc"], "ap": fr["ap"], "eer": fr["eer"],
                     "acc": fr["acc"], "acc_calibrated": None, "video_auc": fr["video_auc"]}]


def test_results_table_and_heatmap(tmp_path):
    rows = [{"model": m, "family": f, "seen": f != "U", "auc": a}
            for m, f, a in [("a", "FS", 0.9), ("a", "U", 0.5), ("b", "FS", 0.7), ("b", "U", math.nan)]]
    md = results_markdown(rows)
    assert "| a | 0.900 | 0.500 | 0.900 | 0.500 | 0.700 |" in md
    assert "| b | 0.700 | n/a | 0.700 | n/a | 0.700 |" in md
    auc_heatmap(rows, tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cli_eval_two_models(tiny_data, tmp_path, capsys):
    paths = []
    for i, fam in enumerate(("FS", "FR")):
        paths.append(tmp_path / f"spec_{fam}.safetensors")
        meta = ModelMeta(kind="specialist", method="full", families=[fam])
        save_detector(tiny_detector(i), paths[-1], meta)
    main(["eval", *map(str, paths), "--data", str(tiny_data), "--out", str(tmp_path / "out")])
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    pairs = {(m, f) for m in ("spec_FS", "spec_FR") for f in ("FS", "FR")}
    assert {(r["model"], r["family"]) for r in rows} == pairs
    assert all(r["seen"] for r in rows)
    for name in ("spec_FS", "spec_FR"):
        assert (tmp_path / "out" / name / "report.json").exists()
    assert (tmp_path / "out" / "auc_heatmap.png").exists() and (tmp_path / "out" / "results.md").exists()


def test_cli_eval_bad_input_exits_2(tiny_data, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["eval", str(tmp_path / "nope.safetensors"), "--data", str(tiny_data), "--out", str(tmp_path)])
    assert e.value.code == 2


def test_cli_eval_settings_from_yaml_then_flags(tiny_data, tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    save_detector(tiny_detector(), path, ModelMeta(kind="specialist", method="full", families=["FS"]))
    settings = tmp_path / "eval.yaml"
    settings.write_text("split: val\nvideo_agg: topk\nk: 2\nroc: false\n")
    main(["eval", str(path), "--data", str(tiny_data), "--out", str(tmp_path / "a"), "--config", str(settings)])
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert (report["split"], report["video_agg"], report["topk"]) == ("val", "topk", 2)
    assert not (tmp_path / "a" / "roc.png").exists()
    main(["eval", str(path), "--data", str(tiny_data), "--out", str(tmp_path / "b"), "--config", str(settings),
          "--split", "test", "--topk", "1"])
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert (report["split"], report["topk"]) == ("test", 1)
    settings.write_text("split: val\nbatch: 3\n")
    with pytest.raises(SystemExit) as e:
        main(["eval", str(path), "--data", str(tiny_data), "--out", str(tmp_path / "c"), "--config", str(settings)])
    assert e.value.code == 2 and "batch" in capsys.readouterr().err
