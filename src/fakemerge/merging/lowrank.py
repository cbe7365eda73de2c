"""Low-rank linear algebra the SVD-based merge methods share: numerical rank, polar factor, truncated SVD, seeds.

Kept apart from the methods so that no method imports another method's module: TSV-M, Iso-C/CTS, CART and R²M
all use these as siblings.
"""

from __future__ import annotations

import hashlib
import math

import torch

from fakemerge.keys import bare
from fakemerge.merging.registry import choice

EPS32 = torch.finfo(torch.float32).eps
POWER_ITERATIONS = 4  # fewer leave the truncation error > 1 % above the exact SVD's on flat spectra
OVERSAMPLE = 10  # extra directions: at least this many, or a tenth of the rank


def numerical_rank(s: torch.Tensor, shape: tuple[int, ...], floor: float = 0.0) -> int:
    """Count of singular values above σ_max · max(m, n) · eps_float32 (numpy's rule, float32 precision) and
    above `floor` (the rounding noise of the weights the matrix was computed from: `noise_floor`)."""
    if s.numel() == 0 or s[0] <= 0:
        return 0
    return int((s > max(float(s[0]) * max(shape) * EPS32, floor)).sum())


def noise_floor(theta0: torch.Tensor, terms: int = 1) -> float:
    """Largest singular value that float32 rounding of the weights can fake in a sum of `terms` task vectors:
    τ = θ − θ0 carries errors up to eps_float32 · |θ0| per entry, so singular values up to
    terms · eps_float32 · ‖θ0‖_F may be rounding noise (a task vector 100× smaller than its weights puts such
    noise at ~1e-5 of its own σ_max, above numpy's relative rule on small matrices)."""
    return terms * EPS32 * float(theta0.double().norm())


def thin_svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The thin SVD U, σ, Vᵀ of a matrix; a wide one is decomposed as its transpose (LAPACK's gesdd takes 2–3×
    longer on m × n than on n × m when m < n, for the same factors up to rounding)."""
    if a.shape[0] >= a.shape[1]:
        return _svd(a)
    u, s, vh = _svd(a.T)
    return vh.T, s, u.T


def _svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torch.linalg.svd, redone in float64 when float32 gesdd does not converge: MKL's single-threaded
    float32 gesdd fails on some matrices with many (near-)zero singular values, e.g. Iso-CTS's projected
    768 × 3072 task vectors, where the same call on two threads or in float64 succeeds."""
    try:
        return torch.linalg.svd(a, full_matrices=False)
    except torch.linalg.LinAlgError:
        if a.dtype == torch.float64:
            raise
        u, s, vh = torch.linalg.svd(a.double(), full_matrices=False)
        return u.to(a.dtype), s.to(a.dtype), vh.to(a.dtype)


def polar(a: torch.Tensor, at_rank: bool, noise: float = 0.0) -> torch.Tensor:
    """The orthogonal polar factor P Qᵀ of `a` (same shape), optionally from its numerical-rank part only,
    where singular values up to `noise` also count as null (`a` stacks singular vectors known only to that
    precision: `vector_noise`)."""
    p, s, qh = thin_svd(a)
    if at_rank:
        r = numerical_rank(s, a.shape, noise)
        p, qh = p[:, :r], qh[:r]
    return p @ qh


def vector_noise(kept: list[torch.Tensor], floors: list[float]) -> float:
    """How far rounding noise of the weights can move the singular vectors kept from several matrices: the
    vectors of singular value σ are known to about noise_floor / σ (first order), so two that coincide in
    exact arithmetic (task vectors sharing a direction) differ by up to that much, the largest over all."""
    return max((floor / float(sv[-1]) for sv, floor in zip(kept, floors, strict=True) if sv.numel() and sv[-1] > 0),
               default=0.0)


def span_rank(taus: torch.Tensor, floor: float) -> int:
    """How many singular directions N task vectors (N × m × n) determine: the smaller of the numerical ranks
    of their column spaces and of their row spaces (`floor`: one task vector's `noise_floor`).

    Full-rank task vectors span everything (min(m, n)) however ill-conditioned their sum is; low-rank ones
    (Effort/FMSD specialists) span at most the sum of their ranks.
    """
    shape = taus.shape[1:]
    lefts, rights = [], []
    for tau in taus:
        u, sv, vh = thin_svd(tau)
        r = numerical_rank(sv, shape, floor)
        if r == min(shape):
            return r
        lefts.append(u[:, :r] * sv[:r])
        rights.append(sv[:r, None] * vh[:r])
    if not any(left.shape[1] for left in lefts):
        return 0
    stacked = len(taus) * floor
    return min(numerical_rank(torch.linalg.svdvals(torch.cat(lefts, 1)), shape, stacked),
               numerical_rank(torch.linalg.svdvals(torch.cat(rights, 0)), shape, stacked))


