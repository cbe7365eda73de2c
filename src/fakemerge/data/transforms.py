"""Image -> model input: resize to the backbone's size, CLIP mean/std normalisation, NCHW float32."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from fakemerge.models.backbone import CLIP_MEAN, CLIP_STD

_MEAN = np.asarray(CLIP_MEAN, np.float32)
_STD = np.asarray(CLIP_STD, np.float32)


def to_input(image_rgb: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 RGB -> 3xSxS float32 normalised (area resize down, cubic up)."""
    h, w = image_rgb.shape[:2]
    if (h, w) != (size, size):
        interp = cv2.INTER_AREA if min(h, w) > size else cv2.INTER_CUBIC
        image_rgb = cv2.resize(image_rgb, (size, size), interpolation=interp)
    x = (image_rgb.astype(np.float32) / 255.0 - _MEAN) / _STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def batch_inputs(images: list[np.ndarray], size: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([to_input(im, size) for im in images]))
