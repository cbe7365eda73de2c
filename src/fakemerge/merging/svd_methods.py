"""SVD-based merge methods: TSV-M, Iso-C, Iso-CTS (FusionBench 0.2.33 semantics) and CART.

"2-D" means `ndim == 2` for TSV-M and Iso (every Linear weight and `position_embedding.weight`); their other
tensors get the mean task vector. CART truncates only attention/MLP linear weights.

Low-rank task vectors (`lowrank="auto"`, the default). A singular direction is null when its singular value
is at most σ_max · max(m, n) · eps_float32 of its matrix (numpy's numerical-rank rule) or at most what float32
rounding of the weights can fake (`lowrank.noise_floor`: eps_float32 · ‖θ0‖_F per task vector, N times that
for their sum). Null directions are an arbitrary choice of the SVD routine: a method that used them would
depend on the LAPACK build and precision. Whether a tensor has them is decided on the task vectors, never on
their sum alone (a sum of full-rank task vectors can be ill-conditioned with every direction determined):
- Full-rank branch (every direction the method takes from a task vector is non-null: TSV-M's top r of each
  τi, Iso's span of all min(m, n) directions, Iso-CTS's top n of each projected τi'): FusionBench's
  arithmetic, unchanged (parity), however ill-conditioned the sum, and however small the tail singular
  values of a square task vector (a random square matrix has some near 0, legitimately).
- Low-rank branch (Effort/FMSD specialists, whose task vectors have a rank far below those counts). TSV-M:
  task i gives min(r, rank(τi)) triplets. Iso-C / Iso-CTS: the size k of the flattened space is the number
  of directions the task vectors span, `lowrank.span_rank` (the smaller rank of their stacked column and row
  spaces; only computed when Σ τi is itself rank-deficient): Iso-C keeps the top k directions of Σ τi,
  Iso-CTS sizes its common and task spaces from k and each task gives min(n, rank(τi')) directions. The
  polar factors of the stacked singular vectors are taken at the stack's numerical rank, counting as null
  what rounding noise can fake there (`lowrank.vector_noise`): task vectors that share a direction, as
  Effort specialists share the base's tail, make the stack rank-deficient. (Full-rank-branch task vectors
  that share a direction exactly would make FusionBench's arithmetic arbitrary too; that happens only
  when r or n is about a task vector's rank, i.e. on tiny matrices.)
So null directions are never promoted and float32 and float64 inputs agree; `lowrank="fusionbench"` forces
FusionBench's arithmetic everywhere.
Memory of each: base + N tensors of one key and their SVDs.
"""

from __future__ import annotations

import torch

from fakemerge.keys import is_linear_weight
from fakemerge.merging.lowrank import (
    SVD_MODE,
    content_seed,
    noise_floor,
    numerical_rank,
    polar,
    span_rank,
    thin_svd,
    truncated_svd,
    truncation_rank,
    vector_noise,
)
from fakemerge.merging.registry import choice, integer, merge_method, number

SCALING = number(1.0)
LOWRANK = choice("auto", "auto", "fusionbench")


def _taus(n: int) -> str:
    return ", ".join(f"τ{i + 1}" for i in range(n))


@merge_method("tsv", alpha=SCALING, lowrank=LOWRANK,
              formula=lambda p, n, weights, densities: f"θ0 + {p['alpha']:g}·tsv_m({_taus(n)})")
def tsv(taus: torch.Tensor, theta0: torch.Tensor, alpha: float, lowrank: str) -> torch.Tensor:
    """TSV-M (tsv_m in its formula): per 2-D tensor, stack each task's top int(k/N) singular triplets,
    orthogonalise the stacked U and Vᵀ by their polar factors, Δ = U⊥ diag(σ) V⊥ᵀ; other tensors the mean;
    θ0 + alpha · Δ."""
    if taus.ndim != 3:
        return alpha * taus.mean(0)
    shape = taus.shape[1:]
    r = int(min(shape) * (1 / len(taus)))
    floor = noise_floor(theta0)
    svds = [thin_svd(tau) for tau in taus]
    ranks = [numerical_rank(sv, shape, floor) for _, sv, _ in svds]
    low = lowrank == "auto" and min(ranks) < r  # a direction TSV-M would take is null
    keep = [min(r, rank) if low else r for rank in ranks]
    us, ss, vhs = ([part[..., :rt] if i == 0 else part[:rt] for rt, part in zip(keep, parts, strict=True)]
                   for i, parts in enumerate(zip(*svds, strict=True)))
    sv = torch.cat(ss)
    if sv.numel() == 0:
        return alpha * torch.zeros_like(taus[0])
    noise = vector_noise(ss, [floor] * len(ss)) if low else 0.0
    u = polar(torch.cat(us, 1), low, noise)
    vh = polar(torch.cat(vhs, 0), low, noise)
    return alpha * ((u * sv) @ vh)


@merge_method("iso_c", scaling=SCALING, lowrank=LOWRANK, aliases={"scaling_factor": "scaling"},
              formula=lambda p, n, weights, densities: f"θ0 + {p['scaling']:g}·iso({_taus(n).replace(', ', ' + ')})")
