"""R²M — Real-aware Residual Model Merging (Park et al., arXiv 2509.24367; see specs/r2m.md).

θ* = θ0 + τ_core + η · τ_res, where
- τ_core projects the mean task vector on the top-k right singular vectors of the N×D task matrix M (the
  shared "Real" direction). Only the N×N Gram C = Σ_l γ_l A_l A_lᵀ over the core tensors is formed (A_l is
  the N×P_l block of tensor l), so τ_core,l = A_lᵀ w is a per-tensor linear combination of the task vectors
  with w = U_k Λ_k⁻¹ U_kᵀ B 1/N (B = C, or H C with the centring H = I − 11ᵀ/N when `center`).
  Core tensors: all but biases and norm layers, whose core is the plain mean τ̄.
- The fake residuals τi − τ_core (`residual="subtract"`) or (I − Π)τi (`"orthogonal"`: τi − A_lᵀ W e_i)
  are truncated to rank ⌈rank_ratio · min(m, n)⌉ for every attention/MLP linear weight (`self_attn.` /
  `mlp.` 2-D `.weight`s); other tensors keep their whole residual. `rank_ratio="auto"` keeps, per task and
  tensor, the smallest rank holding `energy` of the residual's Frobenius energy.
- τ_res = (1/N) Σ (m̄/m_i) τi^fake with m_i the global L2 norm of task i's truncated residual. A residual
  below ZERO_RESIDUAL × ‖τi‖ is rounding noise and gets weight 0, so N identical specialists give back that
  specialist (with `center` their core vanishes and the result is θ0).
- η = α‖τ_core‖ (`eta="script"`, the authors' script) or α‖τ_core‖/‖τ_res‖ (`"relative"`: the residual gets
  α times the core's norm).

Defaults (k=1, rank_ratio=0.1, alpha=0.6, center=False, block_norm="none", residual="subtract",
eta="script") are provisional: the benchmark chooses them. Passes: (1) per-tensor Grams (each key's N×N
product in the compute dtype, summed in float64); (2) truncated residuals → their N×N Gram, taken from the
low-rank factors without forming m × n products (the factors are cached while they fit in
FACTOR_CACHE_LIMIT × one model's bytes, else recomputed identically in pass 3 from the same seeds); (3) the
merge: per key one combination of the τj plus one product of the concatenated, weighted factors. Memory:
base + N tensors of one key + the factor cache. Exact SVD for small matrices, seeded randomized SVD when
rank ≪ min(m, n) (within 1 % of the exact truncation error; see `truncated_svd`). The SVDs are ~90 % of the
time: 4 power iterations are what the 1 % bound needs on flat spectra.
"""

from __future__ import annotations

import torch

from fakemerge.keys import is_bias_or_norm, is_linear_weight
from fakemerge.merging.methods import Merged, dare_seed
from fakemerge.merging.streams import TaskStream
from fakemerge.merging.svd_methods import truncated_svd, truncation_rank

FACTOR_CACHE_LIMIT = 1.0  # cache residual factors up to this fraction of one model's bytes
ZERO_RESIDUAL = 1e-6  # a residual below this fraction of its task vector's norm is rounding noise: weight 0


