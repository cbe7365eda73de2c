"""R²M — Real-aware Residual Model Merging (Park et al., arXiv 2509.24367).

θ* = θ0 + τ_core + η · τ_res, where
- τ_core projects the mean task vector on the top-k right singular vectors of the N×D task matrix M (the
  shared "Real" direction). Only the N×N Gram C = Σ_l γ_l A_l A_lᵀ over the core tensors is formed (A_l is
  the N×P_l block of tensor l), so τ_core,l = A_lᵀ w is a per-tensor linear combination of the task vectors
  with w = U_k Λ_k⁻¹ U_kᵀ B 1/N (B = C, or H C with the centring H = I − 11ᵀ/N when `center`).
  Core tensors: all but biases and norm layers, whose core is the plain mean τ̄.
- The fake residuals τi − τ_core (`residual="subtract"`) or (I − Π)τi (`"orthogonal"`: τi − A_lᵀ W e_i)
  are truncated to rank rank_ratio · min(m, n), rounded up (`rank_round="up"`; the authors' script and CART
  round down: `"down"`), for every attention/MLP linear weight (`self_attn.` / `mlp.` 2-D `.weight`s); other
  tensors keep their whole residual. `rank_ratio="auto"` keeps, per task and tensor, the smallest rank
  holding `energy` of the residual's Frobenius energy. `svd` chooses exact or randomized truncations
  (`lowrank.truncated_svd`); randomized ones are seeded by (seed, specialist content, key).
- τ_res = (1/N) Σ w_i (m̄/m_i) τi^fake (per-model weights w_i, default 1: the residual of specialist i enters
  with norm ∝ w_i; the core is computed from all specialists alike) with m_i the global L2 norm of task i's
  truncated residual
  (`norm_of="truncated"`) or of its residual before truncation (`"residual"`). A residual below
  ZERO_RESIDUAL × ‖τi‖ is rounding noise and gets weight 0, so N identical specialists give back that
  specialist (with `center` their core vanishes and the result is θ0).
- η = α‖τ_core‖ (`eta="script"`, the authors' script) or α‖τ_core‖/‖τ_res‖ (`"relative"`: the residual gets
  α times the core's norm).

Passes: (1) the driver's per-tensor Grams (each key's N×N product in the compute dtype, kept in float64);
(2) truncated residuals → their N×N Gram, taken from the low-rank factors without forming m × n products (the
factors are cached while they fit in FACTOR_CACHE_LIMIT × one model's bytes, else recomputed identically in
pass 3 from the same seeds); (3) the merge: per key one combination of the τj plus one product of the
concatenated, weighted factors. Memory: base + N tensors of one key + the factor cache. Exact SVD for small
matrices, seeded randomized SVD when rank ≪ min(m, n) (within 1 % of the exact truncation error; see
`lowrank.truncated_svd`). The SVDs are ~90 % of the time: 4 power iterations are what the 1 % bound needs on
flat spectra.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from fakemerge.keys import is_bias_or_norm, is_linear_weight
from fakemerge.merging.lowrank import SVD_MODE, content_seed, thin_svd, truncated_svd, truncation_rank
from fakemerge.merging.registry import Plan, choice, flag, integer, merge_method, number, weighted
from fakemerge.merging.streams import TaskStream

FACTOR_CACHE_LIMIT = 1.0  # cache residual factors up to this fraction of one model's bytes
ZERO_RESIDUAL = 1e-6  # a residual below this fraction of its task vector's norm is rounding noise: weight 0

Factors = list[tuple[torch.Tensor, torch.Tensor]]


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


def _truncate(res: torch.Tensor, rank_ratio: float | str, energy: float, rank_round: str, svd: str,
              seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (L, R) of one residual's low-rank approximation."""
    if rank_ratio == "auto":
        u, sv, vh = thin_svd(res)
        r = _energy_rank(sv, energy)
        return u[:, :r] * sv[:r], vh[:r]
    return truncated_svd(res, truncation_rank(res.shape, rank_ratio, rank_round), seed, svd)


