"""CLIP vision towers: configs (tiny ones for ForgeryLab and tests, or read from tensor shapes) and state dicts.

Key names are `fakemerge.keys`' business: `load_backbone_state` accepts either spelling. Where a backbone
comes from (a file, a directory, a hub id) is `fakemerge.models.loading`'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from fakemerge.errors import InputError
from fakemerge.io.safetensors import tensors_sha256
from fakemerge.keys import PREFIX, canonical, strip_prefix

if TYPE_CHECKING:  # transformers imports in ~0.5 s and its model classes in seconds: only where used
    from transformers import CLIPVisionConfig, CLIPVisionModel

CONFIG_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_channels", "image_size", "patch_size", "hidden_act", "layer_norm_eps", "projection_dim")
# What tensor shapes tell about a CLIP vision config; heads and activation they cannot tell.
SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "patch_size", "image_size")


def tiny_config(image_size: int = 64, patch_size: int = 8, hidden_size: int = 128, num_hidden_layers: int = 4,
                num_attention_heads: int = 4, intermediate_size: int = 512) -> CLIPVisionConfig:
    """The ForgeryLab-sized CLIP ViT (0.83 M parameters at the defaults)."""
    return config_from_dict(dict(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                                 num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                                 intermediate_size=intermediate_size, projection_dim=hidden_size))


def config_to_dict(config: CLIPVisionConfig) -> dict:
    return {k: getattr(config, k) for k in CONFIG_FIELDS}


def config_from_dict(d: Mapping) -> CLIPVisionConfig:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(**{k: v for k, v in d.items() if k in CONFIG_FIELDS})


def infer_config(shapes: Mapping[str, tuple[int, ...]], source: str) -> dict:
    """The CLIP vision config implied by tensor shapes (canonical names). Heads = hidden / 64, as in every
    released CLIP ViT (B/16, L/14); the caller says so, since shapes cannot tell."""
    try:
        patch = shapes[f"{PREFIX}embeddings.patch_embedding.weight"]
        positions = shapes[f"{PREFIX}embeddings.position_embedding.weight"][0]
        fc1 = shapes[f"{PREFIX}encoder.layers.0.mlp.fc1.weight"]
    except KeyError as e:
        raise InputError(f"{source}: not a CLIP vision tower (no {e.args[0]})") from None
    hidden, channels, p = patch[0], patch[1], patch[2]
    grid = math.isqrt(positions - 1)
    layers = len({k.split(".")[3] for k in shapes if k.startswith(f"{PREFIX}encoder.layers.")})
    config = config_to_dict(config_from_dict({}))  # CLIP's own defaults for what shapes cannot tell (act, eps)
    config.update(hidden_size=hidden, intermediate_size=fc1[0], num_hidden_layers=layers,
                  num_attention_heads=max(1, hidden // 64), num_channels=channels, image_size=grid * p,
                  patch_size=p, projection_dim=hidden)
    return config


def backbone_state(model: CLIPVisionModel) -> dict[str, torch.Tensor]:
    """The model's tensors under canonical (prefixed) names."""
    return canonical(model.state_dict())


def load_backbone_state(model: CLIPVisionModel, state: Mapping[str, torch.Tensor]) -> None:
    """Load tensors spelled with or without the prefix into `model` (strict: every key must match)."""
    own = model.state_dict()
    prefixed = next(iter(own)).startswith(PREFIX)
    fixed = canonical(state) if prefixed else strip_prefix(state)
    missing, extra = set(own) - set(fixed), set(fixed) - set(own)
    if missing or extra:
        raise InputError(f"backbone tensors do not match the architecture: missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(extra)[:3]}")
    shapes = [k for k in own if tuple(own[k].shape) != tuple(fixed[k].shape)]
    if shapes:
        k = shapes[0]
        raise InputError(f"tensor {k} has shape {list(fixed[k].shape)}, the architecture needs "
                         f"{list(own[k].shape)}")
    model.load_state_dict(fixed, strict=True)


def build_backbone(config: Mapping, state: Mapping[str, torch.Tensor]) -> CLIPVisionModel:
    """A float32 CLIP vision tower of `config` holding `state` (either key spelling), in eval mode."""
    from transformers import CLIPVisionModel

    model = CLIPVisionModel(config_from_dict(config))
    load_backbone_state(model, state)  # load_state_dict casts into the model's float32 parameters
    return model.float().eval()


def backbone_hash(model: CLIPVisionModel) -> str:
    return tensors_sha256(backbone_state(model))
