"""Binary detection metrics as pure functions of (labels, scores), computed with scikit-learn.

Convention (as DeepfakeBench): label 1 = fake, score = P(fake). Inputs are validated like sklearn /
torchmetrics (1-D, same length, labels in {0, 1}, finite scores); a split with a single class gives NaN
AUC / AP / EER instead of crashing, because an honest report must be able to say "undefined".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

AGGREGATIONS = ("mean", "max", "topk")


def validate_binary(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if len(y) != len(s):
        raise ValueError(f"labels and scores differ in length: {len(y)} vs {len(s)}")
    if len(y) == 0:
        raise ValueError("labels and scores are empty")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 (real) or 1 (fake), got {sorted(set(np.unique(y).tolist()))[:5]}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (found NaN or inf)")
    return y.astype(np.int64), s


def _two_classes(y: np.ndarray) -> bool:
    return 0 < y.sum() < len(y)


def auc(labels, scores) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y, s = validate_binary(labels, scores)
    return float(roc_auc_score(y, s)) if _two_classes(y) else math.nan


def average_precision(labels, scores) -> float:
    """Average precision with fake as the positive class; NaN when only one class is present."""
    y, s = validate_binary(labels, scores)
    return float(average_precision_score(y, s)) if _two_classes(y) else math.nan


def eer(labels, scores) -> float:
    """Equal error rate: where the false-positive and false-negative rates cross on the ROC curve.

    The crossing is linearly interpolated between the two ROC points that bracket it, so the value does
    not depend on which of two neighbouring thresholds happens to be closer.
    """
    y, s = validate_binary(labels, scores)
    if not _two_classes(y):
        return math.nan
    fpr, tpr, _ = roc_curve(y, s)
    diff = (1.0 - tpr) - fpr  # non-increasing: +1 at the strictest threshold, -1 at the loosest
    i = int(np.argmax(diff <= 0))
    if diff[i] == 0 or i == 0:
        return float(fpr[i])
    t = diff[i - 1] / (diff[i - 1] - diff[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def accuracy(labels, scores, threshold: float = 0.5) -> float:
    """Fraction correct when predicting fake for score >= threshold."""
    y, s = validate_binary(labels, scores)
    return float(((s >= threshold).astype(np.int64) == y).mean())


def binary_metrics(labels, scores, threshold: float = 0.5) -> dict:
    """All frame metrics of one evaluation: auc, ap, eer, acc, acc_real, acc_fake, n_real, n_fake."""
    y, s = validate_binary(labels, scores)
    real, fake = y == 0, y == 1
    return {
        "auc": auc(y, s),
        "ap": average_precision(y, s),
        "eer": eer(y, s),
        "acc": accuracy(y, s, threshold),
        "acc_real": accuracy(y[real], s[real], threshold) if real.any() else math.nan,
        "acc_fake": accuracy(y[fake], s[fake], threshold) if fake.any() else math.nan,
        "n_real": int(real.sum()),
        "n_fake": int(fake.sum()),
    }


def video_scores(video_ids: Sequence[str], labels, scores, how: str = "mean",
                 k: int = 3) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Aggregate frame scores per video: mean, max, or the mean of the top-k frames ("topk").

    Videos are identified by their full id string (never a basename). Returns (ids in first-seen order,
    labels, scores). A video whose frames disagree on the label is an input error.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; choose one of {', '.join(AGGREGATIONS)}")
    if how == "topk" and k < 1:
        raise ValueError(f"top-k aggregation needs k >= 1, got {k}")
    y, s = validate_binary(labels, scores)
    ids = list(video_ids)
    if len(ids) != len(y):
        raise ValueError(f"video_ids and labels differ in length: {len(ids)} vs {len(y)}")
    order: dict[str, int] = {}
    index = np.fromiter((order.setdefault(v, len(order)) for v in ids), np.int64, len(ids))
    sort = np.argsort(index, kind="stable")
    bounds = np.flatnonzero(np.diff(index[sort])) + 1
    vy = np.empty(len(order), np.int64)
    vs = np.empty(len(order), np.float64)
    for j, rows in enumerate(np.split(sort, bounds)):
        if y[rows].min() != y[rows].max():
            raise ValueError(f"video {ids[rows[0]]!r} has frames labelled both real and fake")
        vy[j] = y[rows[0]]
        vs[j] = aggregate(s[rows], how, k)
    return list(order), vy, vs


def aggregate(frame_scores, how: str = "mean", k: int = 3) -> float:
    """One score from a video's frame scores (mean, max, or mean of the top-k)."""
    s = np.asarray(frame_scores, dtype=np.float64)
    if how == "mean":
        return float(s.mean())
    if how == "max":
        return float(s.max())
    if how == "topk":
        return float(np.sort(s)[-min(k, len(s)):].mean())
    raise ValueError(f"unknown aggregation {how!r}; choose one of {', '.join(AGGREGATIONS)}")
