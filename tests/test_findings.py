"""Findings computed from the numbers (evaluation/stats.py, study/claims.py): hand-computed intervals, and
claims whose verdict and wording follow the data — the same code says "holds" on one set of runs and "does
not hold" when the numbers are reversed."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fakemerge.evaluation.stats import compare, direction, interval, paired, summarize
from fakemerge.io.safetensors import save_tensors
from fakemerge.study import claims
from fakemerge.study.entries import ModelEntry
from fakemerge.study.seeds import Run

SEEN = ["FS", "FR", "EFS", "FE"]


def test_summary_and_t_interval_hand_computed():
    s = summarize([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) · std / √n with std = 1
    assert (s.mean, s.std) == (2.0, 1.0) and (s.lo, s.hi) == pytest.approx((2 - half, 2 + half))
    one = summarize([0.5])
    assert one.n == 1 and math.isnan(one.std) and math.isnan(one.lo)
    assert summarize([float("nan"), None, 1.0]).values == (1.0,)
    d = paired([0.9, 0.8, 0.85], [0.7, 0.65, 0.67])
    assert d.values == pytest.approx((0.2, 0.15, 0.18)) and direction(d) == "above"
    assert direction(paired([0.7, 0.65, 0.67], [0.9, 0.8, 0.85])) == "below"
    assert direction(paired([0.8, 0.7, 0.9], [0.75, 0.8, 0.8])) == "unresolved"
    assert direction(summarize([0.1])) == "one seed" and direction(summarize([])) == "missing"
    assert interval(d).startswith("+0.177 [") and "per seed +0.200, +0.150, +0.180" in interval(d)


def test_comparison_sentences_are_worded_by_the_interval():
    above = compare("a", "b", paired([0.9, 0.8, 0.85], [0.7, 0.65, 0.67]))
    below = compare("a", "b", paired([0.7, 0.65, 0.67], [0.9, 0.8, 0.85]))
    unresolved = compare("a", "b", paired([0.8, 0.7, 0.9], [0.75, 0.8, 0.8]))
    one = compare("a", "b", summarize([0.02]))
    assert above.startswith("a is above b") and below.startswith("a is below b")
    assert "not resolved apart" in unresolved and "contains 0" in unresolved
    assert "one seed gives no interval" in one and "above b" in one


def _write_predictions(folder: Path, name: str, labels, families, scores) -> None:
    path = folder / "eval" / "test" / name / "predictions.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("path", "video", "family", "label", "score"))
        for i, (y, fam, s) in enumerate(zip(labels, families, scores, strict=True)):
            w.writerow((f"img{i}.png", f"v{i}", fam, y, f"{s:.6g}"))


def _run(folder: Path, seed: int, auc: dict[str, dict[str, float]], *, real_shift: float = 0.0,
         fake_shift: float = -1.5, remerge_equal: bool = True) -> Run:
    """A synthetic run: full specialists, merges, joint; rows from `auc`; test predictions whose logits
    move by `real_shift` (reals) and `fake_shift` (each specialist's own fakes) from specialist to average."""
    rng = np.random.default_rng(seed)
    entries, rows = {}, []
    labels = [0] * 40 + [1] * 160
    fams = ["real"] * 40 + [f for f in SEEN for _ in range(40)]
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    base_real, base_fake = -2.0 + rng.normal(0, 0.3, 40), 2.0 + rng.normal(0, 0.3, 160)
    for f in SEEN:
        entries[f] = ModelEntry(f, folder / f"{f}.safetensors", "specialist", "full", (f,))
        own = np.array([fam == f for fam in fams[40:]])
        _write_predictions(folder, f, labels, fams, sig(np.r_[base_real, np.where(own, base_fake, -1.0)]))
    avg_fake = base_fake + fake_shift + rng.normal(0, 0.05, 160)
    _write_predictions(folder, "average", labels, fams, sig(np.r_[base_real + real_shift, avg_fake]))
    for m in ("average", "task_arithmetic", "ties", "r2m"):
        entries[m] = ModelEntry(m, folder / f"merged-{m}.safetensors", "merged", m, tuple(SEEN))
    entries["joint"] = ModelEntry("joint", folder / "joint.safetensors", "joint", "full", tuple(SEEN))
    for n, fam_auc in auc.items():
        if n not in entries:
            entries[n] = ModelEntry(n, folder / f"{n}.safetensors", "merged", "r2m", tuple(SEEN), "full",
                                    "composable")
        rows += [{"model": n, "family": f, "seen": True, "auc": v} for f, v in fam_auc.items()]
    weights = {"vision_model.w": torch.ones(2)}
    save_tensors(weights, entries["r2m"].path)
    save_tensors(weights if remerge_equal else {"vision_model.w": torch.zeros(2)},
                 entries["r2m(FS,FR,EFS)+FE"].path)
    return Run(folder, seed, rows, entries, {}, {}, {"seed": seed}, [])


def _aucs(r2m: float, seed: int) -> dict[str, dict[str, float]]:
    jitter = 0.004 * seed
    flat = lambda v: dict.fromkeys(SEEN, v + jitter)  # noqa: E731
    return {"r2m": flat(r2m), "task_arithmetic": flat(0.80), "ties": flat(0.78), "average": flat(0.76),
            "joint": flat(0.79), "r2m(FS,FR,EFS)": {**flat(0.80), "FE": 0.60 + jitter},
            "r2m(FS,FR,EFS)+FE": flat(r2m)}


@pytest.mark.parametrize("r2m, expected", [(0.85, "**holds**"), (0.70, "**does not hold**")])
def test_claim_r2m_verdict_follows_the_numbers(tmp_path, r2m, expected):
    runs = [_run(tmp_path / f"s{s}", s, _aucs(r2m + 0.003 * (s % 2), s)) for s in range(3)]
    text = "\n".join(claims.claim_r2m(runs, "full"))
    assert expected in text
    assert "vs the strongest baseline (task_arithmetic)" in text  # the hardest opponent, whatever it is
    if expected == "**holds**":
        assert "r2m is above task_arithmetic" in text and "ranks 1 of 4" in text
    else:
        assert "r2m is below task_arithmetic" in text and "ranks 4 of 4" in text


def test_claim_r2m_with_one_seed_is_never_resolved(tmp_path):
    text = "\n".join(claims.claim_r2m([_run(tmp_path, 0, _aucs(0.9, 0))], "full"))
    assert "not resolved** (one seed" in text and "3 of 3 differences point the claimed way" in text


def test_claim_averaging_holds_only_when_fakes_move_and_reals_do_not(tmp_path):
    kept = [_run(tmp_path / f"k{s}", s, _aucs(0.8, s), real_shift=0.02 * s, fake_shift=-1.5) for s in range(3)]
    text = claims.claim_averaging(kept, "full")[0]
    assert "**holds**" in text and "Δfake = -" in text
    both = [_run(tmp_path / f"b{s}", s, _aucs(0.8, s), real_shift=1.6 + 0.1 * s, fake_shift=-1.4) for s in range(3)]
    assert "**does not hold**" in claims.claim_averaging(both, "full")[0]  # reals move more than fakes
    shifts = claims.score_shifts(kept[0], "full")
    assert shifts["real"] == pytest.approx(0.0, abs=1e-6) and shifts["fake"] == pytest.approx(-1.5, abs=0.05)


def test_claim_composable_needs_an_exact_remerge_and_a_gain_on_the_new_family(tmp_path):
    exact = [_run(tmp_path / f"e{s}", s, _aucs(0.8, s)) for s in range(3)]
    text = claims.claim_composable(exact, "full")[0]
    assert "**holds**" in text and "bit-identical weights" in text and "+0.200 [" in text
    inexact = [_run(tmp_path / f"i{s}", s, _aucs(0.8, s), remerge_equal=False) for s in range(3)]
    assert "**does not hold** (the re-merge is not exact)" in claims.claim_composable(inexact, "full")[0]
