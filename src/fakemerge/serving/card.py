"""The model card `/v1/model` shows: what the model is, read from its file's metadata.

Absolute paths in the metadata (where it was trained or merged) are cut to their last component so the
card does not publish the server's directory layout. A model trained only on ForgeryLab, the embedded
synthetic benchmark, gets a caution: its scores say nothing about real photos or videos.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fakemerge.lab.generate import DATASET
from fakemerge.models.backbone import config_to_dict, tiny_config
from fakemerge.models.detector import Detector, ModelMeta
from fakemerge.serving.settings import ServeSettings

_ABSOLUTE = re.compile(r"^(/|~|[A-Za-z]:[\\/]|\\\\)")
_SHAPE = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
          "patch_size")


def public(value: Any) -> Any:
    """`value` with every absolute path string reduced to its file name (recursively)."""
    if isinstance(value, str):
        return Path(value.replace("\\", "/")).name if _ABSOLUTE.match(value) else value
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items()}
    if isinstance(value, list):
        return [public(v) for v in value]
    return value


def caution(meta: ModelMeta) -> str | None:
    """Why this model's scores mean little on real media, from what its metadata records; None if nothing."""
    data = str(meta.recipe.get("data") or "")
    if Path(data.replace("\\", "/")).stem == DATASET:
        return (f"trained on {DATASET}, fakemerge's embedded synthetic benchmark (recipe data {public(data)}): "
                "its scores say nothing about real photos or videos")
    lab = config_to_dict(tiny_config())
    if meta.backbone_config and all(meta.backbone_config.get(k) == lab[k] for k in _SHAPE):
        return (f"built on the {lab['image_size']} px tiny ViT that {DATASET} (fakemerge's embedded synthetic "
                "benchmark) pretrains: its scores say nothing about real photos or videos")
    return None


def model_card(path: Path, meta: ModelMeta, detector: Detector, settings: ServeSettings) -> dict:
    threshold = detector.threshold
    return {
        "name": path.name, "kind": meta.kind, "method": meta.method, "families": meta.families,
        "base": public(meta.base_id), "base_hash": meta.base_hash, "recipe": public(meta.recipe),
        "preprocessing": detector.preprocessing.to_dict(), "threshold": threshold,
        "calibrated": threshold is not None,
        "threshold_note": ("calibrated decision threshold" if threshold is not None else
                           "uncalibrated: verdicts use P(fake) >= 0.5"),
        "image_size": detector.config.image_size, "version": meta.version, "caution": caution(meta),
        "defaults": {"frames": settings.frames, "agg": settings.agg, "topk": settings.topk,
                     "face": settings.face, "no_face": settings.no_face},
        "limits": {"max_upload_bytes": settings.max_upload_bytes, "max_pixels": settings.max_pixels,
                   "max_frames": settings.max_frames, "timeout_s": settings.timeout_s,
                   "workers": settings.workers, "queue": settings.queue},
    }