def _factor_gram(factors: Factors) -> torch.Tensor:
    """N×N Gram of the low-rank residuals L_i R_i from their factors only:
    ⟨L_i R_i, L_j R_j⟩ = Σ (L_iᵀ L_j) ⊙ (R_i R_jᵀ), never forming an m × n product."""
    g = torch.zeros(len(factors), len(factors), dtype=torch.float64)
    for i, (li, ri) in enumerate(factors):
        for j, (lj, rj) in enumerate(factors[:i + 1]):
            g[i, j] = g[j, i] = float(((li.T @ lj) * (ri @ rj.T)).sum(dtype=torch.float64))
    return g


def _core_energy(w: torch.Tensor, g: torch.Tensor) -> float:
    """Σ_i ‖Π τi‖² / Σ_i ‖τi‖² on one tensor (the projection is global, so a block can exceed 1)."""
    total = float(g.trace())
    return float(torch.trace(w.T @ g @ w)) / total if total > 0 else 0.0


@dataclass
class Coefficients:
    """How the task vectors of one tensor become its core and its N residuals (rows weigh the τj)."""

    n: int
    w_core: torch.Tensor  # τ_core,l = A_lᵀ w_core
    w_proj: torch.Tensor  # Π τi on tensor l = A_lᵀ W e_i
    eigvals: torch.Tensor
    res_core: torch.Tensor  # residual_i = Σ_j R[i, j] τj on core tensors
    rank_ratio: float | str
    energy: float
    rank_round: str
    svd: str
    seeds: list[str]  # per task: its content fingerprint, which seeds its randomized truncations
    seed: int

    def __post_init__(self):
        self.mean = torch.full((self.n,), 1.0 / self.n, dtype=torch.float64)
        self.res_plain = torch.eye(self.n, dtype=torch.float64) - self.mean[None, :]
        self.scratch: dict[tuple, torch.Tensor] = {}  # residual buffers by (thread, size): `residuals`

    def core_weights(self, key: str) -> torch.Tensor:
        return self.mean if is_bias_or_norm(key) else self.w_core

    def residual_weights(self, key: str) -> torch.Tensor:
        """Rows: residual_i = Σ_j R[i, j] τj on this tensor."""
        return self.res_plain if is_bias_or_norm(key) else self.res_core

    def residuals(self, key: str, taus: torch.Tensor) -> torch.Tensor:
        """The N residuals of one key as an N × P matrix, in the task vectors' dtype, written into this thread's
        scratch buffer for that size (a fresh one per key costs 3× the product itself in page faults): valid
        until this thread's next call for the same size, or `release_scratch`."""
        flat = taus.reshape(self.n, -1)
        spot = (threading.get_ident(), flat.shape, flat.dtype, flat.device)
        buffer = self.scratch.get(spot)
        if buffer is None:
            buffer = self.scratch[spot] = torch.empty_like(flat)
        return torch.matmul(self.residual_weights(key).to(flat), flat, out=buffer)

    def release_scratch(self) -> None:
        self.scratch.clear()

    def truncated(self, key: str, taus: torch.Tensor) -> Factors:
        """Factors of the N truncated residuals of one linear weight."""
        res = self.residuals(key, taus)
        return [_truncate(row.reshape(taus.shape[1:]), self.rank_ratio, self.energy, self.rank_round, self.svd,
                          content_seed(self.seed, fp, key)) for fp, row in zip(self.seeds, res, strict=True)]


def _coefficients(grams: dict[str, torch.Tensor], sizes: dict[str, int], n: int, k: int, center: bool,
                  block_norm: str, residual: str, **truncation) -> Coefficients:
    w_core, w_proj, eigvals = _core_coefficients(grams, sizes, n, k, center, block_norm)
    eye = torch.eye(n, dtype=torch.float64)
    res_core = eye - w_proj.T if residual == "orthogonal" else eye - w_core[None, :]
    return Coefficients(n, w_core, w_proj, eigvals, res_core, **truncation)


