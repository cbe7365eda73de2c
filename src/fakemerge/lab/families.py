"""ForgeryLab's forgery families: each turns a captured real frame into a fake with one family's mechanics.

A forgery happens after the camera sensor (blur, gamma, noise) and before the final JPEG, as in real life;
everything outside the forged region stays the real capture. The mechanics mimic DF40's families:

| family        | seen | mechanics (cue a patch-8 ViT can learn at 64 px)                                       |
|---------------|------|-----------------------------------------------------------------------------------------|
| FS            | yes  | inner face of another identity, rendered at 1/2 resolution (no sensor noise), colour    |
|               |      | mismatched by a per-video gain, pasted with a feathered mask (blending boundary)        |
| FR            | yes  | same identity, new expression; mouth and eyes re-rendered in 4x4 blocks with a          |
|               |      | brightness offset (a seam) — the "re-rendered at lower quality" signature               |
| EFS           | yes  | whole image from a generator: 1/2-resolution render, zero-insertion upsampling with an  |
|               |      | uneven filter (period-2 checkerboard), no sensor noise                                  |
| FE            | yes  | one attribute edited (hair colour, lipstick over the mouth area, or an aged forehead)   |
|               |      | and smoothed inside its region only                                                     |
| FS-poisson    | no   | swap at 3/4 resolution with gradient-domain style blending (no seam, colour transferred)|
| EFS-bilinear  | no   | generator with bilinear upsampling (no checkerboard), mild high-frequency deficit       |

`STRENGTH` holds the difficulty knobs; they were tuned only so that every specialist learns its own family
(AUC >= 0.90) while some specialists fail on other families, never by looking at merge results.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from fakemerge.lab.render import Identity, Pose, feather, random_identity, region_mask, render

SEEN_FAMILIES = ["FS", "FR", "EFS", "FE"]
UNSEEN_FAMILIES = ["FS-poisson", "EFS-bilinear"]
FAMILIES = SEEN_FAMILIES + UNSEEN_FAMILIES

# Difficulty knobs. FS: donor render scale, per-channel colour-gain mismatch (|g-1| in [0.5, 1] x colour),
# mask feather (px). FR: codec block (px), brightness offset of the re-rendered region (0-255), feather.
# EFS: phase-gain difference of the upsampler. FE: smoothing sigma (px), tint amount, wrinkle-row factor.
# Tuning record (scratch runs, small scale, full fine-tuning from the small base, lr 3e-4, 4 epochs, 960 reals
# + 1440 fakes, test AUC on 400 + 400): FS colour 0.12 -> 0.887, 0.18 -> 0.94; FE (smooth, colour) (1.3, 0.35)
# -> 0.68, (2.5, 1.0) -> 0.86 (forehead edits 0.72), + wrinkle 0.6 and forehead tint 0.85 -> 0.95. FR and EFS
# at their values: 0.97 and 1.00. Later (demo at batch 32 x 3 epochs): FE lips edits were the weakest (test
# AUC 0.89 at seed 0, 0.62 at seed 1); editing the whole mouth area instead of the lips alone raised FE's
# validation AUC at both seeds (0.935 -> 0.952, 0.787 -> 0.812); a lipstick colour mix (0.6 towards plum,
# wine or pink) lowered it (0.862, 0.768). No merge result was looked at.
STRENGTH: dict[str, dict[str, float]] = {
    "FS": {"donor_scale": 0.5, "colour": 0.18, "feather": 1.0},
    "FR": {"block": 4, "brightness": 14.0, "feather": 0.6},
    "EFS": {"checker": 0.03},
    "FE": {"smooth": 2.5, "colour": 1.0, "wrinkle": 0.6},
    "FS-poisson": {"donor_scale": 0.75, "feather": 2.5, "low_pass": 3.0},
    "EFS-bilinear": {"scale": 0.5},
}


@dataclass(frozen=True)
class VideoPlan:
    """What stays fixed across a fake video's frames (temporal coherence): donor, gains, edit choice."""

    donor: Identity | None = None
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    sign: float = 1.0
    edit: str = ""
    expression: tuple[float, float] = (0.0, 0.0)  # FR target mouth_open, smile