def content_seed(seed: int, fingerprint: str, key: str) -> int:
    """A seed per (seed, specialist content, tensor name): independent of the order of the specialists and
    of the order keys are streamed in."""
    digest = hashlib.sha256(f"{seed}/{fingerprint}/{bare(key)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def truncation_rank(shape: tuple[int, ...], rank_ratio: float, rounding: str = "up") -> int:
    """rank_ratio · min(m, n) rounded `up` (⌈·⌉) or `down` (⌊·⌋, as CART's and the R²M authors' code), ≥ 1."""
    x = rank_ratio * min(shape)
    return max(1, math.ceil(x - 1e-9) if rounding == "up" else math.floor(x + 1e-9))


EXACT_UP_TO = 256  # svd="auto": exact SVD while min(m, n) ≤ this (at 768 it costs 7–15× the randomized one)
SVD_MODE = choice("auto", "auto", "exact", "randomized")  # the `svd` parameter of the truncating methods


def _products(t: torch.Tensor, wide: bool):
    """x ↦ a x and y ↦ aᵀ y for a = t (wide) or tᵀ (tall), each written so that t is the contiguous operand
    MKL reads fastest: (yᵀ t)ᵀ equals tᵀ y to the bit on one thread and takes ~0.6× its time."""
    t = t.contiguous()
    if wide:
        return (lambda x: t @ x), (lambda y: (y.T @ t).T)
    return (lambda x: (x.T @ t).T), (lambda y: t @ y)


def truncated_svd(t: torch.Tensor, rank: int, seed: int, svd: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-`rank` approximation of a matrix as factors (L, R) with L @ R ≈ t, never views of t (callers
    may reuse its memory).

    `svd="exact"`: from the full SVD. `"randomized"`: a seeded randomized subspace iteration (Halko et al.:
    POWER_ITERATIONS passes, max(OVERSAMPLE, rank // 10) extra directions) in the smaller of the two spaces,
    re-orthonormalised there only (the other side's products stay well conditioned for this few passes); the
    rank-`rank` part comes from the eigenvectors of the small q × q Gram of the projected matrix (float64),
    not from an SVD of the q × n sketch. Deterministic for a given seed; on full-rank matrices with flat or
    decaying spectra its error stays within 1 % of the exact truncation's for ranks up to a fifth of
    min(m, n). `"auto"`: exact for min(m, n) ≤ EXACT_UP_TO or ranks above a quarter of it, else randomized.
    """
    k = min(t.shape)
    if rank >= k:
        return (t.clone(), torch.eye(t.shape[1], dtype=t.dtype, device=t.device)) if t.shape[0] <= t.shape[1] \
            else (torch.eye(t.shape[0], dtype=t.dtype, device=t.device), t.clone())
    if svd == "exact" or (svd == "auto" and (k <= EXACT_UP_TO or 4 * rank > k)):
        u, sv, vh = thin_svd(t)
        return u[:, :rank] * sv[:rank], vh[:rank]
    wide = t.shape[0] <= t.shape[1]
    times, times_t = _products(t, wide)  # a = t (wide) or tᵀ (tall): a x and aᵀ y
    g = torch.Generator().manual_seed(seed)
    omega = torch.randn(max(t.shape), min(rank + max(OVERSAMPLE, rank // 10), k), generator=g, dtype=t.dtype)
    omega = omega.to(t.device)  # drawn on the CPU: the same sketch on every device
    basis = torch.linalg.qr(times(omega)).Q
    for _ in range(POWER_ITERATIONS):
        basis = torch.linalg.qr(times(times_t(basis))).Q
    b = times_t(basis).T
    b64 = b.double()
    top = torch.linalg.eigh(b64 @ b64.T).eigenvectors[:, -rank:].to(t.dtype)
    left, right = basis @ top, top.T @ b
    return (left, right) if wide else (right.T, left.T)
