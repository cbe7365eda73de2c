"""How an RGB crop becomes a model's input — part of the model, stored in its file, used everywhere.

A detector only works on inputs prepared as in its training: DeepfakeBench/DF40 CLIP detectors were trained
with mean = std = 0.5, fakemerge's with CLIP's statistics. Train, eval, detect and serve all build inputs
through `to_input` with the model's own `Preprocessing`, never with constants of their own. `PRESETS` names
what each origin used (DeepfakeBench's CLIP and Effort detector configs, the data pipeline of Effort's
UniversalFakeDetect code); merging specialists prepared differently is refused
(`common_preprocessing`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch

from fakemerge.errors import InputError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# auto: area when shrinking, bicubic when enlarging (what fakemerge models are trained with);
# center_crop: no interpolation — images smaller than `size` are tiled, then the centre size×size is cut
# (Effort's GenImage/Chameleon test transform; it tiles below 256 px, which differs only for 224–255 px).
# (cv2 interpolation names: cv2 is imported when an image is resized, not by every user of a model's metadata.)
RESIZE_MODES = {"auto": None, "bicubic": "INTER_CUBIC", "bilinear": "INTER_LINEAR", "area": "INTER_AREA",
                "center_crop": None}
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Preprocessing:
    """Resize to `size` × `size` with `resize`, scale to [0, 1], subtract `mean`, divide by `std` (RGB)."""

    size: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resize: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise InputError(f"preprocessing: size must be a positive integer, got {self.size!r}")
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise InputError(f"preprocessing: {name} needs 3 values (R, G, B), got {len(value)}")
            object.__setattr__(self, name, value)
        if any(v <= 0 for v in self.std):
            raise InputError(f"preprocessing: std must be positive, got {list(self.std)}")
        if self.resize not in RESIZE_MODES:
            raise InputError(f"preprocessing: resize {self.resize!r} is not one of {', '.join(RESIZE_MODES)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        return {**d, "mean": list(self.mean), "std": list(self.std)}

    def describe(self) -> str:
        how = "centre crop (tiled if smaller)" if self.resize == "center_crop" else f"{self.resize} resize"
        return f"{how} to {self.size}x{self.size}, mean {_short(self.mean)}, std {_short(self.std)}"

    @classmethod
    def from_dict(cls, d: Mapping, source: str) -> Preprocessing:
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(f"{source}: unknown preprocessing field(s) {unknown} "
                             f"(known: {', '.join(cls.__dataclass_fields__)})")
        if "size" not in d:
            raise InputError(f"{source}: preprocessing has no 'size'")
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise InputError(f"{source}: preprocessing {dict(d)}: {e}") from None


# What each origin trained with; the size is always the backbone's input size.
PRESETS = {
    "fakemerge": {"mean": CLIP_MEAN, "std": CLIP_STD, "resize": "auto"},
    "deepfakebench": {"mean": HALF, "std": HALF, "resize": "bicubic"},  # DeepfakeBench / DF40 CLIP
    "effort": {"mean": CLIP_MEAN, "std": CLIP_STD, "resize": "bicubic"},  # Effort in DeepfakeBench
    "effort-ufd": {"mean": CLIP_MEAN, "std": CLIP_STD, "resize": "center_crop"},  # Effort GenImage/Chameleon
}


def preset(name: str, size: int) -> Preprocessing:
    if name not in PRESETS:
        raise InputError(f"--preprocessing {name}: unknown (choose from {', '.join(PRESETS)})")
    return Preprocessing(size=size, **PRESETS[name])


def common_preprocessing(models: list[tuple[str, Preprocessing]]) -> Preprocessing:
    """The one preprocessing of several models (name, preprocessing); models trained on inputs prepared
    differently cannot be merged into one, so a difference is an error naming both."""
    first_name, first = models[0]
    for name, prep in models[1:]:
        if prep != first:
            raise InputError(f"{name}: its preprocessing ({prep.describe()}) differs from {first_name}'s "
                             f"({first.describe()}); models trained on differently prepared inputs cannot be "
                             "merged into one")
    return first


def _short(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def _tile_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    if h < size or w < size:
        image = np.tile(image, (-(-size // h), -(-size // w), 1))
        h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return image[top:top + size, left:left + size]


def to_input(image_rgb: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """HxWx3 uint8 RGB -> 3xSxS float32, normalised as the model was trained."""
    h, w = image_rgb.shape[:2]
    size = prep.size
    if prep.resize == "center_crop":
        image_rgb = _tile_center_crop(image_rgb, size)
    elif (h, w) != (size, size):
        import cv2

        name = RESIZE_MODES[prep.resize] or ("INTER_AREA" if min(h, w) > size else "INTER_CUBIC")
        image_rgb = cv2.resize(image_rgb, (size, size), interpolation=getattr(cv2, name))
    mean, std = np.asarray(prep.mean, np.float32), np.asarray(prep.std, np.float32)
    x = (image_rgb.astype(np.float32) / 255.0 - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def batch_inputs(images: list[np.ndarray], prep: Preprocessing) -> torch.Tensor:
    return torch.from_numpy(np.stack([to_input(im, prep) for im in images]))