def plan_video(family: str, rng: np.random.Generator, donor: Identity | None = None) -> VideoPlan:
    """A fake video's fixed choices. Swaps take `donor` — another identity of the same split, so that a
    detector cannot shortcut by memorising the training identities (every face it sees in training, real
    or swapped in, belongs to a training identity)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    s = STRENGTH[family]
    gain = tuple(float(g) for g in 1 + rng.choice([-1, 1], 3) * rng.uniform(0.5, 1.0, 3) * s.get("colour", 0))
    if family.startswith("FS") and donor is None:
        donor = random_identity(rng)
    return VideoPlan(donor=donor, gain=gain,
                     sign=float(rng.choice([-1.0, 1.0])), edit=str(rng.choice(["hair", "lips", "forehead"])),
                     expression=(float(rng.uniform(0.4, 1.0)), float(rng.uniform(-0.6, 1.0))))


def _resize(img: np.ndarray, size: int, interp: int) -> np.ndarray:
    return cv2.resize(img, (size, size), interpolation=interp)


def _blend(base: np.ndarray, other: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None]
    return base * (1 - m) + other * m


def _checkerboard_upsample(small: np.ndarray, strength: float) -> np.ndarray:
    """x2 zero insertion + a separable filter whose two phases have unequal gain (1 ± strength)."""
    size = small.shape[0] * 2
    up = np.zeros((size, size, 3), np.float32)
    up[::2, ::2] = small
    k = np.array([0.25 * (1 - strength), 0.5 * (1 + strength), 0.25 * (1 - strength)], np.float32) * 2
    return cv2.sepFilter2D(up, -1, k, k, borderType=cv2.BORDER_REFLECT)


def forge(family: str, captured: np.ndarray, ident: Identity, pose: Pose, plan: VideoPlan) -> np.ndarray:
    """The fake version of one captured frame (float32 RGB 0..255, before the final JPEG)."""
    size = captured.shape[0]
    s = STRENGTH[family]
    if family == "FS":
        small = render(plan.donor, pose, int(size * s["donor_scale"]))
        donor = _resize(small, size, cv2.INTER_LINEAR) * np.float32(plan.gain)
        return _blend(captured, donor, feather(region_mask(ident, pose, size, "face"), s["feather"]))
    if family == "FR":
        mouth_open, smile = plan.expression
        redo = render(ident, replace(pose, mouth_open=mouth_open, smile=smile), size)
        b = int(s["block"])
        redo = _resize(_resize(redo, size // b, cv2.INTER_AREA), size, cv2.INTER_NEAREST)
        redo = redo + plan.sign * s["brightness"]
        mask = np.maximum(region_mask(ident, pose, size, "mouth"), region_mask(ident, pose, size, "eyes"))
        return _blend(captured, redo, feather(mask, s["feather"]))
    if family == "EFS":
        return _checkerboard_upsample(render(ident, pose, size // 2), s["checker"])
    if family == "FE":
        area = "mouth" if plan.edit == "lips" else plan.edit  # lipstick spreads over the mouth area
        region = feather(region_mask(ident, pose, size, area), 0.8)
        edited = cv2.GaussianBlur(captured, (0, 0), s["smooth"])
        tint = {"hair": (1 + s["colour"], 1.0, 1 - s["colour"]), "lips": (1 + s["colour"], 0.8, 0.85),
                "forehead": (0.85, 0.85, 0.85)}[plan.edit]
        edited = edited * np.float32(tint)
        if plan.edit == "forehead":  # age wrinkles: a few dark horizontal lines
            edited[np.arange(size) % 3 == 0] *= s["wrinkle"]
        return _blend(captured, edited, region)
    if family == "FS-poisson":
        donor = _resize(render(plan.donor, pose, int(size * s["donor_scale"])), size, cv2.INTER_CUBIC)
        sigma = s["low_pass"]
        transferred = donor - cv2.GaussianBlur(donor, (0, 0), sigma) + cv2.GaussianBlur(captured, (0, 0), sigma)
        return _blend(captured, transferred, feather(region_mask(ident, pose, size, "face"), s["feather"]))
    if family == "EFS-bilinear":
        small = render(ident, pose, int(size * s["scale"]))
        return _resize(small, size, cv2.INTER_LINEAR)
    raise ValueError(f"unknown family {family!r}")
