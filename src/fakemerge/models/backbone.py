"""CLIP vision towers: from a Hugging Face id, an HF-format directory, a fakemerge file, or a tiny config.

Key names are `fakemerge.keys`' business: `load_backbone_state` accepts either spelling.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from fakemerge.errors import InputError
from fakemerge.io.safetensors import tensors_sha256
from fakemerge.keys import PREFIX, canonical, strip_prefix

CONFIG_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_channels", "image_size", "patch_size", "hidden_act", "layer_norm_eps", "projection_dim")


def tiny_config(image_size: int = 64, patch_size: int = 8, hidden_size: int = 128, num_hidden_layers: int = 4,
                num_attention_heads: int = 4, intermediate_size: int = 512) -> CLIPVisionConfig:
    """The ForgeryLab-sized CLIP ViT (0.83 M parameters at the defaults)."""
    return CLIPVisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                            num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                            intermediate_size=intermediate_size, projection_dim=hidden_size)


def config_to_dict(config: CLIPVisionConfig) -> dict:
    return {k: getattr(config, k) for k in CONFIG_FIELDS}


def config_from_dict(d: Mapping) -> CLIPVisionConfig:
    return CLIPVisionConfig(**{k: v for k, v in d.items() if k in CONFIG_FIELDS})


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
    model.load_state_dict(fixed, strict=True)


def backbone_hash(model: CLIPVisionModel) -> str:
    return tensors_sha256(backbone_state(model))


def load_base(spec: str | os.PathLike) -> tuple[CLIPVisionModel, str]:
    """A pretrained backbone from an HF id, an HF directory or a fakemerge `.safetensors` file.

    Returns the model and the id to record in metadata. Offline use: set HF_HUB_OFFLINE=1 once weights
    are local; with no network, a hub id that is not cached fails with a clear error.
    """
    spec = str(spec)
    path = Path(spec)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise InputError(f"{spec}: base model file not found")
        from fakemerge.models.detector import load_detector

        detector, meta = load_detector(path)
        return detector.backbone, meta.base_id or spec
    if path.exists() and not (path / "config.json").is_file():
        raise InputError(f"{spec}: not a Hugging Face model directory (no config.json)")
    try:
        model = CLIPVisionModel.from_pretrained(spec)
    except OSError as e:
        raise InputError(f"{spec}: cannot load a CLIP vision tower ({str(e).splitlines()[0]})") from None
    return model.float().eval(), spec
