"""Element-wise merges as one family (mergekit's generalized task arithmetic): sparsify → weigh → elect signs
→ combine → scale, all in `combine`.

`average`, `task_arithmetic`, `ties` and `dare` are settings of it: average = mean, no scale; task
arithmetic = scaling · Σ τi (a sum: scaling = 1/N is the average); TIES = keep each task's top `density`
entries over the whole model, elect a sign per entry, combine the agreeing entries; DARE = drop entries at
random (kept ones rescaled by 1/(1 − p)), then the sum. Semantics follow FusionBench 0.2.33. Memory: base + N
tensors of one key (TIES' threshold passes add 2^16 counts per task; its trim, vote and merge run `blockwise`,
so their masks and working copies are of one block of entries, not of N whole tensors).

Per-model weights wi (a recipe's `models: [{model, parameters: {weight}}]`) multiply each sparsified task
vector: average = Σ wi τi / Σ wi, task arithmetic and DARE = scaling · Σ wi τi', TIES elects signs on the
weighted values and its `mean` divides by the agreeing weights. Per-model densities replace `density` (TIES)
or 1 − `drop_rate` (DARE) for that model. Each method's formula says what was applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fakemerge.errors import InputError
from fakemerge.merging.lowrank import content_seed
from fakemerge.merging.registry import Plan, choice, flag, integer, merge_method, number, weighted
from fakemerge.merging.streams import TaskStream

SCALING = number(0.3)  # FusionBench's default scaling factor for task arithmetic, TIES and DARE
FUSIONBENCH = {"scaling_factor": "scaling"}  # FusionBench's name for the scaling


def combine(taus: torch.Tensor, *, keep: torch.Tensor | None = None, rescale: torch.Tensor | float | None = None,
            weights: list[float] | None = None, majority: float | None = None, reduce: str = "sum",
            scaling: float = 1.0, inplace: bool = False) -> torch.Tensor:
    """The generalized task arithmetic of N stacked task vectors (N × shape).

    keep: entries to keep (the rest become 0); rescale: divide the kept entries by it (one value, or one per
    task as N × 1 …); weights: multiply task i by wi; majority: elect a sign per entry (sign of the sum,
    `majority` where the sum is 0) and keep only entries of that sign; reduce: sum | mean (over all N;
    weighted: Σ wi τi / Σ wi) | disjoint_mean (over the entries kept; weighted: divided by their weights) |
    max (largest magnitude × sign); inplace: taus may be changed (the driver's scratch stack), saving a copy.
    """
    w = None if weights is None else per_task(torch.tensor(weights, dtype=taus.dtype, device=taus.device), taus)
    if not inplace and (keep is not None or rescale is not None or w is not None or majority is not None):
        taus = taus.clone()  # one working copy, changed in place (N × shape temporaries cost memory and time)
    if keep is not None:
        zero_dropped(taus, keep)
    if rescale is not None:
        taus.div_(rescale)
    if w is not None:
        taus.mul_(w)
    sign = None
    if majority is not None:
        sign = torch.sign(taus.sum(0))
        sign[sign == 0] = majority
        taus.mul_(torch.where(sign > 0, taus > 0, taus < 0))
    if reduce == "sum":
        merged = taus.sum(0)
    elif reduce == "mean":
        merged = taus.mean(0) if w is None else taus.sum(0) / w.sum()
    elif reduce == "disjoint_mean":
        if w is None:
            merged = taus.sum(0) / (taus != 0).sum(0).clamp_min(1)
        else:  # over the weights of the agreeing entries (0 where none agrees)
            total = ((taus != 0) * w).sum(0)
            merged = torch.where(total != 0, taus.sum(0) / total, 0.0)
    elif reduce == "max" and sign is not None:
        merged = taus.abs().max(0).values * sign
    else:
        raise ValueError(f"reduce={reduce!r}")
    return merged if scaling == 1.0 else merged.mul_(scaling)  # `merged` is new: scaled in place


def zero_dropped(t: torch.Tensor, keep: torch.Tensor) -> None:
    """t × keep (bool) in place, the bool taken as 0/1 in t's dtype (−0 and NaN as any product gives them). On
    the CPU numpy's float × bool product does it in one pass, 3× faster than torch's 0/1 conversion and product;
    masked_fill_ and torch's products with a bool tensor take 4–8× as long."""
    if (t.device.type == "cpu" and keep.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
            and not t.requires_grad):
        array = t.numpy()
        with np.errstate(invalid="ignore"):  # inf × 0 is NaN here as in torch, without numpy's warning
            np.multiply(array, keep.numpy(), out=array)
    else:
        t.mul_(keep.view(torch.uint8).to(t.device, t.dtype))


BLOCK = 1 << 18  # entries per block in `blockwise`: N × 1 MB temporaries, few enough blocks that Python is cheap


def blockwise(fn, taus: torch.Tensor) -> torch.Tensor:
    """`fn` (N × b task-vector entries → b merged entries, every step per entry) over the flattened taus one
    block of BLOCK entries at a time: the same values as `fn` on the whole tensor, with temporaries of one block."""
    flat = taus.reshape(taus.shape[0], -1)
    out = torch.empty(flat.shape[1], dtype=taus.dtype, device=taus.device)
    for start in range(0, flat.shape[1], BLOCK):
        out[start:start + BLOCK] = fn(flat[:, start:start + BLOCK])
    return out.reshape(taus.shape[1:])


def per_task(values: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
    """One value per task, shaped to broadcast over N × shape."""
    return values.reshape(-1, *[1] * (taus.ndim - 1))


def _terms(n: int, inner: str, weights: list[float] | None, densities: list | None = None, fmt=None) -> list[str]:
    """The weighted terms of a formula, each `inner` around τi (with its density when given)."""
    d = densities or [None] * n
    return weighted([inner.format(tau=f"τ{i + 1}", d=fmt(d[i]) if fmt else "") for i in range(n)], weights)


def _sum(terms: list[str]) -> str:
    return " + ".join(terms).replace("+ -", "− ")


def _average_formula(p: dict, n: int, weights: list[float] | None, densities: None) -> str:
    total = n if weights is None else sum(weights)
    if total == 0:
        raise InputError("method 'average': the per-model weights sum to 0")
    return f"θ0 + ({_sum(_terms(n, '{tau}', weights))})/{total:g}"


@merge_method("average", formula=_average_formula)
def average(taus: torch.Tensor, weights: list[float] | None) -> torch.Tensor:
    """Mean of the specialists (the base is not part of the mean); weighted: Σ wi τi / Σ wi."""
    return combine(taus, weights=weights, reduce="mean", inplace=True)


def _ta_formula(p: dict, n: int, weights: list[float] | None, densities: None) -> str:
    return f"θ0 + {p['scaling']:g}·({_sum(_terms(n, '{tau}', weights))})"


@merge_method("task_arithmetic", formula=_ta_formula, aliases=FUSIONBENCH, scaling=SCALING)
def task_arithmetic(taus: torch.Tensor, weights: list[float] | None, scaling: float) -> torch.Tensor:
    """θ0 + scaling · Σ wi τi (a sum: scaling = 1/N is the average)."""
    return combine(taus, weights=weights, scaling=scaling, inplace=True)


@dataclass(frozen=True)
class TiesPlan(Plan):
    thresholds: list[float]  # per task: the smallest |τ| kept
    majority: float  # the sign elected where an entry's trimmed sum is exactly 0

    def keep(self, taus: torch.Tensor) -> torch.Tensor:
        return taus.abs() >= per_task(torch.tensor(self.thresholds, dtype=taus.dtype, device=taus.device), taus)

    def diagnostics(self, per_task) -> dict:
        return {"ties_thresholds": per_task(self.thresholds), "ties_majority_sign": self.majority}


def ties_thresholds(s: TaskStream, densities: list[float]) -> list[float]:
    """Per task, the magnitude that keeps the top `densities[i]` of its entries over the whole model: FusionBench
    keeps |τ| ≥ the (D − int(D·density))-th smallest |τ| (1-based), ties included.

    Found exactly without holding any model's magnitudes: the bit patterns of non-negative IEEE floats sort
    like their values, so one pass histograms the top 16 bits of every task's |τ| and locates the bucket of
    the k-th smallest, and each further pass histograms the next 16 bits inside the buckets found (2 passes
    for float32; 4 for float64, also when only some tensors are float64). Memory: 2^16 counts per task.
    Integer tensors are not part of the model.
    """
    keys = s.float_keys()
    return _kth_magnitudes(s, keys, densities, wide=False) or _kth_magnitudes(s, keys, densities, wide=True)


def _kth_magnitudes(s: TaskStream, keys: list[str], densities: list[float], wide: bool) -> list[float] | None:
    """The thresholds from `bits / 16` histogram passes; None when a float64 tensor turns up in a float32 pass."""
    dtype, as_int, bits = (torch.float64, torch.int64, 64) if wide else (torch.float32, torch.int32, 32)
    sign_off = (1 << (bits - 1)) - 1  # clearing the sign bit gives |x|
    prefix = torch.zeros(s.n, dtype=torch.int64)  # per task: the leading bits of its k-th smallest so far
    wanted: list[int] = []  # per task: k = D − int(D·density)
    rank = torch.zeros(s.n, dtype=torch.int64)  # per task: the rank of its k-th smallest within its prefix
    for level in range(bits // 16):
        shift = bits - 16 * (level + 1)
        counts = torch.zeros(s.n << 16, dtype=torch.int64)
        size = 0

        def histogram(key: str, theta0: torch.Tensor, taus: torch.Tensor, level: int = level, shift: int = shift,
                      prefix: torch.Tensor = prefix) -> tuple[int, torch.Tensor] | None:
            if taus.dtype == torch.float64 and not wide:
                return None
            flat = taus.to("cpu", dtype).reshape(s.n, -1)
            counts = torch.zeros(s.n, 1 << 16, dtype=torch.int64)
            for i in range(s.n):
                for block in flat[i].split(BLOCK):  # temporaries of one block, not of a task vector
                    bits = block.view(as_int) & sign_off  # |τ|'s bit pattern
                    if level:
                        bits = bits[(bits >> (shift + 16)) == prefix[i]]
                    counts[i] += torch.bincount(((bits >> shift) & 0xFFFF).int(), minlength=1 << 16)
            return flat.shape[1], counts.reshape(-1)

        for _, found in s.map(f"ties: thresholds {level + 1}/{bits // 16}", keys, histogram):
            if found is None:
                return None
            size += found[0]
            counts += found[1]
        if level == 0:
            wanted = [size - int(size * d) for d in densities]
            rank = torch.tensor(wanted, dtype=torch.int64).clamp_min(1)
        cum = counts.reshape(s.n, -1).cumsum(1)
        bucket = torch.searchsorted(cum, rank[:, None]).squeeze(1)
        below = torch.where(bucket > 0, cum.gather(1, (bucket - 1).clamp_min(0)[:, None]).squeeze(1), 0)
        rank, prefix = rank - below, (prefix << 16) | bucket
    values = prefix.to(as_int).view(dtype)
    return [float(v) if k >= 1 else 0.0 for v, k in zip(values, wanted, strict=True)]


def prepare_ties(stream: TaskStream, weights: list[float] | None, densities: list[float | None] | None,
                 density: float) -> TiesPlan:
    """The per-task trim thresholds, then the global majority sign (used where an entry's trimmed sum is 0)."""
    trim = TiesPlan(ties_thresholds(stream, [density if d is None else d for d in densities or [None] * stream.n]), 0.0)
    elected_total = 0

    def elected(key: str, theta0: torch.Tensor, taus: torch.Tensor) -> int:
        trimmed = blockwise(lambda block: combine(block, keep=trim.keep(block), weights=weights, reduce="sum"), taus)
        return int(torch.sign(trimmed).sum().item())

    for _, votes in stream.map("ties: signs", stream.float_keys(), elected):
        elected_total += votes
    return TiesPlan(trim.thresholds, float((elected_total > 0) - (elected_total < 0)))


def _ties_formula(p: dict, n: int, weights: list[float] | None, densities: list | None) -> str:
    terms = _terms(n, "top{d}({tau})", weights, densities, lambda d: f"{100 * (p['density'] if d is None else d):g}%")
    return f"θ0 + {p['scaling']:g}·ties_{p['merge_func']}({', '.join(terms)})"


@merge_method("ties", formula=_ties_formula, prepare=prepare_ties,
              aliases={**FUSIONBENCH, "threshold": "density"}, density=number(0.2, 0, 1, lo_open=True),
              scaling=SCALING, merge_func=choice("sum", "sum", "mean", "max"))
def ties(taus: torch.Tensor, plan: TiesPlan, weights: list[float] | None, scaling: float,
         merge_func: str) -> torch.Tensor:
    """TIES-merging: trim each task to its top `density` entries (over the whole model), elect signs, merge
    the agreeing entries disjointly (ties_sum, ties_mean over the agreeing tasks, ties_max: the largest
    magnitude), × scaling."""
    reduce = {"sum": "sum", "mean": "disjoint_mean", "max": "max"}[merge_func]
    return blockwise(lambda block: combine(block, keep=plan.keep(block), weights=weights, majority=plan.majority,
                                           reduce=reduce, scaling=scaling), taus)


def _dare_formula(p: dict, n: int, weights: list[float] | None, densities: list | None) -> str:
    inner = "dare{d}({tau})" if p["rescale"] else "drop{d}({tau})"
    drop = _terms(n, inner, weights, densities, lambda d: f"{100 * (p['drop_rate'] if d is None else 1 - d):g}%")
    return f"θ0 + {p['scaling']:g}·({_sum(drop)})" + (", dare p%: drop p % of the entries, rest ÷ (1 − p)"
                                                  if p["rescale"] else "")


def keep_mask(shape: torch.Size, drop: float, seed: int) -> torch.Tensor:
    """Keep each entry with probability 1 − drop: one 32-bit word of numpy's PCG64 (seeded) per entry, kept when
    ≥ drop · 2³² (so P(drop) is within 2⁻³³ of `drop`). Three times faster than torch.rand's floats, and the
    draws release the GIL, so the key workers draw side by side."""
    n = shape.numel()
    words = np.random.PCG64(seed).random_raw((n + 1) // 2).view("<u4")[:n]
    return torch.from_numpy(words >= np.uint32(min(round(drop * 2**32), 2**32 - 1))).reshape(shape)


@merge_method("dare", formula=_dare_formula, aliases={**FUSIONBENCH, "sparsity_ratio": "drop_rate"},
              drop_rate=number(0.5, 0, 1, hi_open=True), seed=integer(0, 0), rescale=flag(True), scaling=SCALING)
def dare(key: str, taus: torch.Tensor, fingerprints: list[str], weights: list[float] | None,
         densities: list[float | None] | None, drop_rate: float, seed: int, rescale: bool,
         scaling: float) -> torch.Tensor:
    """DARE: drop each task-vector entry with probability `drop_rate` (a model's density d: 1 − d; kept ones
    × 1/(1 − p) if `rescale`), then task arithmetic. The mask of each specialist is seeded by (seed, its
    content, key): the same in any order of the specialists."""
    drops = [drop_rate if d is None else 1 - d for d in densities or [None] * len(taus)]
    for fp, tau, p in zip(fingerprints, taus, drops, strict=True):  # one task's mask at a time
        zero_dropped(tau, keep_mask(tau.shape, p, content_seed(seed, fp, key)))  # drawn on the CPU: any device
    rescale_by = None
    if rescale and densities is None:
        rescale_by = 1 - drop_rate
    elif rescale:
        rescale_by = per_task(1 - torch.tensor(drops, dtype=taus.dtype, device=taus.device), taus)
    return combine(taus, rescale=rescale_by, weights=weights, scaling=scaling, inplace=True)
