"""Forgery-aware layer masking (FMSD, Zhang et al., arXiv 2601.01041): score candidate layers by the bias–variance
of their per-batch gradients and fine-tune only the top ones; the rest stay exactly as pretrained.

GSNR of layer l over B probe batches with gradients g⁽ᵇ⁾:  μ = mean_b g⁽ᵇ⁾,  σ² = mean_b ‖g⁽ᵇ⁾ − μ‖²_F,
s_l = ‖μ‖²_F / (σ² + ε). A high score means the layer receives a consistent forgery signal rather than
batch noise. Alternatives kept measurable: "gradnorm" (mean_b ‖g⁽ᵇ⁾‖_F), "random", "all".
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from fakemerge.io import save_figure
from fakemerge.models.subspace import SubspaceLinear

SCORES = ("gsnr", "gradnorm", "random", "all")
LossFn = Callable[[nn.Module, object], torch.Tensor]


def _scored_tensors(module: nn.Module) -> list[torch.Tensor]:
    """A plain Linear is scored by its weight; a SubspaceLinear (re-scoring) by its artifact parameters."""
    if isinstance(module, SubspaceLinear):
        return [module.U, module.s, module.V]
    return [module.weight]


def gradient_scores(model: nn.Module, names: Sequence[str], loss_fn: LossFn, batches: Iterable,
                    score: str = "gsnr", *, eps: float = 1e-30, seed: int = 0) -> dict[str, float]:
    """Score the modules `names` of `model`; `loss_fn(model, batch)` gives the loss of one probe batch.

    Gradients are taken with torch.autograd.grad (no `.grad` is touched); the scored tensors' requires_grad
    flags are restored afterwards. Per-layer mean and spread use Welford's update (one extra copy of each
    scored tensor, numerically stable).
    """
    if score not in SCORES:
        raise ValueError(f"unknown layer score {score!r}; choose from {', '.join(SCORES)}")
    if score == "all":
        return {n: 1.0 for n in names}
    if score == "random":
        g = torch.Generator().manual_seed(seed)
        values = torch.rand(len(names), generator=g, dtype=torch.float64).tolist()
        return dict(zip(names, values, strict=True))
    groups = [_scored_tensors(model.get_submodule(n)) for n in names]
    flat = [t for group in groups for t in group]
    flags = [t.requires_grad for t in flat]
    mean = [torch.zeros_like(t) for t in flat]
    m2 = [0.0] * len(names)
    norms = [0.0] * len(names)
    count = 0
    try:
        for t in flat:
            t.requires_grad_(True)
        for batch in batches:
            grads = torch.autograd.grad(loss_fn(model, batch), flat, allow_unused=True)
            count += 1
            i = 0
            for layer, group in enumerate(groups):
                sq = 0.0
                for _ in group:
                    g = torch.zeros_like(mean[i]) if grads[i] is None else grads[i].detach()
                    delta = g - mean[i]
                    mean[i] += delta / count
                    m2[layer] += float((delta * (g - mean[i])).sum())
                    sq += float((g * g).sum())
                    i += 1
                norms[layer] += math.sqrt(sq)
    finally:
        for t, flag in zip(flat, flags, strict=True):
            t.requires_grad_(flag)
    if count < 2:
        raise ValueError("layer scoring needs at least 2 probe batches")
    if score == "gradnorm":
        return {n: norms[k] / count for k, n in enumerate(names)}
    out, i = {}, 0
    for layer, (name, group) in enumerate(zip(names, groups, strict=True)):
        mu2 = sum(float((mean[i + j] ** 2).sum()) for j in range(len(group)))
        i += len(group)
        out[name] = mu2 / (max(m2[layer], 0.0) / count + eps)
    return out


def select_layers(scores: Mapping[str, float], ratio: float | None = 0.5,
                  top_k: int | None = None) -> list[str]:
    """The top-k layers (or the top ⌈ratio·L⌉, at least one) by score, returned in the scores' order.

    Ties keep the scores' order, so "all" with ratio 1 selects everything and the choice is deterministic.
    """
    names = list(scores)
    if top_k is None:
        if ratio is None or not 0 < ratio <= 1:
            raise ValueError(f"layer ratio must be in (0, 1], got {ratio}")
        top_k = max(1, math.ceil(ratio * len(names) - 1e-9))
    if not 1 <= top_k <= len(names):
        raise ValueError(f"top-k must be in [1, {len(names)}], got {top_k}")
    ranked = sorted(range(len(names)), key=lambda i: -scores[names[i]])[:top_k]
    return [names[i] for i in sorted(ranked)]


def plot_layer_scores(scores: Mapping[str, float], selected: Iterable[str], path: str | os.PathLike,
                      title: str = "layer scores") -> None:
    """Bar chart of the layer scores (log scale when they span decades), selected layers highlighted."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, safe in servers

    chosen = set(selected)
    names = list(scores)
    values = [scores[n] for n in names]
    short = [n.removeprefix("vision_model.").removeprefix("encoder.layers.") for n in names]
    fig = Figure(figsize=(max(6.0, 0.18 * len(names) + 2), 4))
    ax = fig.subplots()
    ax.bar(range(len(names)), values, color=["tab:red" if n in chosen else "tab:gray" for n in names])
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 100:
        ax.set_yscale("log")
    ax.set_xticks(range(len(names)), short, rotation=90, fontsize=6)
    ax.set_ylabel("score")
    ax.set_title(f"{title} (red: selected, {len(chosen)}/{len(names)})")
    fig.tight_layout()
    save_figure(fig, path)