def _core_coefficients(grams: dict[str, torch.Tensor], sizes: dict[str, int], n: int, k: int, center: bool,
                       block_norm: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w_core, W, eigenvalues of C): τ_core,l = A_lᵀ w_core and Π τi on tensor l = A_lᵀ W e_i."""
    c = torch.zeros(n, n, dtype=torch.float64)
    for key, g in grams.items():
        if is_bias_or_norm(key):
            continue
        energy = float(g.trace())
        if block_norm == "none":
            c += g
        elif energy > 0:  # balanced: γ_l = √P_l / ‖A_l‖_F
            c += (sizes[key] / energy) ** 0.5 * g
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    eigvals, eigvecs = torch.linalg.eigh(h @ c @ h if center else c)
    eigvals, eigvecs = eigvals.flip(0), eigvecs.flip(1)
    keep = eigvals > eigvals[0].clamp_min(0) * 1e-12
    keep[k:] = False
    u, lam = eigvecs[:, keep], eigvals[keep]
    w = u @ torch.diag(1 / lam) @ u.T @ (h @ c if center else c)
    return w @ torch.full((n,), 1.0 / n, dtype=torch.float64), w, eigvals


def _energy_rank(sv: torch.Tensor, energy: float) -> int:
    """Smallest rank whose singular values hold `energy` of the squared Frobenius norm (at least 1)."""
    cum = (sv.double() ** 2).cumsum(0)
    if cum[-1] <= 0:
        return 1
    return min(sv.numel(), int((cum < energy * cum[-1]).sum()) + 1)


def _truncate(res: torch.Tensor, rank_ratio: float | str, energy: float,
              seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (L, R) of one residual's low-rank approximation."""
    if rank_ratio == "auto":
        u, sv, vh = torch.linalg.svd(res, full_matrices=False)
        r = _energy_rank(sv, energy)
        return u[:, :r] * sv[:r], vh[:r]
    return truncated_svd(res, truncation_rank(res.shape, rank_ratio), seed)


Factors = list[tuple[torch.Tensor, torch.Tensor]]


class _Plan:
    """What the passes share: per-tensor Grams, coefficient vectors, the factor cache."""

    def __init__(self, s: TaskStream, k: int, center: bool, block_norm: str, residual: str):
        self.s = s
        self.grams: dict[str, torch.Tensor] = {}
        sizes: dict[str, int] = {}
        for key in s.float_keys():
            a = s.stacked(key).reshape(s.n, -1)
            self.grams[key] = (a @ a.T).double()
            sizes[key] = a.shape[1]
        s.gram += sum(self.grams.values(), torch.zeros(s.n, s.n, dtype=torch.float64))
        self.model_bytes = sum(sizes.values()) * 4
        self.w_core, self.w_proj, self.eigvals = _core_coefficients(self.grams, sizes, s.n, k, center,
                                                                    block_norm)
        eye = torch.eye(s.n, dtype=torch.float64)
        self.mean = torch.full((s.n,), 1.0 / s.n, dtype=torch.float64)
        self.res_core = eye - self.w_proj.T if residual == "orthogonal" else eye - self.w_core[None, :]
        self.res_plain = eye - self.mean[None, :]

    def core_weights(self, key: str) -> torch.Tensor:
        return self.mean if is_bias_or_norm(key) else self.w_core

    def residual_weights(self, key: str) -> torch.Tensor:
        """Rows: residual_i = Σ_j R[i, j] τj on this tensor."""
        return self.res_plain if is_bias_or_norm(key) else self.res_core

    def residuals(self, key: str, taus: torch.Tensor) -> torch.Tensor:
        """The N residuals of one key as an N × P matrix, in the task vectors' dtype."""
        flat = taus.reshape(self.s.n, -1)
        return self.residual_weights(key).to(flat.dtype) @ flat


def _factors(res: torch.Tensor, shape: torch.Size, rank_ratio: float | str, energy: float, seed: int,
             key: str) -> Factors:
    return [_truncate(row.reshape(shape), rank_ratio, energy, dare_seed(seed, i, key))
            for i, row in enumerate(res)]


def _factor_gram(factors: Factors) -> torch.Tensor:
    """N×N Gram of the low-rank residuals L_i R_i from their factors only:
    ⟨L_i R_i, L_j R_j⟩ = Σ (L_iᵀ L_j) ⊙ (R_i R_jᵀ), never forming an m × n product."""
    g = torch.zeros(len(factors), len(factors), dtype=torch.float64)
    for i, (li, ri) in enumerate(factors):
        for j, (lj, rj) in enumerate(factors[:i + 1]):
            g[i, j] = g[j, i] = float(((li.T @ lj) * (ri @ rj.T)).sum(dtype=torch.float64))
    return g


