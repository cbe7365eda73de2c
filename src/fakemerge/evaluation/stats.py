"""Results over seeds: mean ± std per cell, paired differences with a t-interval, and the wording a claim
gets from its interval (never from one run).

A paired difference d_s = a_s − b_s is taken per seed (the same specialists, data and test images inside
a seed), so seed-to-seed variation common to both sides cancels. With n ≥ 2 seeds the 95 % interval of the
mean difference is mean ± t(0.975, n − 1) · std / √n (scipy, a dependency of scikit-learn). A claim "a is
above b" is made only when the whole interval is above 0; with one seed no interval exists and the text
says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    values: tuple[float, ...]
    mean: float
    std: float  # sample standard deviation; NaN for one value
    lo: float  # 95 % t-interval of the mean; NaN for one value
    hi: float

    @property
    def n(self) -> int:
        return len(self.values)


def summarize(values: Sequence[float]) -> Summary:
    """Mean, sample std and 95 % t-interval of finite `values` (NaN everywhere when there are none)."""
    vals = tuple(float(v) for v in values if v is not None and math.isfinite(v))
    if not vals:
        return Summary((), math.nan, math.nan, math.nan, math.nan)
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return Summary(vals, mean, math.nan, math.nan, math.nan)
    from scipy.stats import t

    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    half = float(t.ppf(0.975, len(vals) - 1)) * std / math.sqrt(len(vals))
    return Summary(vals, mean, std, mean - half, mean + half)


def paired(a: Sequence[float], b: Sequence[float]) -> Summary:
    """Summary of the per-seed differences a_s − b_s (seeds where either side is missing are left out)."""
    if len(a) != len(b):
        raise ValueError(f"paired values differ in length: {len(a)} vs {len(b)}")
    return summarize([x - y for x, y in zip(a, b, strict=True)
                      if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)])


def direction(diff: Summary) -> str:
    """'above' / 'below' when the interval excludes 0, 'unresolved' when it contains 0, 'one seed'."""
    if diff.n == 0:
        return "missing"
    if diff.n < 2:
        return "one seed"
    if diff.lo > 0:
        return "above"
    if diff.hi < 0:
        return "below"
    return "unresolved"


def mean_std(s: Summary, digits: int = 3) -> str:
    """`0.812 ± 0.004` (or `0.812` for one seed, `n/a` for none)."""
    if s.n == 0:
        return "n/a"
    return f"{s.mean:.{digits}f}" if s.n < 2 else f"{s.mean:.{digits}f} ± {s.std:.{digits}f}"


def interval(s: Summary, digits: int = 3) -> str:
    """`+0.012 [+0.004, +0.020] (n = 3; per seed +0.010, +0.015, +0.011)`: mean difference, interval, seeds."""
    if s.n == 0:
        return "n/a"
    seeds = ", ".join(f"{v:+.{digits}f}" for v in s.values)
    if s.n < 2:
        return f"{s.mean:+.{digits}f} (one seed, no interval)"
    return f"{s.mean:+.{digits}f} [{s.lo:+.{digits}f}, {s.hi:+.{digits}f}] (n = {s.n}; per seed {seeds})"


def compare(a: str, b: str, diff: Summary, metric: str = "mean seen AUC") -> str:
    """One sentence for "a vs b", worded by the interval of the paired difference."""
    word = direction(diff)
    if word == "missing":
        return f"{a} vs {b}: not measured."
    if word == "one seed":
        side = "above" if diff.mean > 0 else "below" if diff.mean < 0 else "level with"
        return (f"{a} is {side} {b} in {metric} by {abs(diff.mean):.3f} at the one seed run; one seed gives "
                "no interval, so this is not a resolved difference.")
    if word == "unresolved":
        return (f"{a} and {b} are not resolved apart in {metric}: the 95 % interval of {a} − {b} contains 0, "
                f"{interval(diff)}.")
    return f"{a} is {word} {b} in {metric}: {a} − {b} = {interval(diff)}."
