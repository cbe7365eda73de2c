"""Where the detector looks: Grad-CAM on the patch tokens entering the last transformer layer.

Why not the last layer's output: the score reads only the CLS token of that output, so its patch tokens get
no gradient. The tokens *entering* the last layer are what the CLS token attends to there.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from fakemerge.models.detector import Detector


def gradcam(detector: Detector, pixels: torch.Tensor) -> np.ndarray:
    """(B, g, g) maps in [0, 1] of evidence for "fake" (g = image_size / patch_size)."""
    detector.eval()
    with torch.enable_grad():
        out = detector.backbone(pixel_values=pixels, output_hidden_states=True)
        tokens = out.hidden_states[-2]  # input of the last encoder layer: (B, 1 + g*g, D)
        logits = detector.head(out.pooler_output)
        evidence = (logits[:, 1] - logits[:, 0]).sum()
        (grad,) = torch.autograd.grad(evidence, tokens)
    patches, grads = tokens[:, 1:].detach(), grad[:, 1:]
    cam = torch.relu((patches * grads.mean(1, keepdim=True)).sum(-1))  # (B, g*g)
    g = int(round(cam.shape[1] ** 0.5))
    cam = cam.reshape(-1, g, g)
    peak = cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return (cam / peak).cpu().numpy()


def overlay(image_rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The map upsampled onto the image as a JET colour overlay (RGB uint8)."""
    h, w = image_rgb.shape[:2]
    up = cv2.resize(cam.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    colour = cv2.cvtColor(cv2.applyColorMap((up * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return (image_rgb.astype(np.float32) * (1 - alpha) + colour.astype(np.float32) * alpha).astype(np.uint8)
