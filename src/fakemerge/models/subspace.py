"""SVD subspace fine-tuning (Effort / FMSD): a pretrained Linear split into a frozen semantic part and
K small trainable artifact subspaces; injected by module-name pattern (PEFT-style), folded back by `densify`.

For W ∈ R^{m×n}, p = min(m, n), thin SVD W = U diag(S) Vᵀ (float64). The last K·d singular triplets are
the trainable tail; subspace k owns columns k·d … (k+1)·d−1 of the stacked U (m×Kd), s (Kd), V (n×Kd).
The frozen part is W_s = W − U_t diag(S_t) V_tᵀ (= the top p − K·d triplets), so at step 0
    y = x W_sᵀ + ((x V) ⊙ s) Uᵀ + b
equals the pretrained layer to float32 rounding. K = d = 1 on every attention projection is Effort.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")
MLP = ("mlp.fc1", "mlp.fc2")


def tail_triplets(w: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k smallest singular triplets (U_t, s_t, V_t) of w, singular values descending (as in the SVD).

    Computed from the eigenvectors of the smaller Gram matrix (float64), 2–4× faster than a full SVD on CPU
    (ViT-L/14 has 96 attention matrices); U_t = W V_t / s_t. When the tail is too close to zero for that
    division, falls back to the full SVD.
    """
    w = w.double()
    wide = w.shape[0] < w.shape[1]
    a = w.T if wide else w  # tall: the Gram aᵀa is the small side
    evals, evecs = torch.linalg.eigh(a.T @ a)  # ascending
    s = evals[:k].clamp_min(0).sqrt().flip(0)
    if s[-1] <= 1e-6 * evals[-1].clamp_min(0).sqrt():
        u, s_all, vh = torch.linalg.svd(w, full_matrices=False)
        return u[:, -k:], s_all[-k:], vh[-k:].T
    v = evecs[:, :k].flip(1)
    u = (a @ v) / s
    return (v, s, u) if wide else (u, s, v)


