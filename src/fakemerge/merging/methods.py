"""Element-wise merge methods: average, task arithmetic, TIES, DARE.

Each method is a generator `method(stream, diagnostics, **params)` that yields `(key, merged tensor)` in the
base's key order. Semantics follow FusionBench 0.2.33 (see specs/merging-baselines.md). Tensors that are not
floating point (integer buffers) are passed through from the base unchanged by every method.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch

from fakemerge.keys import bare
from fakemerge.merging.streams import TaskStream

Merged = Iterator[tuple[str, torch.Tensor]]


def average(s: TaskStream, diagnostics: dict | None) -> Merged:
    """Mean of the specialists (the base is not part of the mean). Memory: base + N tensors of one key."""
    for key in s.keys:
        if not s.is_float(key):
            yield key, s.theta0(key)
            continue
        yield key, s.finish(key, s.stacked(key, record=True).mean(0))
    s.report(diagnostics)


def task_arithmetic(s: TaskStream, diagnostics: dict | None, scaling: float) -> Merged:
    """θ0 + scaling · Σ τi (a sum: scaling = 1/N is the average). Memory: base + N tensors of one key."""
    for key in s.keys:
        if not s.is_float(key):
            yield key, s.theta0(key)
            continue
        yield key, s.finish(key, scaling * s.stacked(key, record=True).sum(0))
    s.report(diagnostics)


def _ties_thresholds(s: TaskStream, density: float) -> list[float]:
    """Per task, the magnitude that keeps the top `density` of its entries over the whole model.

    FusionBench keeps |τ| ≥ the (D − int(D·density))-th smallest |τ| (1-based), ties included. One task at
    a time, so this pass holds one model's worth of magnitudes.
    """
    keys = s.float_keys()
    out = []
    for i in range(s.n):
        mags = torch.cat([s.task(i, key).abs().reshape(-1) for key in keys])
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


def _trim(taus: torch.Tensor, thresholds: list[float]) -> torch.Tensor:
    """Entries of each task below its threshold set to 0 (taus stacked N × shape)."""
    th = torch.tensor(thresholds, dtype=taus.dtype).reshape(-1, *[1] * (taus.ndim - 1))
    return torch.where(taus.abs() >= th, taus, 0.0)


def ties(s: TaskStream, diagnostics: dict | None, density: float, scaling: float, merge_func: str) -> Merged:
    """TIES-merging: trim each task to its top `density` entries (globally), elect signs, disjoint merge.

    Three passes: the per-task trim thresholds (holds one model's magnitudes, one task at a time), the
    global majority sign (used where an entry's trimmed sum is exactly 0), the merge (N tensors of one key).
    Integer tensors are not part of the flattened model.
    """
    thresholds = _ties_thresholds(s, density)
    elected_total = 0
    for key in s.float_keys():
        elected_total += int(torch.sign(_trim(s.stacked(key), thresholds).sum(0)).sum().item())
    majority = float((elected_total > 0) - (elected_total < 0))
    for key in s.keys:
        if not s.is_float(key):
            yield key, s.theta0(key)
            continue
        trimmed = _trim(s.stacked(key, record=True), thresholds)
        sign = torch.sign(trimmed.sum(0))
        sign[sign == 0] = majority
        chosen = torch.where(sign > 0, trimmed > 0, trimmed < 0)
        selected = trimmed * chosen
        if merge_func == "sum":
            merged = selected.sum(0)
        elif merge_func == "mean":
            merged = selected.sum(0) / (selected != 0).sum(0).clamp_min(1)
        else:  # max
            merged = selected.abs().max(0).values * sign
        yield key, s.finish(key, scaling * merged)
    s.report(diagnostics)
    if diagnostics is not None:
        diagnostics["ties_thresholds"] = thresholds
        diagnostics["ties_majority_sign"] = majority


def dare_seed(seed: int, task: int, key: str) -> int:
    """A seed per (seed, task index, tensor name): masks do not depend on the order keys are streamed in."""
    digest = hashlib.sha256(f"{seed}/{task}/{bare(key)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def dare(s: TaskStream, diagnostics: dict | None, drop_rate: float, seed: int, rescale: bool,
         scaling: float) -> Merged:
    """DARE: drop each task-vector entry with probability `drop_rate` (kept ones × 1/(1 − p) if `rescale`),
    then task arithmetic. The mask of task i is seeded by (seed, i, key): reordering the specialists
    changes which mask each one gets. Memory: base + N tensors of one key.
    """
    for key in s.keys:
        if not s.is_float(key):
            yield key, s.theta0(key)
            continue
        taus = s.tasks(key, record=True)
        dropped = []
        for i, tau in enumerate(taus):
            g = torch.Generator().manual_seed(dare_seed(seed, i, key))
            keep = torch.rand(tau.shape, generator=g, dtype=tau.dtype) > drop_rate
            kept = tau * keep
            dropped.append(kept / (1 - drop_rate) if rescale else kept)
        yield key, s.finish(key, scaling * torch.stack(dropped).sum(0))
    s.report(diagnostics)
