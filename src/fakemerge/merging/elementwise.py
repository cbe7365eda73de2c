"""Element-wise merges as one family (mergekit's generalized task arithmetic): sparsify → elect signs →
combine → scale, all in `combine`.

`average`, `task_arithmetic`, `ties` and `dare` are settings of it: average = mean, no scale; task
arithmetic = scaling · Σ τi (a sum: scaling = 1/N is the average); TIES = keep each task's top `density`
entries over the whole model, elect a sign per entry, combine the agreeing entries; DARE = drop entries at
random (kept ones rescaled by 1/(1 − p)), then the sum. Semantics follow FusionBench 0.2.33. Memory: base + N
tensors of one key (TIES' prepare pass: one model's magnitudes, one task at a time).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fakemerge.merging.lowrank import content_seed
from fakemerge.merging.registry import Plan, choice, flag, integer, merge_method, number
from fakemerge.merging.streams import TaskStream

SCALING = number(0.3)  # FusionBench's default scaling factor for task arithmetic, TIES and DARE


def combine(taus: torch.Tensor, *, keep: torch.Tensor | None = None, rescale: float | None = None,
            majority: float | None = None, reduce: str = "sum", scaling: float = 1.0) -> torch.Tensor:
    """The generalized task arithmetic of N stacked task vectors (N × shape).

    keep: entries to keep (the rest become 0); rescale: divide the kept entries by it; majority: elect a
    sign per entry (sign of the sum, `majority` where the sum is 0) and keep only entries of that sign;
    reduce: sum | mean (over all N) | disjoint_mean (over the entries kept) | max (largest magnitude × sign).
    """
    if keep is not None:
        taus = torch.where(keep, taus, 0.0)
    if rescale is not None:
        taus = taus / rescale
    sign = None
    if majority is not None:
        sign = torch.sign(taus.sum(0))
        sign[sign == 0] = majority
        taus = taus * torch.where(sign > 0, taus > 0, taus < 0)
    if reduce == "sum":
        merged = taus.sum(0)
    elif reduce == "mean":
        merged = taus.mean(0)
    elif reduce == "disjoint_mean":
        merged = taus.sum(0) / (taus != 0).sum(0).clamp_min(1)
    elif reduce == "max" and sign is not None:
        merged = taus.abs().max(0).values * sign
    else:
        raise ValueError(f"reduce={reduce!r}")
    return scaling * merged


@merge_method("average")
def average(taus: torch.Tensor) -> torch.Tensor:
    """Mean of the specialists (the base is not part of the mean)."""
    return combine(taus, reduce="mean")


@merge_method("task_arithmetic", scaling=SCALING)
def task_arithmetic(taus: torch.Tensor, scaling: float) -> torch.Tensor:
    """θ0 + scaling · Σ τi (a sum: scaling = 1/N is the average)."""
    return combine(taus, scaling=scaling)


@dataclass(frozen=True)
class TiesPlan(Plan):
    thresholds: list[float]  # per task: the smallest |τ| kept
    majority: float  # the sign elected where an entry's trimmed sum is exactly 0

    def keep(self, taus: torch.Tensor) -> torch.Tensor:
        th = torch.tensor(self.thresholds, dtype=taus.dtype).reshape(-1, *[1] * (taus.ndim - 1))
        return taus.abs() >= th

    def diagnostics(self, per_task) -> dict:
        return {"ties_thresholds": per_task(self.thresholds), "ties_majority_sign": self.majority}


def ties_thresholds(s: TaskStream, density: float) -> list[float]:
    """Per task, the magnitude that keeps the top `density` of its entries over the whole model.

    FusionBench keeps |τ| ≥ the (D − int(D·density))-th smallest |τ| (1-based), ties included. One task at
    a time, so this pass holds one model's worth of magnitudes. Integer tensors are not part of the model.
    """
    keys = s.float_keys()
    out = []
    for i in range(s.n):
        mags = torch.cat([s.task(i, key).abs().reshape(-1) for key in s.each(f"ties: task {i} magnitudes", keys)])
        k = mags.numel() - int(mags.numel() * density)
        out.append(kth_smallest(mags, k) if k >= 1 else 0.0)
        del mags
    return out


def kth_smallest(mags: torch.Tensor, k: int) -> float:
    """The k-th smallest (1-based) of non-negative floats, exactly, as `kthvalue` but in about two linear
    passes: the bit patterns of non-negative IEEE floats sort like their values, so a histogram of their top
    16 bits finds the bucket that holds the k-th value, and only that bucket is selected from."""
    if mags.dtype not in (torch.float32, torch.float64):
        return mags.kthvalue(k).values.item()
    as_int, shift = (torch.int64, 48) if mags.dtype == torch.float64 else (torch.int32, 16)
    buckets = mags.contiguous().view(as_int) >> shift
    counts = torch.bincount(buckets.int(), minlength=1 << 15).cumsum(0)
    b = int(torch.searchsorted(counts, torch.tensor(k, dtype=counts.dtype)))
    below = int(counts[b - 1]) if b > 0 else 0
    return mags[buckets == b].kthvalue(k - below).values.item()


def prepare_ties(stream: TaskStream, density: float) -> TiesPlan:
    """The per-task trim thresholds, then the global majority sign (used where an entry's trimmed sum is 0)."""
    trim = TiesPlan(ties_thresholds(stream, density), 0.0)
    elected_total = 0
    for key in stream.each("ties: signs", stream.float_keys()):
        taus = stream.stacked(key)
        elected_total += int(torch.sign(torch.where(trim.keep(taus), taus, 0.0).sum(0)).sum().item())
    return TiesPlan(trim.thresholds, float((elected_total > 0) - (elected_total < 0)))


@merge_method("ties", prepare=prepare_ties, density=number(0.2, 0, 1, lo_open=True), scaling=SCALING,
              merge_func=choice("sum", "sum", "mean", "max"))
def ties(taus: torch.Tensor, plan: TiesPlan, scaling: float, merge_func: str) -> torch.Tensor:
    """TIES-merging: trim each task to its top `density` entries (over the whole model), elect signs, merge
    the agreeing entries disjointly (sum, mean over the agreeing tasks, or max magnitude), × scaling."""
    reduce = {"sum": "sum", "mean": "disjoint_mean", "max": "max"}[merge_func]
    return combine(taus, keep=plan.keep(taus), majority=plan.majority, reduce=reduce, scaling=scaling)


@merge_method("dare", drop_rate=number(0.5, 0, 1, hi_open=True), seed=integer(0, 0), rescale=flag(True),
              scaling=SCALING)
def dare(key: str, taus: torch.Tensor, fingerprints: list[str], drop_rate: float, seed: int, rescale: bool,
         scaling: float) -> torch.Tensor:
    """DARE: drop each task-vector entry with probability `drop_rate` (kept ones × 1/(1 − p) if `rescale`),
    then task arithmetic. The mask of each specialist is seeded by (seed, its content, key): the same in any
    order of the specialists."""
    keep = torch.stack([torch.rand(tau.shape, generator=torch.Generator().manual_seed(content_seed(seed, fp, key)),
                                   dtype=tau.dtype) > drop_rate for fp, tau in zip(fingerprints, taus, strict=True)])
    return combine(taus, keep=keep, rescale=1 - drop_rate if rescale else None, scaling=scaling)
