"""Low-rank linear algebra the SVD-based merge methods share: numerical rank, polar factor, truncated SVD, seeds.

Kept apart from the methods so that no method imports another method's module: TSV-M, Iso-C/CTS, CART and R²M
all use these as siblings.
"""

from __future__ import annotations

import hashlib
import math

import torch

from fakemerge.keys import bare

EPS32 = torch.finfo(torch.float32).eps
POWER_ITERATIONS = 4  # fewer leave the truncation error > 1 % above the exact SVD's on flat spectra
OVERSAMPLE = 10  # extra directions: at least this many, or a tenth of the rank


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


def task_seed(seed: int, task: int, key: str) -> int:
    """A seed per (seed, task index, tensor name): independent of the order keys are streamed in."""
    digest = hashlib.sha256(f"{seed}/{task}/{bare(key)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def truncation_rank(shape: tuple[int, ...], rank_ratio: float) -> int:
    """⌈rank_ratio · min(m, n)⌉, at least 1."""
    return max(1, math.ceil(rank_ratio * min(shape) - 1e-9))


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
