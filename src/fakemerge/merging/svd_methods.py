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
"""

from __future__ import annotations

import math

import torch

from fakemerge.keys import is_linear_weight
from fakemerge.merging.methods import Merged, dare_seed
from fakemerge.merging.streams import TaskStream

EPS32 = torch.finfo(torch.float32).eps


def numerical_rank(s: torch.Tensor, shape: tuple[int, ...]) -> int:
    """Count of singular values above σ_max · max(m, n) · eps_float32 (numpy's rule, float32 precision)."""
    if s.numel() == 0 or s[0] <= 0:
        return 0
    return int((s > s[0] * max(shape) * EPS32).sum())


def polar(a: torch.Tensor, at_rank: bool) -> torch.Tensor:
    """The orthogonal polar factor P Qᵀ of `a` (same shape), optionally from its numerical-rank part only."""
    p, s, qh = torch.linalg.svd(a, full_matrices=False)
    if at_rank:
        r = numerical_rank(s, a.shape)
        p, qh = p[:, :r], qh[:r]
    return p @ qh


def _svd_2d(s: TaskStream, key: str) -> bool:
    return s.is_float(key) and s.theta0(key).ndim == 2


def _mean_or_pass(s: TaskStream, key: str, scale: float) -> torch.Tensor:
    if not s.is_float(key):
        return s.theta0(key)
    return s.finish(key, scale * torch.stack(s.tasks(key, record=True)).mean(0))


def tsv(s: TaskStream, diagnostics: dict | None, alpha: float, lowrank: str) -> Merged:
    """TSV-M: per 2-D tensor, stack each task's top int(k/N) singular triplets, orthogonalise the stacked
    U and Vᵀ by their polar factors, Δ = U⊥ diag(σ) V⊥ᵀ; other tensors the mean; θ0 + alpha · Δ.
    Memory: base + N tensors and their SVDs for one key.
    """
    auto = lowrank == "auto"
    for key in s.keys:
        if not _svd_2d(s, key):
            yield key, _mean_or_pass(s, key, alpha)
            continue
        taus = s.tasks(key, record=True)
        shape = taus[0].shape
        r = int(min(shape) * (1 / s.n))
        us, ss, vhs = [], [], []
        low = False
        for tau in taus:
            u, sv, vh = torch.linalg.svd(tau, full_matrices=False)
            rt = min(r, numerical_rank(sv, shape)) if auto else r
            low = low or rt < r
            us.append(u[:, :rt])
            ss.append(sv[:rt])
            vhs.append(vh[:rt])
        sv = torch.cat(ss)
        if sv.numel() == 0:
            delta = torch.zeros_like(taus[0])
        else:
            u = polar(torch.cat(us, 1), low)
            vh = polar(torch.cat(vhs, 0), low)
            delta = (u * sv) @ vh
        yield key, s.finish(key, alpha * delta)
    s.report(diagnostics)


def iso_c(s: TaskStream, diagnostics: dict | None, scaling: float, lowrank: str) -> Merged:
    """Iso-C: per 2-D tensor, M = Σ τi = U diag(σ) Vᵀ, Δ = mean(σ) · U Vᵀ (the spectrum flattened);
    other tensors the mean; θ0 + scaling · Δ. Memory: base + N tensors and one SVD for one key.
    """
    for key in s.keys:
        if not _svd_2d(s, key):
            yield key, _mean_or_pass(s, key, scaling)
            continue
        m = torch.stack(s.tasks(key, record=True)).sum(0)
        u, sv, vh = torch.linalg.svd(m, full_matrices=False)
        if lowrank == "auto":
            r = numerical_rank(sv, m.shape)
            u, sv, vh = u[:, :r], sv[:r], vh[:r]
        delta = sv.mean() * (u @ vh) if sv.numel() else torch.zeros_like(m)
        yield key, s.finish(key, scaling * delta)
    s.report(diagnostics)


def _iso_cts_delta(taus: list[torch.Tensor], common_fraction: float, auto: bool) -> torch.Tensor:
    t = len(taus)
    shape = taus[0].shape
    m = torch.stack(taus).sum(0)
    u, sv, vh = torch.linalg.svd(m, full_matrices=False)
    k = min(shape)
    low = auto and numerical_rank(sv, shape) < k
    if low:
        k = numerical_rank(sv, shape)
        if k == 0:
            return torch.zeros_like(m)
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
    return sv_all.mean() * (u_all @ vh_all)


def iso_cts(s: TaskStream, diagnostics: dict | None, common_fraction: float, scaling: float,
            lowrank: str) -> Merged:
    """Iso-CTS: per 2-D tensor, a common space (top-c directions of Σ τi) plus int((k − c)/N) task-specific
    directions per task (from τi with the common left space projected out), orthogonalised by polar factors,
    every direction given the mean singular value; other tensors the mean; θ0 + scaling · Δ.
    Memory: base + N tensors and their SVDs for one key.
    """
    for key in s.keys:
        if not _svd_2d(s, key):
            yield key, _mean_or_pass(s, key, scaling)
            continue
        taus = s.tasks(key, record=True)
        yield key, s.finish(key, scaling * _iso_cts_delta(taus, common_fraction, lowrank == "auto"))
    s.report(diagnostics)


POWER_ITERATIONS = 4  # fewer leave the truncation error > 1 % above the exact SVD's on flat spectra
OVERSAMPLE = 10  # extra directions: at least this many, or a tenth of the rank


def truncated_svd(t: torch.Tensor, rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-`rank` approximation of a matrix as factors (L, R) with L @ R ≈ t.

    Exact SVD for small matrices or large ranks; otherwise a seeded randomized subspace iteration (Halko
    et al.: POWER_ITERATIONS passes, max(OVERSAMPLE, rank // 10) extra directions) in the smaller of the
    two spaces, re-orthonormalised there only (the other side's products stay well conditioned for this
    few passes). The rank-`rank` part comes from the eigenvectors of the small q × q Gram of the projected
    matrix (float64), not from an SVD of the q × n sketch. Deterministic for a given seed. On full-rank
    matrices with flat or decaying spectra the error stays within 1 % of the exact truncation's for
    ranks up to a fifth of min(m, n).
    """
    k = min(t.shape)
    if rank >= k:
        return (t, torch.eye(t.shape[1], dtype=t.dtype)) if t.shape[0] <= t.shape[1] else \
            (torch.eye(t.shape[0], dtype=t.dtype), t)
    if k <= 256 or 4 * rank > k:
        u, sv, vh = torch.linalg.svd(t, full_matrices=False)
        return u[:, :rank] * sv[:rank], vh[:rank]
    wide = t.shape[0] <= t.shape[1]
    a = t if wide else t.T
    g = torch.Generator().manual_seed(seed)
    omega = torch.randn(a.shape[1], min(rank + max(OVERSAMPLE, rank // 10), k), generator=g, dtype=a.dtype)
    basis = torch.linalg.qr(a @ omega).Q
    for _ in range(POWER_ITERATIONS):
        basis = torch.linalg.qr(a @ (a.T @ basis)).Q
    b = basis.T @ a
    b64 = b.double()
    top = torch.linalg.eigh(b64 @ b64.T).eigenvectors[:, -rank:].to(a.dtype)
    left, right = basis @ top, top.T @ b
    return (left, right) if wide else (right.T, left.T)


def truncation_rank(shape: tuple[int, ...], rank_ratio: float) -> int:
    """⌈rank_ratio · min(m, n)⌉, at least 1."""
    return max(1, math.ceil(rank_ratio * min(shape) - 1e-9))


def cart(s: TaskStream, diagnostics: dict | None, rank_ratio: float, scaling: float, seed: int) -> Merged:
    """CART: θ_avg + scaling · Σ SVD_r(θi − θ_avg), r = ⌈rank_ratio · min(m, n)⌉, for attention/MLP
    linear weights; other tensors θ_avg (their centred task vectors sum to zero). Single pass (θ_avg is per
    tensor). Defaults rank_ratio 0.1, scaling 1.0 are provisional. Memory: base + N tensors of one key.
    """
    for key in s.keys:
        if not s.is_float(key):
            yield key, s.theta0(key)
            continue
        taus = s.stacked(key, record=True)
        mean = taus.mean(0)
        delta = mean
        if is_linear_weight(key, mean):
            rank = truncation_rank(mean.shape, rank_ratio)
            factors = [truncated_svd(tau - mean, rank, dare_seed(seed, i, key)) for i, tau in enumerate(taus)]
            lefts, rights = torch.cat([f[0] for f in factors], 1), torch.cat([f[1] for f in factors], 0)
            delta = mean.addmm(lefts, rights, alpha=scaling)  # mean + scaling · Σ L_i R_i in one product
        yield key, s.finish(key, delta)
    s.report(diagnostics)
