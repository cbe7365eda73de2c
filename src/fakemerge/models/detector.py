"""Detector = CLIP vision tower + linear head on the pooled output; one `.safetensors` file per model.

File layout: backbone tensors under `vision_model.*` (Hugging Face hub spelling), the head under
`head.weight` / `head.bias`; the header metadata holds a `ModelMeta` (one JSON string per field) under
fakemerge's own marker `fakemerge_format`, and `format: pt` as transformers 4.x requires of every
safetensors file it loads. Files written before 0.2 carried the marker in `format`: still read.
Opening any model path (this format or the field's) is `fakemerge.models.loading`'s job.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from torch import nn

import fakemerge
from fakemerge.errors import InputError
from fakemerge.io.safetensors import save_tensors
from fakemerge.keys import HEAD_KEYS, PREFIX
from fakemerge.models.backbone import backbone_state, build_backbone, config_to_dict
from fakemerge.models.preprocessing import Preprocessing

if TYPE_CHECKING:  # the model classes import in seconds: only where a model is built
    from transformers import CLIPVisionConfig, CLIPVisionModel

FORMAT = "fakemerge.detector/1"
MARKER = "fakemerge_format"


@dataclass
class ModelMeta:
    """What a model file says about itself; enough to rebuild, audit and re-merge it."""

    kind: str = "specialist"  # base | specialist | joint | merged
    method: str | None = None  # training method (full, linear, effort, fmsd), merge method or imported:<format>
    families: list[str] = field(default_factory=list)
    base_id: str | None = None
    base_hash: str | None = None
    backbone_config: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)  # training settings, merge recipe or import source
    extra: dict = field(default_factory=dict)  # e.g. layer-mask scores, validation metrics
    preprocessing: dict = field(default_factory=dict)  # Preprocessing.to_dict(); {}: written before 0.2
    threshold: float | None = None  # the calibrated P(fake) threshold; None: uncalibrated (0.5 is used)
    calibration: dict = field(default_factory=dict)  # how `threshold` was chosen (evaluation/calibration.py)
    version: str = fakemerge.__version__

    def to_header(self) -> dict[str, str]:
        return {"format": "pt", MARKER: FORMAT, **{k: json.dumps(v) for k, v in asdict(self).items()}}

    @classmethod
    def from_header(cls, header: dict[str, str], source: str) -> ModelMeta:
        if not is_fakemerge_header(header):
            raise InputError(f"{source}: not a fakemerge model file (no '{FORMAT}' metadata)")
        names = cls.__dataclass_fields__
        return cls(**{k: json.loads(v) for k, v in header.items() if k in names})

    def preprocessing_for(self, source: str) -> Preprocessing:
        """The stored preprocessing; files written before 0.2 were all trained with CLIP's statistics at the
        backbone's input size, which is what they get."""
        if self.preprocessing:
            return Preprocessing.from_dict(self.preprocessing, source)
        return Preprocessing(size=int(self.backbone_config["image_size"]))


def is_fakemerge_header(header: dict[str, str]) -> bool:
    return FORMAT in (header.get(MARKER), header.get("format"))


class Detector(nn.Module):
    """P(fake) = softmax(head(pooler_output))[:, 1], on inputs made by `preprocessing`; `threshold` is the
    calibrated decision threshold (None: uncalibrated)."""

    def __init__(self, backbone: CLIPVisionModel, preprocessing: Preprocessing | None = None,
                 threshold: float | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.hidden_size, 2)
        self.preprocessing = preprocessing or Preprocessing(size=backbone.config.image_size)
        self.threshold = threshold

    @property
    def config(self) -> CLIPVisionConfig:
        return self.backbone.config

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.backbone(pixel_values=pixel_values).pooler_output

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixel_values))

    @torch.no_grad()
    def predict_proba(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self(pixel_values).softmax(-1)[:, 1]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Backbone (canonical names) + head, as stored in a model file."""
        return {**backbone_state(self.backbone), "head.weight": self.head.weight, "head.bias": self.head.bias}


def save_detector(detector: Detector, path: str | os.PathLike, meta: ModelMeta) -> None:
    """Write the detector atomically; its config, preprocessing and threshold go into `meta`."""
    meta.backbone_config = config_to_dict(detector.config)
    meta.preprocessing = detector.preprocessing.to_dict()
    meta.threshold = detector.threshold
    save_tensors(detector.state_tensors(), path, meta.to_header())


def read_header(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a safetensors file (any, fakemerge's or not)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: model file not found")
    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except Exception as e:  # safetensors raises several types for a corrupt header
        raise InputError(f"{path}: not a readable safetensors file ({e})") from None


def read_meta(path: str | os.PathLike) -> ModelMeta:
    return ModelMeta.from_header(read_header(path), str(path))


def detector_from_tensors(tensors: dict[str, torch.Tensor], meta: ModelMeta, source: str = "model") -> Detector:
    """A Detector of `meta`'s config and preprocessing holding `tensors` (backbone + `head.*`)."""
    missing = [k for k in HEAD_KEYS if k not in tensors]
    if missing:
        raise InputError(f"{source}: has no {missing[0]} (a detector needs a head; this is a backbone)")
    try:
        backbone = build_backbone(meta.backbone_config, {k: v for k, v in tensors.items() if k.startswith(PREFIX)})
    except InputError as e:
        raise InputError(f"{source}: {e}") from None
    detector = Detector(backbone, meta.preprocessing_for(source), meta.threshold)
    head = {"weight": tensors["head.weight"].float(), "bias": tensors["head.bias"].float()}
    if head["weight"].shape != detector.head.weight.shape or head["bias"].shape != detector.head.bias.shape:
        raise InputError(f"{source}: head has shapes {list(head['weight'].shape)}, {list(head['bias'].shape)}; "
                         f"expected {list(detector.head.weight.shape)}, {list(detector.head.bias.shape)}")
    detector.head.load_state_dict(head)
    return detector.float().eval()
