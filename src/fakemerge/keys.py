"""The one place that knows how CLIP vision-tower tensors are named.

Hugging Face hub checkpoints (and fakemerge files) spell backbone tensors with the `vision_model.` prefix
(`vision_model.encoder.layers.0.self_attn.q_proj.weight`); recent transformers' `state_dict()` and
`save_pretrained` drop it. Everything that reads, merges or writes tensors goes through these helpers, so
both spellings are accepted and the one given is kept.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

PREFIX = "vision_model."
HEAD_KEYS = ("head.weight", "head.bias")
# Top-level module names of a CLIP vision tower saved without the `vision_model.` prefix.
BARE_ROOTS = frozenset({"embeddings", "encoder", "pre_layrnorm", "post_layernorm"})


def bare(key: str) -> str:
    """The key without the `vision_model.` prefix: the spelling-independent name of a tensor."""
    return key.removeprefix(PREFIX)


def canonical_key(key: str) -> str | None:
    """The `vision_model.`-prefixed name of a backbone tensor, or None for anything else (head, text tower).

    `position_ids` is a non-persistent buffer in recent transformers; old hub files still carry it.
    """
    if key.endswith("position_ids"):
        return None
    if key.startswith(PREFIX):
        return key
    return PREFIX + key if key.split(".", 1)[0] in BARE_ROOTS else None


def canonical(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `vision_model.`-prefixed spelling of a backbone state dict."""
    return {(k if k.startswith(PREFIX) else PREFIX + k): v for k, v in state.items()}


def strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The unprefixed spelling (what `CLIPVisionModel.state_dict()` uses in recent transformers)."""
    return {bare(k): v for k, v in state.items()}


def is_bias_or_norm(key: str) -> bool:
    """Biases and LayerNorm parameters (CLIP spells them `layer_norm1`, `pre_layrnorm`, `post_layernorm`)."""
    name = bare(key)
    return name.endswith("bias") or "norm" in name


def is_linear_weight(key: str, t: torch.Tensor) -> bool:
    """A 2-D weight of an attention or MLP linear: the tensors that R²M and CART truncate to low rank."""
    name = bare(key)
    return t.ndim == 2 and name.endswith(".weight") and ("self_attn." in name or "mlp." in name)