def r2m(s: TaskStream, diagnostics: dict | None, k: int, rank_ratio: float | str, energy: float, alpha: float,
        center: bool, block_norm: str, residual: str, eta: str, seed: int) -> Merged:
    """R²M: θ0 + τ_core + η · τ_res (shared Real core + truncated, norm-balanced Fake residuals).
    Memory: base + N tensors of one key + cached residual factors (≤ FACTOR_CACHE_LIMIT × one model)."""
    plan = _Plan(s, k, center, block_norm, residual)
    n = s.n
    cache: dict[str, Factors] = {}
    cached_bytes = 0
    res_gram = torch.zeros(n, n, dtype=torch.float64)
    ranks: dict[str, list[int]] = {}
    layer_norms: dict[str, list[float]] = {}
    for key in s.float_keys():
        taus = s.stacked(key)
        res = plan.residuals(key, taus)
        if is_linear_weight(key, taus[0]):
            factors = _factors(res, taus.shape[1:], rank_ratio, energy, seed, key)
            gram = _factor_gram(factors)
            ranks[key] = [left.shape[1] for left, _ in factors]
            size = sum(left.numel() + right.numel() for left, right in factors) * factors[0][0].element_size()
            if cached_bytes + size <= FACTOR_CACHE_LIMIT * plan.model_bytes:
                cache[key] = factors
                cached_bytes += size
        else:
            gram = (res @ res.T).double()
        res_gram += gram
        layer_norms[key] = gram.diagonal().clamp_min(0).sqrt().tolist()
    m = res_gram.diagonal().clamp_min(0).sqrt()
    m = torch.where(m > ZERO_RESIDUAL * s.gram.diagonal().sqrt(), m, torch.zeros_like(m))
    ratio = torch.where(m > 0, m.mean() / m.clamp_min(1e-300), torch.zeros_like(m))
    c = ratio / n
    res_norm = max(float(c @ res_gram @ c), 0.0) ** 0.5
    core_sq = sum(float(plan.core_weights(key) @ g @ plan.core_weights(key)) for key, g in plan.grams.items())
    core_norm = max(core_sq, 0.0) ** 0.5
    scale = alpha * core_norm
    if eta == "relative":
        scale = scale / res_norm if res_norm > ZERO_RESIDUAL * core_norm else 0.0

    for key in s.keys:
        if not s.is_float(key):
            yield key, s.theta0(key)
            continue
        taus = s.stacked(key)
        flat = taus.reshape(n, -1)
        if key in ranks:
            factors = cache.pop(key, None) or _factors(plan.residuals(key, taus), taus.shape[1:], rank_ratio,
                                                       energy, seed, key)
            delta = (plan.core_weights(key).to(flat.dtype) @ flat).reshape(taus.shape[1:])
            lefts = torch.cat([ci * left for ci, (left, _) in zip(c.tolist(), factors, strict=True)], 1)
            delta.addmm_(lefts, torch.cat([right for _, right in factors], 0), alpha=scale)
        else:  # residual_i = Σ_j R[i, j] τj: core and weighted residuals are one combination of the τj
            weights = plan.core_weights(key) + scale * (plan.residual_weights(key).T @ c)
            delta = (weights.to(flat.dtype) @ flat).reshape(taus.shape[1:])
        yield key, s.finish(key, delta)

    s.report(diagnostics)
    if diagnostics is not None:
        diagnostics.update({
            "r2m_eigenvalues": plan.eigvals.tolist(),
            "r2m_core_energy": {key: _core_energy(plan.w_proj, g) for key, g in plan.grams.items()
                                if not is_bias_or_norm(key)},
            "r2m_residual_layer_norms": layer_norms,
            "r2m_residual_ranks": ranks,
            "r2m_norm_weights": ratio.tolist(),
            "r2m_core_norm": core_norm,
            "r2m_residual_norm": res_norm,
            "r2m_eta": scale,
            "r2m_residual_task_norms": m.tolist(),
        })


def _core_energy(w: torch.Tensor, g: torch.Tensor) -> float:
    """Σ_i ‖Π τi‖² / Σ_i ‖τi‖² on one tensor (the projection is global, so a block can exceed 1)."""
    total = float(g.trace())
    return float(torch.trace(w.T @ g @ w)) / total if total > 0 else 0.0
