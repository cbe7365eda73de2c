"""SVD-based merge methods: TSV-M, Iso-C, Iso-CTS (FusionBench 0.2.33 semantics) and CART.

"2-D" means `ndim == 2` for TSV-M and Iso (every Linear weight and `position_embedding.weight`); their other
tensors get the mean task vector. CART truncates only attention/MLP linear weights.

Low-rank task vectors (`lowrank="auto"`, the default): when a matrix's numerical rank (singular values above
σ_max · max(m, n) · eps_float32) is below the number of singular directions a method uses, the extra singular
vectors are an arbitrary choice of the SVD routine. Then the method works at the numerical rank: TSV-M keeps
min(r, rank) triplets per task, Iso-C flattens the spectrum over the rank's directions only (mean of the
nonzero singular values), Iso-CTS sizes its common/task spaces from the rank of Σ τi, and every polar
factor of such a tensor is taken at the numerical rank of the stacked matrix. Null directions are never
promoted, so float32 and float64 inputs agree. Tensors whose inputs are all full rank take FusionBench's
arithmetic unchanged (parity); `lowrank="fusionbench"` forces it everywhere.
Memory of each: base + N tensors of one key and their SVDs.
"""

from __future__ import annotations

import torch

from fakemerge.keys import is_linear_weight
from fakemerge.merging.lowrank import numerical_rank, polar, task_seed, truncated_svd, truncation_rank
from fakemerge.merging.registry import choice, integer, merge_method, number

SCALING = number(1.0)
LOWRANK = choice("auto", "auto", "fusionbench")


@merge_method("tsv", alpha=SCALING, lowrank=LOWRANK)
def tsv(taus: torch.Tensor, alpha: float, lowrank: str) -> torch.Tensor:
    """TSV-M: per 2-D tensor, stack each task's top int(k/N) singular triplets, orthogonalise the stacked
    U and Vᵀ by their polar factors, Δ = U⊥ diag(σ) V⊥ᵀ; other tensors the mean; θ0 + alpha · Δ."""
    if taus.ndim != 3:
        return alpha * taus.mean(0)
    shape = taus.shape[1:]
    r = int(min(shape) * (1 / len(taus)))
    us, ss, vhs = [], [], []
    low = False
    for tau in taus:
        u, sv, vh = torch.linalg.svd(tau, full_matrices=False)
        rt = min(r, numerical_rank(sv, shape)) if lowrank == "auto" else r
        low = low or rt < r
        us.append(u[:, :rt])
        ss.append(sv[:rt])
        vhs.append(vh[:rt])
    sv = torch.cat(ss)
    if sv.numel() == 0:
        return alpha * torch.zeros_like(taus[0])
    u = polar(torch.cat(us, 1), low)
    vh = polar(torch.cat(vhs, 0), low)
    return alpha * ((u * sv) @ vh)


@merge_method("iso_c", scaling=SCALING, lowrank=LOWRANK)
def iso_c(taus: torch.Tensor, scaling: float, lowrank: str) -> torch.Tensor:
    """Iso-C: per 2-D tensor, M = Σ τi = U diag(σ) Vᵀ, Δ = mean(σ) · U Vᵀ (the spectrum flattened);
    other tensors the mean; θ0 + scaling · Δ."""
    if taus.ndim != 3:
        return scaling * taus.mean(0)
    m = taus.sum(0)
    u, sv, vh = torch.linalg.svd(m, full_matrices=False)
    if lowrank == "auto":
        r = numerical_rank(sv, m.shape)
        u, sv, vh = u[:, :r], sv[:r], vh[:r]
    delta = sv.mean() * (u @ vh) if sv.numel() else torch.zeros_like(m)
    return scaling * delta


@merge_method("iso_cts", common_fraction=number(0.8, 0, 1), scaling=SCALING, lowrank=LOWRANK)
def iso_cts(taus: torch.Tensor, common_fraction: float, scaling: float, lowrank: str) -> torch.Tensor:
    """Iso-CTS: per 2-D tensor, a common space (top-c directions of Σ τi) plus int((k − c)/N) task-specific
    directions per task (from τi with the common left space projected out), orthogonalised by polar factors,
    every direction given the mean singular value; other tensors the mean; θ0 + scaling · Δ."""
    if taus.ndim != 3:
        return scaling * taus.mean(0)
    auto = lowrank == "auto"
    t = len(taus)
    shape = taus.shape[1:]
    m = taus.sum(0)
    u, sv, vh = torch.linalg.svd(m, full_matrices=False)
    k = min(shape)
    low = auto and numerical_rank(sv, shape) < k
    if low:
        k = numerical_rank(sv, shape)
        if k == 0:
            return scaling * torch.zeros_like(m)
    c = int(k * common_fraction)
    c = max(0, k - round((k - c) / t) * t)
    n = int((k - c) / t)
    uc, sc, vhc = u[:, :c], sv[:c], vh[:c]
    us, ss, vhs = [], [], []
    for tau in taus:
        ut, st, vht = torch.linalg.svd(tau - uc @ (uc.T @ tau), full_matrices=False)
        nt = min(n, numerical_rank(st, shape)) if auto else n
        low = low or nt < n
        us.append(ut[:, :nt])
        ss.append(st[:nt])
        vhs.append(vht[:nt])
    sv_all = torch.cat([*ss, sc])
    u_all = polar(torch.cat([*us, uc], 1), low)
    vh_all = polar(torch.cat([*vhs, vhc], 0), low)
    return scaling * (sv_all.mean() * (u_all @ vh_all))


@merge_method("cart", rank_ratio=number(0.1, 0, 1, lo_open=True), scaling=SCALING, seed=integer(0, 0))
def cart(key: str, taus: torch.Tensor, rank_ratio: float, scaling: float, seed: int) -> torch.Tensor:
    """CART: θ_avg + scaling · Σ SVD_r(θi − θ_avg), r = ⌈rank_ratio · min(m, n)⌉, for attention/MLP linear
    weights; other tensors θ_avg (their centred task vectors sum to zero). Defaults are provisional."""
    mean = taus.mean(0)
    if not is_linear_weight(key, mean):
        return mean
    rank = truncation_rank(mean.shape, rank_ratio)
    factors = [truncated_svd(tau - mean, rank, task_seed(seed, i, key)) for i, tau in enumerate(taus)]
    lefts, rights = torch.cat([f[0] for f in factors], 1), torch.cat([f[1] for f in factors], 0)
    return mean.addmm(lefts, rights, alpha=scaling)  # mean + scaling · Σ L_i R_i in one product
