"""Calibrated verdicts (evaluation/calibration.py): each rule against a brute-force search over every
threshold, the file rewrite that leaves the weights byte-identical, and `fakemerge calibrate` -> eval ->
detect end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from fakemerge.cli import main
from fakemerge.errors import InputError
from fakemerge.evaluation.calibration import (
    RULES,
    balanced_accuracy,
    choose_threshold,
    held_out_balanced_accuracy,
    write_calibration,
)
from fakemerge.io.safetensors import LazyState, tensors_sha256
from fakemerge.models.detector import Detector, ModelMeta, read_meta, save_detector
from fakemerge.models.loading import load_base, load_detector


def _brute(y, s, rule, target=0.05):
    """Every threshold that changes a verdict (each distinct score, and above the maximum), scored the slow
    way: the best objective and every threshold that reaches it."""
    y, s = np.asarray(y), np.asarray(s, dtype=float)
    best, arg = -np.inf, []
    for t in [*np.unique(s), np.inf]:
        pred = s >= t
        tpr, fpr = pred[y == 1].mean(), pred[y == 0].mean()
        value = {"balanced": (tpr + 1 - fpr) / 2, "accuracy": (pred == (y == 1)).mean(),
                 "eer": -abs(fpr - (1 - tpr)), "fpr": tpr if fpr <= target else -np.inf}[rule]
        if value > best + 1e-12:
            best, arg = value, [t]
        elif abs(value - best) <= 1e-12:
            arg.append(t)
    return best, arg


@pytest.mark.parametrize("rule", RULES)
def test_each_rule_matches_a_brute_force_search(rule):
    rng = np.random.default_rng(3)
    for trial in range(20):
        n = int(rng.integers(6, 60))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        s = np.round(np.clip(rng.normal(0.2 + 0.4 * y, 0.25), 0, 1), 2)  # rounding makes ties
        cal = choose_threshold(y, s, rule, target_fpr=0.2)
        best, _ = _brute(y, s, rule, target=0.2)
        pred = s >= cal.threshold
        tpr, fpr = pred[y == 1].mean(), pred[y == 0].mean()
        got = {"balanced": (tpr + 1 - fpr) / 2, "accuracy": (pred == (y == 1)).mean(),
               "eer": -abs(fpr - (1 - tpr)), "fpr": tpr if fpr <= 0.2 else -np.inf}[rule]
        assert got == pytest.approx(best, abs=1e-12), (trial, rule)
        assert (cal.tpr, cal.fpr) == pytest.approx((tpr, fpr))
        assert cal.balanced_accuracy == pytest.approx(balanced_accuracy(y, s, cal.threshold))
        assert cal.threshold not in set(s.tolist()) or cal.threshold == s.min()  # midway between scores


def test_threshold_sits_midway_in_the_gap_and_ties_go_high():
    y = [0, 0, 1, 1]
    assert choose_threshold(y, [0.1, 0.2, 0.6, 0.9], "balanced").threshold == pytest.approx(0.4)
    # A merged model whose logits shifted: every score under 0.5, still perfectly separable.
    cal = choose_threshold([0, 0, 0, 1, 1, 1], [0.01, 0.02, 0.03, 0.20, 0.30, 0.40], "eer")
    assert cal.threshold == pytest.approx(0.115) and cal.balanced_accuracy == 1.0
    # Both cuts give balanced accuracy 0.75; the higher one (fewer fakes called) is kept.
    assert choose_threshold([0, 1, 0, 1], [0.1, 0.3, 0.5, 0.7], "balanced").threshold == pytest.approx(0.6)


def test_fpr_rule_respects_the_false_alarm_budget():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(200, int), np.ones(200, int)]
    s = np.r_[rng.normal(0, 1, 200), rng.normal(1.5, 1, 200)]
    for target in (0.01, 0.05, 0.2):
        cal = choose_threshold(y, s, "fpr", target_fpr=target)
        assert cal.fpr <= target and cal.target_fpr == target
        looser = s[(s < cal.threshold) & (y == 1)].max()  # catching one more fake breaks the budget
        assert (s[y == 0] >= looser).mean() > target


def test_bad_calibration_inputs_are_errors():
    with pytest.raises(InputError, match="reals and fakes"):
        choose_threshold([1, 1], [0.2, 0.3])
    with pytest.raises(InputError, match="--rule"):
        choose_threshold([0, 1], [0.2, 0.3], "magic")
    with pytest.raises(InputError, match="target-fpr"):
        choose_threshold([0, 1], [0.2, 0.3], "fpr", target_fpr=1.5)


def test_held_out_balanced_accuracy_cross_fits_over_groups():
    y = np.r_[np.zeros(40, int), np.ones(40, int)]
    separable = np.r_[np.full(40, 0.1), np.full(40, 0.3)]
    groups = [f"v{i // 2}" for i in range(80)]
    assert held_out_balanced_accuracy(y, separable, groups, "balanced") == 1.0
    rng = np.random.default_rng(1)
    noise = rng.uniform(size=80)
    assert held_out_balanced_accuracy(y, noise, groups, "balanced") < 0.75  # no in-sample optimism


def _detector_file(tiny_base, path, seed=0):
    torch.manual_seed(seed)
    detector = Detector(load_base(tiny_base)[0])
    save_detector(detector, path, ModelMeta(kind="merged", method="average", families=["FS", "FR"]))
    return path


def test_write_calibration_keeps_every_tensor_byte_identical(tiny_base, tmp_path):
    path = _detector_file(tiny_base, tmp_path / "m.safetensors")
    before = tensors_sha256(LazyState(path))
    with safe_open(str(path), "pt") as f:
        raw = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    cal = choose_threshold([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4])
    record = write_calibration(path, cal, {"split": "val", "data": "d.json", "data_sha256": "abc"})
    meta = read_meta(path)
    assert meta.threshold == pytest.approx(0.25) and meta.calibration == record
    assert record["weights_sha256"] == before == tensors_sha256(LazyState(path))
    with safe_open(str(path), "pt") as f:
        assert set(f.keys()) == set(raw) and all(torch.equal(f.get_tensor(k), raw[k]) for k in raw)
    assert meta.kind == "merged" and meta.method == "average"  # the rest of the metadata is kept
    assert load_detector(path)[0].threshold == pytest.approx(0.25)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # atomic: no temp file left


def test_calibrate_then_eval_and_detect_use_the_stored_threshold(tiny_base, tiny_data, tmp_path, capsys):
    model = _detector_file(tiny_base, tmp_path / "m.safetensors")
    main(["calibrate", str(model), "--data", str(tiny_data), "--split", "val", "--rule", "eer"])
    meta = read_meta(model)
    cal = meta.calibration
    assert cal["rule"] == "eer" and cal["split"] == "val" and cal["families"] == ["FR", "FS"]
    assert cal["n_real"] == 16 and cal["n_fake"] == 32 and len(cal["data_sha256"]) == 64
    assert "thresholds chosen on val" in capsys.readouterr().out

    main(["eval", str(model), "--data", str(tiny_data), "--split", "val", "-o", str(tmp_path / "ev")])
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["threshold"] == meta.threshold
    from fakemerge.evaluation.runner import read_predictions

    pred = read_predictions(tmp_path / "ev" / "predictions.csv")
    at = ((pred["score"] >= meta.threshold) == (pred["label"] == 1)).mean()
    assert report["overall"]["acc_calibrated"] == pytest.approx(at)
    assert report["overall"]["acc"] == pytest.approx(((pred["score"] >= 0.5) == (pred["label"] == 1)).mean())
    rows = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert all(r["acc_calibrated"] is not None for r in rows)

    from fakemerge.inference import detect

    root = tiny_data.parent
    frames = sorted(root.glob("FS/test/*/*.png"))[:4] + sorted(root.glob("real/test/*/*.png"))[:4]
    results = list(detect(model, [str(p) for p in frames]))
    assert all(r.calibrated and r.threshold == meta.threshold for r in results)
    assert all(r.verdict == ("fake" if r.score >= meta.threshold else "real") for r in results)
    capsys.readouterr()
    main(["detect", str(model), *map(str, frames[:1]), "--format", "json"])
    captured = capsys.readouterr()
    shown = json.loads(captured.out.splitlines()[0])
    assert shown["calibrated"] is True and shown["threshold"] == meta.threshold
    assert "uncalibrated" not in captured.err


def test_uncalibrated_models_say_so(tiny_base, tiny_data, tmp_path, capsys):
    from fakemerge.inference import detect

    model = _detector_file(tiny_base, tmp_path / "m.safetensors")
    frame = sorted(tiny_data.parent.glob("FS/test/*/*.png"))[0]
    (r,) = detect(model, [str(frame)])
    assert (r.threshold, r.calibrated) == (0.5, False)
    main(["detect", str(model), str(frame)])
    assert "uncalibrated model" in capsys.readouterr().err