def iso_c(taus: torch.Tensor, theta0: torch.Tensor, scaling: float, lowrank: str) -> torch.Tensor:
    """Iso-C (iso in its formula): per 2-D tensor, M = Σ τi = U diag(σ) Vᵀ, Δ = mean(σ) · U Vᵀ (the spectrum
    flattened); other tensors the mean; θ0 + scaling · Δ."""
    if taus.ndim != 3:
        return scaling * taus.mean(0)
    m = taus.sum(0)
    u, sv, vh = thin_svd(m)
    floor = noise_floor(theta0)
    if lowrank == "auto" and numerical_rank(sv, m.shape, len(taus) * floor) < sv.numel():
        k = span_rank(taus, floor)
        u, sv, vh = u[:, :k], sv[:k], vh[:k]
    delta = sv.mean() * (u @ vh) if sv.numel() else torch.zeros_like(m)
    return scaling * delta


@merge_method("iso_cts", common_fraction=number(0.8, 0, 1), scaling=SCALING, lowrank=LOWRANK,
              aliases={"scaling_factor": "scaling", "common_space_fraction": "common_fraction"},
              formula=lambda p, n, weights, densities:
              f"θ0 + {p['scaling']:g}·iso_cts_{p['common_fraction']:g}({_taus(n)})")
def iso_cts(taus: torch.Tensor, theta0: torch.Tensor, common_fraction: float, scaling: float,
            lowrank: str) -> torch.Tensor:
    """Iso-CTS: per 2-D tensor, a common space (top-c directions of Σ τi) plus n = (k − c)/N task-specific
    directions per task (from τi with the common left space projected out), orthogonalised by polar factors,
    every direction given the mean singular value; other tensors the mean; θ0 + scaling · Δ. The sizes:
    k − c = round((k − int(k · common_fraction))/N) · N (Python's round), lowered by N if that exceeds k."""
    if taus.ndim != 3:
        return scaling * taus.mean(0)
    auto, t, shape = lowrank == "auto", len(taus), taus.shape[1:]
    m = taus.sum(0)
    u, sv, vh = thin_svd(m)
    k = min(shape)
    floor = noise_floor(theta0)
    if auto and numerical_rank(sv, shape, t * floor) < k:
        k = span_rank(taus, floor)
    task_space = round((k - int(k * common_fraction)) / t) * t  # divisible by N, FusionBench's rounding ...
    if task_space > k:  # ... which can leave a negative common size (then its slicing drops directions)
        task_space -= t
    c, n = k - task_space, task_space // t
    uc, sc, vhc = u[:, :c], sv[:c], vh[:c]
    svds = [thin_svd(tau - uc @ (uc.T @ tau)) for tau in taus]
    ranks = [numerical_rank(st, shape, floor) for _, st, _ in svds]
    low = auto and (k < min(shape) or min(ranks) < n)  # a direction Iso-CTS would take is null
    keep = [min(n, rank) if low else n for rank in ranks]
    us, ss, vhs = ([part[..., :nt] if i == 0 else part[:nt] for nt, part in zip(keep, parts, strict=True)]
                   for i, parts in enumerate(zip(*svds, strict=True)))
    sv_all = torch.cat([*ss, sc])
    if sv_all.numel() == 0:
        return scaling * torch.zeros_like(m)
    noise = vector_noise([*ss, sc], [floor] * t + [t * floor]) if low else 0.0
    u_all = polar(torch.cat([*us, uc], 1), low, noise)
    vh_all = polar(torch.cat([*vhs, vhc], 0), low, noise)
    return scaling * (sv_all.mean() * (u_all @ vh_all))


def _cart_formula(p: dict, n: int, weights: None, densities: None) -> str:
    left, right = ("⌊", "⌋") if p["rank_round"] == "down" else ("⌈", "⌉")
    r = f"{left}{p['rank_ratio']:g}·min(m, n){right}"
    return f"θ_avg + {p['scaling']:g}·Σ svd_r(τi − τ_avg) over τ1…τ{n}, r = {r} on attention/MLP weights"


@merge_method("cart", formula=_cart_formula, rank_ratio=number(0.1, 0, 1, lo_open=True), scaling=SCALING,
              seed=integer(0, 0), rank_round=choice("down", "down", "up"), svd=SVD_MODE)
def cart(key: str, taus: torch.Tensor, fingerprints: list[str], rank_ratio: float, scaling: float, seed: int,
         rank_round: str, svd: str) -> torch.Tensor:
    """CART: θ_avg + scaling · Σ SVD_r(θi − θ_avg), r = rank_ratio · min(m, n) rounded down as CART's code
    does (`rank_round="up"`: ⌈·⌉), for attention/MLP linear weights; other tensors θ_avg (their centred task
    vectors sum to zero). Randomized truncations are seeded by (seed, specialist content, key). The default
    ratio and scaling are provisional."""
    mean = taus.mean(0)
    if not is_linear_weight(key, mean):
        return mean
    rank = truncation_rank(mean.shape, rank_ratio, rank_round)
    factors = [truncated_svd(tau - mean, rank, content_seed(seed, fp, key), svd)
               for fp, tau in zip(fingerprints, taus, strict=True)]
    lefts, rights = torch.cat([f[0] for f in factors], 1), torch.cat([f[1] for f in factors], 0)
    return mean.addmm(lefts, rights, alpha=scaling)  # mean + scaling · Σ L_i R_i in one product