@dataclass
class R2MPlan(Plan):
    coef: Coefficients
    grams: dict[str, torch.Tensor]
    cache: dict[str, Factors]  # residual factors kept from the prepare pass
    ranks: dict[str, list[int]]  # truncation rank per linear weight and task
    layer_norms: dict[str, list[float]]  # ‖residual_i‖ per tensor
    m: torch.Tensor  # m_i: ‖τi^fake‖ (truncated or not, as `norm_of` says) over the backbone (0: rounding noise)
    ratio: torch.Tensor  # norm-matching weights m̄ / m_i
    c: torch.Tensor  # what residual i is multiplied by in τ_res: w_i · (m̄ / m_i) / N
    res_norm: float
    core_norm: float
    scale: float  # η

    def factors(self, key: str, taus: torch.Tensor) -> Factors:
        cached = self.cache.pop(key, None)
        return cached if cached is not None else self.coef.truncated(key, taus)

    def diagnostics(self, per_task) -> dict:
        return {
            "r2m_eigenvalues": self.coef.eigvals.tolist(),
            "r2m_core_energy": {key: _core_energy(self.coef.w_proj, g) for key, g in self.grams.items()
                                if not is_bias_or_norm(key)},
            "r2m_residual_layer_norms": {key: per_task(v) for key, v in self.layer_norms.items()},
            "r2m_residual_ranks": {key: per_task(v) for key, v in self.ranks.items()},
            "r2m_norm_weights": per_task(self.ratio.tolist()),
            "r2m_core_norm": self.core_norm,
            "r2m_residual_norm": self.res_norm,
            "r2m_eta": self.scale,
            "r2m_residual_task_norms": per_task(self.m.tolist()),
        }


def prepare_r2m(stream: TaskStream, grams: dict[str, torch.Tensor], weights: list[float] | None, k: int,
                rank_ratio: float | str, energy: float, alpha: float, center: bool, block_norm: str, residual: str,
                eta: str, rank_round: str, norm_of: str, svd: str, seed: int) -> R2MPlan:
    """The core from the Grams, then one pass over the truncated residuals for their norms and η."""
    s, n = stream, stream.n
    sizes = {key: s.shapes[key].numel() for key in grams}
    coef = _coefficients(grams, sizes, n, k, center, block_norm, residual, rank_ratio=rank_ratio, energy=energy,
                         rank_round=rank_round, svd=svd, seeds=s.fingerprints, seed=seed)
    model_bytes = sum(sizes.values()) * 4
    cache: dict[str, Factors] = {}
    ranks: dict[str, list[int]] = {}
    layer_norms: dict[str, list[float]] = {}
    cached_bytes = 0
    res_gram = torch.zeros(n, n, dtype=torch.float64)

    def truncated(key: str, theta0: torch.Tensor, taus: torch.Tensor) -> tuple[Factors | None, torch.Tensor]:
        if is_linear_weight(key, theta0):
            factors = coef.truncated(key, taus)
            return factors, _factor_gram(factors)
        res = coef.residuals(key, taus)
        return None, (res @ res.T).double().cpu()

    for key, (factors, gram) in s.map("r2m: residuals", s.float_keys(), truncated):
        if factors is not None:
            ranks[key] = [left.shape[1] for left, _ in factors]
            size = sum(left.numel() + right.numel() for left, right in factors) * factors[0][0].element_size()
            if cached_bytes + size <= FACTOR_CACHE_LIMIT * model_bytes:
                cache[key] = factors
                cached_bytes += size
        res_gram += gram
        layer_norms[key] = gram.diagonal().clamp_min(0).sqrt().tolist()
    coef.release_scratch()  # the merge pass needs buffers only for keys whose factors were not cached
    task_sq = sum(grams.values(), torch.zeros(n, n, dtype=torch.float64)).diagonal()
    if norm_of == "truncated":
        m = res_gram.diagonal().clamp_min(0).sqrt()
    else:  # ‖residual_i‖² = Σ_l (R_l G_l R_lᵀ)_ii, from the Grams alone
        full = sum(coef.residual_weights(key) @ g @ coef.residual_weights(key).T for key, g in grams.items())
        m = full.diagonal().clamp_min(0).sqrt()
    m = torch.where(m > ZERO_RESIDUAL * task_sq.sqrt(), m, torch.zeros_like(m))
    ratio = torch.where(m > 0, m.mean() / m.clamp_min(1e-300), torch.zeros_like(m))
    c = ratio / n if weights is None else torch.tensor(weights, dtype=torch.float64) * ratio / n
    res_norm = max(float(c @ res_gram @ c), 0.0) ** 0.5
    core_sq = sum(float(coef.core_weights(key) @ g @ coef.core_weights(key)) for key, g in grams.items())
    core_norm = max(core_sq, 0.0) ** 0.5
    scale = alpha * core_norm
    if eta == "relative":
        scale = scale / res_norm if res_norm > ZERO_RESIDUAL * core_norm else 0.0
    return R2MPlan(coef, grams, cache, ranks, layer_norms, m, ratio, c, res_norm, core_norm, scale)


