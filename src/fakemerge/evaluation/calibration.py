"""Calibrated verdicts: choose the P(fake) threshold on a validation split and store it in the model file.

A merged model ranks well (AUC) but its logits are shifted, so "fake when P(fake) ≥ 0.5" is often wrong for
it. `choose_threshold(labels, scores, rule)` picks the threshold by a documented rule; `calibrate` scores
model files on a split (one pass shared by all of them) and writes each threshold, with where it came from,
into the file's metadata (`ModelMeta.threshold`, `ModelMeta.calibration`). The weights are never touched:
the tensors of a calibrated file are byte-identical to the uncalibrated ones (the merge stays
training-free). Detection, the service and evaluation then use the stored threshold.

Rules (a verdict is "fake" when score ≥ threshold):
- `balanced`: the best balanced accuracy (TPR + TNR) / 2, i.e. Youden's J; does not depend on the split's
  real/fake ratio.
- `eer`: the equal-error point, where the false-positive and false-negative rates are closest.
- `accuracy`: the best plain accuracy on the split (depends on its real/fake ratio).
- `fpr`: the most sensitive threshold whose false-positive rate is ≤ `target_fpr` (a false-alarm budget).
The threshold is placed midway between the two neighbouring scores that bound the chosen cut, so it
classifies the calibration split exactly as the cut does and sits in the gap rather than on a score.
`DEFAULT_RULE` was chosen on ForgeryLab validation: a threshold fitted by each rule on one half of the
validation videos, balanced accuracy measured on the other half (both ways; `held_out_balanced_accuracy`),
mean over the 11 merged models of the small demo at seed 0: eer 0.758, fpr 0.740, balanced 0.734 (it
overfits its own half), accuracy 0.571 (the split holds 6 fakes per real); eer was ahead for 9 of the 11.
benchmarks/quality.py re-measures the comparison at full scale (docs/results.md, "Calibrated verdicts").
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fakemerge.errors import InputError
from fakemerge.evaluation.metrics import validate_binary
from fakemerge.progress import Progress, silent

RULES = ("balanced", "eer", "accuracy", "fpr")
DEFAULT_RULE = "eer"


@dataclass(frozen=True)
class Calibration:
    """A chosen threshold and how it does on the split it was chosen on."""

    threshold: float
    rule: str
    tpr: float
    fpr: float
    balanced_accuracy: float
    accuracy: float
    n_real: int
    n_fake: int
    target_fpr: float | None = None


def _cuts(scores: np.ndarray) -> np.ndarray:
    """Candidate thresholds: below every score (all fake), midway between consecutive distinct scores,
    above every score (all real)."""
    u = np.unique(scores)
    above = np.nextafter(u[-1], np.inf)
    return np.concatenate([u[:1], (u[:-1] + u[1:]) / 2, [above]])


def choose_threshold(labels, scores, rule: str = DEFAULT_RULE, *, target_fpr: float = 0.05) -> Calibration:
    """The threshold `rule` picks on (labels, scores); ties go to the highest threshold (fewest fakes)."""
    if rule not in RULES:
        raise InputError(f"--rule {rule}: choose one of {', '.join(RULES)}")
    if rule == "fpr" and not 0 <= target_fpr < 1:
        raise InputError(f"--target-fpr {target_fpr}: must be in [0, 1)")
    y, s = validate_binary(labels, scores)
    n_fake, n_real = int(y.sum()), int(len(y) - y.sum())
    if n_fake == 0 or n_real == 0:
        raise InputError(f"calibration needs reals and fakes (got {n_real} real, {n_fake} fake)")
    cuts = _cuts(s)
    fake_sorted, real_sorted = np.sort(s[y == 1]), np.sort(s[y == 0])
    tpr = (n_fake - np.searchsorted(fake_sorted, cuts, side="left")) / n_fake  # P(score ≥ cut | fake)
    fpr = (n_real - np.searchsorted(real_sorted, cuts, side="left")) / n_real
    balanced = (tpr + 1 - fpr) / 2
    accuracy = (tpr * n_fake + (1 - fpr) * n_real) / len(y)
    if rule == "balanced":
        objective = balanced
    elif rule == "accuracy":
        objective = accuracy
    elif rule == "eer":
        objective = -np.abs(fpr - (1 - tpr))
    else:
        objective = np.where(fpr <= target_fpr, tpr, -np.inf)
    best = np.flatnonzero(objective == objective.max())[-1]  # cuts ascend: the last tie is the highest
    return Calibration(threshold=float(cuts[best]), rule=rule, tpr=float(tpr[best]), fpr=float(fpr[best]),
                       balanced_accuracy=float(balanced[best]), accuracy=float(accuracy[best]),
                       n_real=n_real, n_fake=n_fake, target_fpr=target_fpr if rule == "fpr" else None)


def balanced_accuracy(labels, scores, threshold: float) -> float:
    y, s = validate_binary(labels, scores)
    pred = s >= threshold
    return float((pred[y == 1].mean() + (~pred[y == 0]).mean()) / 2)


def held_out_balanced_accuracy(labels, scores, groups: Sequence[str], rule: str, *,
                               target_fpr: float = 0.05) -> float:
    """Two-fold cross-fit: fit the threshold on one half of the groups (videos), measure the balanced
    accuracy on the other half, both ways, mean. How a rule is compared without touching the test split."""
    y, s = validate_binary(labels, scores)
    fold = np.array([int(hashlib.sha1(str(g).encode()).hexdigest(), 16) % 2 for g in groups])
    results = []
    for k in (0, 1):
        fit, held = fold == k, fold != k
        if len(set(y[fit])) < 2 or len(set(y[held])) < 2:
            return math.nan
        t = choose_threshold(y[fit], s[fit], rule, target_fpr=target_fpr).threshold
        results.append(balanced_accuracy(y[held], s[held], t))
    return float(np.mean(results))


def predictions_sha256(paths: Sequence[str], labels: Sequence[int]) -> str:
    """Hash of what a threshold was chosen on: the scored images (relative paths) and their labels."""
    h = hashlib.sha256()
    for path, label in sorted(zip(paths, (int(v) for v in labels), strict=True)):
        h.update(f"{path}\t{label}\n".encode())
    return h.hexdigest()


def write_calibration(model: str | os.PathLike, calibration: Calibration, provenance: dict) -> dict:
    """Store the threshold and its provenance in the model file's metadata, atomically; tensors untouched.
    Returns the stored calibration record."""
    from fakemerge.io.safetensors import LazyState, rewrite_metadata, tensors_sha256
    from fakemerge.models.detector import read_meta

    meta = read_meta(model)
    state = LazyState(model)
    record = {**asdict(calibration), **provenance, "weights_sha256": tensors_sha256(state)}
    meta.threshold = calibration.threshold
    meta.calibration = record
    rewrite_metadata(model, meta.to_header())
    return record


def calibrate(models: Sequence[str | os.PathLike], data, *, split: str = "val",
              rule: str = DEFAULT_RULE, target_fpr: float = 0.05, families: list[str] | None = None,
              root: str | os.PathLike | None = None, batch_size: int = 128,
              progress: Progress = silent) -> list[dict]:
    """Score every model on `split` of `data` (a dataset path or a `DataOptions`; one shared pass), choose
    each threshold by `rule`, write it into each file. Returns the stored calibration records, in order
    (with the dataset's warnings under `data_warnings`)."""
    from fakemerge.config import EvalOptions
    from fakemerge.data.options import DataOptions
    from fakemerge.data.options import read as read_data
    from fakemerge.data.records import select
    from fakemerge.evaluation.runner import predict, read_predictions
    from fakemerge.models.loading import load_detector

    if rule not in RULES:
        raise InputError(f"--rule {rule}: choose one of {', '.join(RULES)}")
    options = data if isinstance(data, DataOptions) else DataOptions(data=[str(data)], root=root)
    datasets, notes = read_data(options, [split])
    if len(datasets) != 1:
        raise InputError(f"{', '.join(options.data)}: calibrate on one dataset (its validation split)")
    ds = datasets[0]
    chosen = select(ds.records, split, families)
    if not chosen:
        raise InputError(f"{ds.source}: no images in split {split!r}"
                         + (f" for families {families}" if families else ""))
    detectors = [load_detector(m)[0] for m in models]
    with tempfile.TemporaryDirectory(prefix="fakemerge-calibrate-") as tmp:
        csvs = [Path(tmp) / f"{i}.csv" for i in range(len(models))]
        predict(detectors, ds.root, chosen, csvs, options=EvalOptions(batch_size=batch_size), progress=progress)
        preds = [read_predictions(c) for c in csvs]
    out = []
    for model, pred in zip(models, preds, strict=True):
        fams = sorted({str(f) for f, y in zip(pred["family"], pred["label"], strict=True) if y == 1})
        provenance = {"split": split, "data": ds.source, "families": fams, "data_warnings": [*ds.warnings, *notes],
                      "data_sha256": predictions_sha256(pred["path"].tolist(), pred["label"].tolist())}
        try:
            calibration = choose_threshold(pred["label"], pred["score"], rule, target_fpr=target_fpr)
        except InputError as e:
            raise InputError(f"{model}: {e}") from None
        out.append(write_calibration(model, calibration, provenance))
    return out
