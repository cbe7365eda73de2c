"""Metrics against scikit-learn references, hand-computed cases and property tests."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from fakemerge.evaluation import metrics


def _random(seed, n=200):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = rng.random(n) + 0.3 * y
    return y, s


def _sklearn_eer(y, s):
    """Reference EER: the ROC point where |FNR - FPR| is smallest (DeepfakeBench-style, no interpolation)."""
    fpr, tpr, _ = roc_curve(y, s)
    fnr = 1 - tpr
    i = np.nanargmin(np.abs(fnr - fpr))
    return fpr[i], fnr[i]


@pytest.mark.parametrize("seed", range(5))
def test_auc_ap_match_sklearn(seed):
    y, s = _random(seed)
    assert metrics.auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert metrics.average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_eer_matches_sklearn_roc_crossing(seed):
    y, s = _random(seed)
    fpr, fnr = _sklearn_eer(y, s)
    step = 1 / min(np.sum(y == 0), np.sum(y == 1))  # the ROC moves at most this much per threshold
    assert metrics.eer(y, s) == pytest.approx((fpr + fnr) / 2, abs=abs(fpr - fnr) / 2 + step)


def test_eer_interpolates_between_roc_points():
    # ROC points (fpr, fnr): (0, 1), (1/3, 1), (1/3, 0), (1, 0): FNR falls to 0 while FPR stays 1/3
    assert metrics.eer([0, 0, 0, 1], [0.1, 0.2, 0.6, 0.5]) == pytest.approx(1 / 3)


def test_hand_computed_cases():
    # perfect separation
    assert metrics.auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert metrics.eer([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 0.0
    # fully inverted
    assert metrics.auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert metrics.eer([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 1.0
    # one of four pairs misordered: AUC 3/4
    assert metrics.auc([0, 0, 1, 1], [0.1, 0.6, 0.5, 0.9]) == 0.75
    # AP: ranking fake, real, fake -> precision 1 at rank 1, 2/3 at rank 3 -> (1 + 2/3) / 2
    assert metrics.average_precision([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(5 / 6)
    # one real above one fake out of 2x2: FPR=FNR=0.5 at the crossing
    assert metrics.eer([0, 0, 1, 1], [0.1, 0.6, 0.5, 0.9]) == pytest.approx(0.5)
    # accuracy at 0.5 (>= counts as fake)
    assert metrics.accuracy([0, 0, 1, 1], [0.2, 0.5, 0.5, 0.4]) == 0.5
    assert metrics.accuracy([0, 1], [0.6, 0.7], threshold=0.65) == 1.0


def test_binary_metrics_keys_and_class_accuracies():
    m = metrics.binary_metrics([0, 0, 0, 1, 1], [0.1, 0.7, 0.2, 0.9, 0.3])
    assert set(m) == {"auc", "ap", "eer", "acc", "acc_real", "acc_fake", "n_real", "n_fake"}
    assert m["acc_real"] == pytest.approx(2 / 3) and m["acc_fake"] == 0.5
    assert m["acc"] == pytest.approx(3 / 5)
    assert (m["n_real"], m["n_fake"]) == (3, 2)


def test_single_class_gives_nan_not_crash():
    m = metrics.binary_metrics([1, 1, 1], [0.2, 0.9, 0.6])
    assert math.isnan(m["auc"]) and math.isnan(m["ap"]) and math.isnan(m["eer"])
    assert math.isnan(m["acc_real"]) and m["acc_fake"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("labels,scores,msg", [
    ([0, 1], [0.5], "length"),
    ([0, 2], [0.5, 0.5], "labels must be 0"),
    ([0, 1], [0.5, float("nan")], "finite"),
    ([[0, 1]], [[0.5, 0.5]], "1-D"),
    ([], [], "empty"),
])
def test_invalid_inputs_raise_clear_errors(labels, scores, msg):
    with pytest.raises(ValueError, match=msg):
        metrics.auc(labels, scores)


def test_video_scores_mean_max_topk_by_full_id():
    # two videos share the basename "000" but come from different methods: they must not be merged
    ids = ["FS/000", "FS/000", "FS/000", "FR/000", "real/001", "real/001"]
    y = [1, 1, 1, 1, 0, 0]
    s = [0.2, 0.4, 0.9, 0.7, 0.1, 0.3]
    vid, vy, vs = metrics.video_scores(ids, y, s, how="mean")
    assert vid == ["FS/000", "FR/000", "real/001"]
    assert vy.tolist() == [1, 1, 0]
    assert vs == pytest.approx([0.5, 0.7, 0.2])
    assert metrics.video_scores(ids, y, s, how="max")[2] == pytest.approx([0.9, 0.7, 0.3])
    assert metrics.video_scores(ids, y, s, how="topk", k=2)[2] == pytest.approx([0.65, 0.7, 0.2])


def test_video_with_mixed_labels_is_an_error():
    with pytest.raises(ValueError, match="both real and fake"):
        metrics.video_scores(["a", "a"], [0, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="unknown aggregation"):
        metrics.video_scores(["a"], [0], [0.1], how="median")


# scores on a grid, so ties are common and float rounding (1 - s, s ** 3) cannot reorder them
scores_st = st.lists(st.integers(0, 20).map(lambda i: i / 20), min_size=2, max_size=60)


@settings(max_examples=60, deadline=None)
@given(scores_st, st.data())
def test_properties(scores, data):
    y = np.asarray(data.draw(st.lists(st.integers(0, 1), min_size=len(scores), max_size=len(scores))))
    s = np.asarray(scores)
    a = metrics.auc(y, s)
    if 0 < y.sum() < len(y):
        assert a == pytest.approx(roc_auc_score(y, s))
        # flipping scores mirrors the AUC; a monotone transform leaves it unchanged
        assert metrics.auc(y, 1 - s) == pytest.approx(1 - a)
        assert metrics.auc(y, s ** 3) == pytest.approx(a)
        e = metrics.eer(y, s)
        assert 0 <= e <= 1
        assert metrics.average_precision(y, s) == pytest.approx(average_precision_score(y, s))
    else:
        assert math.isnan(a)
    assert 0 <= metrics.accuracy(y, s) <= 1
    ids = [str(i % 3) for i in range(len(s))]
    vy_ok = all(len({int(y[j]) for j in range(len(s)) if ids[j] == v}) == 1 for v in set(ids))
    if vy_ok:
        _, _, mean = metrics.video_scores(ids, y, s, how="mean")
        _, _, mx = metrics.video_scores(ids, y, s, how="max")
        _, _, top = metrics.video_scores(ids, y, s, how="topk", k=2)
        assert np.all(mean <= top + 1e-12) and np.all(top <= mx + 1e-12)