class SubspaceLinear(nn.Module):
    """Frozen semantic weight (buffer) + K trainable rank-d artifact subspaces (Parameters U, s, V)."""

    def __init__(self, linear: nn.Linear, subspaces: int = 1, rank: int = 1, keep_basis: bool = False):
        super().__init__()
        w = linear.weight.detach().double()
        m, n = w.shape
        kd = subspaces * rank
        if subspaces < 1 or rank < 1 or kd >= min(m, n):
            raise ValueError(f"subspaces·rank = {subspaces}·{rank} must be in [1, {min(m, n) - 1}] "
                             f"for a {m}×{n} weight")
        if keep_basis:
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            r = s.numel() - kd
            u_t, s_t, v_t = u[:, r:], s[r:], vh[r:].T
        else:
            u_t, s_t, v_t = tail_triplets(w, kd)
        dtype = linear.weight.dtype
        self.subspaces, self.rank = subspaces, rank
        self.in_features, self.out_features = n, m
        self.register_buffer("frozen_weight", (w - (u_t * s_t) @ v_t.T).to(dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.U = nn.Parameter(u_t.to(dtype).contiguous())
        self.s = nn.Parameter(s_t.to(dtype).clone())
        self.V = nn.Parameter(v_t.to(dtype).contiguous())
        # Reference quantities for the spectral losses (fixed at initialisation).
        self.register_buffer("s0", s_t.to(dtype).clone())
        self.register_buffer("weight_norm2", (w * w).sum().to(dtype))
        self.register_buffer("frozen_norm2", ((w * w).sum() - (s_t**2).sum()).to(dtype))
        if keep_basis:  # semantic singular vectors, only needed by the full orthonormality loss
            self.register_buffer("semantic_U", u[:, :r].to(dtype).contiguous())
            self.register_buffer("semantic_V", vh[:r].T.to(dtype).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.linear(x, self.frozen_weight, self.bias)
        # The artifact branch carries the whole update and is small next to the frozen part: autocast is off
        # for it, so it runs in the factors' dtype (float32 under mixed precision; it costs only rank K·d)
        # and bf16 / fp16 rounding does not swamp it. Its float32 output keeps the residual stream float32.
        with torch.autocast(x.device.type, enabled=False):
            low = ((x.to(self.V.dtype) @ self.V) * self.s) @ self.U.T
        return y + low

    def delta(self) -> torch.Tensor:
        """The trained low-rank part U diag(s) Vᵀ (rank ≤ K·d)."""
        return (self.U * self.s) @ self.V.T

    def dense_weight(self) -> torch.Tensor:
        return self.frozen_weight + self.delta()

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, subspaces={self.subspaces}, rank={self.rank}"


def matches(name: str, patterns: Iterable[str]) -> bool:
    """PEFT rule: a module matches a pattern if its name equals it or ends with '.' + pattern."""
    return any(name == p or name.endswith("." + p) for p in patterns)


def linear_names(model: nn.Module, patterns: Sequence[str] = ATTENTION) -> list[str]:
    """Names of the nn.Linear modules matching `patterns`, in module order."""
    return [n for n, mod in model.named_modules() if type(mod) is nn.Linear and matches(n, patterns)]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def inject_subspaces(model: nn.Module, patterns: Sequence[str] = ATTENTION, *, subspaces: int = 1,
                     rank: int = 1, layers: Iterable[str] | None = None,
                     keep_basis: bool = False) -> list[str]:
    """Replace matching nn.Linear modules (restricted to `layers` if given) by SubspaceLinear, in place.

    Returns the replaced module names. Freezing the rest of the model is the trainer's job; the frozen
    parts of a SubspaceLinear are buffers, so its only parameters are the artifact subspaces.
    """
    names = linear_names(model, patterns)
    if layers is not None:
        wanted = set(layers)
        unknown = wanted - set(names)
        if unknown:
            raise ValueError(f"layers not among the matching linears: {sorted(unknown)[:3]}")
        names = [n for n in names if n in wanted]
    for name in names:
        _replace(model, name, SubspaceLinear(model.get_submodule(name), subspaces, rank, keep_basis))
    return names


def subspace_layers(model: nn.Module) -> dict[str, SubspaceLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SubspaceLinear)}


@torch.no_grad()
def densify(model: nn.Module) -> nn.Module:
    """Fold every SubspaceLinear back into a plain nn.Linear with weight Ŵ (bias kept); in place."""
    for name, layer in subspace_layers(model).items():
        w = layer.frozen_weight.double() + (layer.U.double() * layer.s.double()) @ layer.V.double().T
        dense = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                          device=w.device, dtype=layer.frozen_weight.dtype)
        dense.weight.copy_(w)
        if layer.bias is not None:
            dense.bias.copy_(layer.bias)
        dense.weight.requires_grad_(False)
        if dense.bias is not None:
            dense.bias.requires_grad_(False)
        _replace(model, name, dense)
    return model


# --- losses (design, spec fmsd.md), each averaged over the decomposed layers -------------------------

def _mean(values: list[torch.Tensor], model: nn.Module) -> torch.Tensor:
    if not values:
        return torch.zeros((), device=next(model.parameters()).device)
    return torch.stack(values).mean()


def _cross_block_norm2(a: torch.Tensor, k: int, d: int) -> torch.Tensor:
    """Σ_{i<j} ‖A_iᵀA_j‖²_F for the column blocks A_k of width d."""
    g = a.T @ a
    blocks = g.reshape(k, d, k, d).diagonal(dim1=0, dim2=2)  # (d, d, k): the diagonal blocks
    return ((g * g).sum() - (blocks * blocks).sum()) / 2


def orthogonality_loss(model: nn.Module) -> torch.Tensor:
    """L_orth = Σ_{i<j} ‖U_iᵀU_j‖²_F + ‖V_iᵀV_j‖²_F between artifact subspaces (0 when K = 1)."""
    terms = [_cross_block_norm2(layer.U, layer.subspaces, layer.rank)
             + _cross_block_norm2(layer.V, layer.subspaces, layer.rank)
             for layer in subspace_layers(model).values()]
    return _mean(terms, model)


TAIL_FLOOR = 1e-8  # a tail holding less than this fraction of ‖W‖² is normalised by TAIL_FLOOR · ‖W‖²


def _tail_energy0(layer: SubspaceLinear) -> torch.Tensor:
    return torch.maximum((layer.s0**2).sum(), TAIL_FLOOR * layer.weight_norm2)


def spectral_loss(model: nn.Module) -> torch.Tensor:
    """L_spec = Σ_k ((‖s_k‖² − ‖s_k⁽⁰⁾‖²) / E₀)², E₀ = Σ_k ‖s_k⁽⁰⁾‖² (the tail's initial energy): each artifact
    subspace keeps its share of the spectrum's energy.

    Normalised by the tail's own energy, not by ‖W‖⁴: the tail holds ~1e-4 of a pretrained weight's energy,
    so with ‖W‖⁴ the loss was ~1e-8 when every subspace's energy doubled and λ had no effect; now doubling
    every one of K equal subspaces costs 1/K.
    """
    terms = []
    for layer in subspace_layers(model).values():
        k, d = layer.subspaces, layer.rank
        diff = (layer.s**2).reshape(k, d).sum(1) - (layer.s0**2).reshape(k, d).sum(1)
        terms.append(((diff / _tail_energy0(layer)) ** 2).sum())
    return _mean(terms, model)


@torch.no_grad()
def tail_energy_ratio(model: nn.Module) -> float | None:
    """Mean over decomposed layers of Σ‖s_k‖² / Σ‖s_k⁽⁰⁾‖²: how far training moved the artifact spectrum
    (1 = unchanged), the quantity the spectral loss holds; None without decomposed layers."""
    ratios = [float((layer.s.double() ** 2).sum() / _tail_energy0(layer).double())
              for layer in subspace_layers(model).values()]
    return sum(ratios) / len(ratios) if ratios else None


def orthonormality_loss(model: nn.Module) -> torch.Tensor:
    """Effort's ‖ÛᵀÛ − I‖²_F + ‖V̂ᵀV̂ − I‖²_F with Û = [U_semantic, U], up to the constant, gradient-free
    ‖U_semanticᵀU_semantic − I‖² term. Needs layers injected with keep_basis=True."""
    terms = []
    for name, layer in subspace_layers(model).items():
        if not hasattr(layer, "semantic_U"):
            raise ValueError(f"{name}: orthonormality loss needs inject_subspaces(..., keep_basis=True)")
        eye = torch.eye(layer.U.shape[1], device=layer.U.device, dtype=layer.U.dtype)
        term = torch.zeros((), device=layer.U.device, dtype=layer.U.dtype)
        for basis, a in ((layer.semantic_U, layer.U), (layer.semantic_V, layer.V)):
            term = term + 2 * ((basis.T @ a) ** 2).sum() + ((a.T @ a - eye) ** 2).sum()
        terms.append(term)
    return _mean(terms, model)


def energy_loss(model: nn.Module) -> torch.Tensor:
    """|‖Ŵ‖²_F − ‖W‖²_F| / ‖W‖²_F without building Ŵ: ‖W_s‖² + 2 tr(W_sᵀ U S Vᵀ) + ‖U S Vᵀ‖²."""
    terms = []
    for layer in subspace_layers(model).values():
        u, s, v = layer.U, layer.s, layer.V
        cross = (s * torch.diagonal(u.T @ layer.frozen_weight @ v)).sum()
        low = ((u.T @ u) * (s[:, None] * (v.T @ v) * s[None, :])).sum()
        norm2 = layer.frozen_norm2 + 2 * cross + low
        terms.append((norm2 - layer.weight_norm2).abs() / layer.weight_norm2)
    return _mean(terms, model)