# Defaults: rank_ratio 0.05 and alpha 0.8 were chosen on ForgeryLab's validation split from the grid
# r ∈ {0.05, 0.1, 0.2} × α ∈ {0.4, 0.6, 0.8} (docs/results.md); the other open choices (center, block_norm,
# residual, eta) did not beat them on validation; rank_round and norm_of keep the choices made before they
# were options (not yet compared on validation).
def _r2m_formula(p: dict, n: int, weights: list[float] | None, densities: None) -> str:
    terms = " + ".join(weighted([f"m̄/m{i + 1}·τ{i + 1}ᶠ" for i in range(n)], weights)).replace("+ -", "− ")
    rank = "energy " + f"{p['energy']:g}" if p["rank_ratio"] == "auto" else f"{p['rank_ratio']:g}·min(m, n)"
    eta = f"{p['alpha']:g}·‖τ_core‖" + ("/‖τ_res‖" if p["eta"] == "relative" else "")
    return (f"θ0 + τ_core + η·({terms})/{n}, τ_core = top-{p['k']} core of τ1…τ{n}, τiᶠ = τi − τ_core truncated to "
            f"rank {rank} ({p['rank_round']}), η = {eta}")


@merge_method("r2m", formula=_r2m_formula, prepare=prepare_r2m, k=integer(1, 1),
              rank_ratio=number(0.05, 0, 1, lo_open=True, also=("auto",)), energy=number(0.9, 0, 1, lo_open=True),
              alpha=number(0.8), center=flag(False), block_norm=choice("none", "none", "balanced"),
              residual=choice("subtract", "subtract", "orthogonal"), eta=choice("script", "script", "relative"),
              rank_round=choice("up", "up", "down"), norm_of=choice("truncated", "truncated", "residual"),
              svd=SVD_MODE, seed=integer(0, 0))
def r2m(key: str, taus: torch.Tensor, plan: R2MPlan) -> torch.Tensor:
    """R²M: θ0 + τ_core + η · τ_res (shared Real core + truncated, norm-balanced Fake residuals)."""
    coef, c = plan.coef, plan.c
    flat = taus.reshape(coef.n, -1)
    if key in plan.ranks:
        factors = plan.factors(key, taus)
        delta = (coef.core_weights(key).to(flat) @ flat).reshape(taus.shape[1:])
        lefts = torch.cat([ci * left for ci, (left, _) in zip(c.tolist(), factors, strict=True)], 1)
        return delta.addmm_(lefts, torch.cat([right for _, right in factors], 0), alpha=plan.scale)
    # residual_i = Σ_j R[i, j] τj: core and weighted residuals are one combination of the τj
    weights = coef.core_weights(key) + plan.scale * (coef.residual_weights(key).T @ c)
    return (weights.to(flat) @ flat).reshape(taus.shape[1:])
