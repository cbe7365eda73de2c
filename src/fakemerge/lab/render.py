"""Procedural faces and the camera that photographs them.

An `Identity` is a parameter vector (face shape, skin, eyes, brows, nose, mouth, hair, glasses) drawn once;
a `Pose` is what changes from image to image (position, tilt, scale, expression, lighting, background).
Faces are drawn with OpenCV at `SS`x the output size (anti-aliased, sub-pixel coordinates) and area-
downscaled. The camera is split in two so forgeries can sit where they sit in real life: `sensor` (blur,
gamma, noise) happens before a forgery, `finish` (JPEG) after it, for reals and fakes alike — so the
pipeline itself is never a cue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import cv2
import numpy as np

cv2.setNumThreads(1)

SS = 2  # supersampling factor of the drawing canvas
_SHIFT = 4  # OpenCV fractional bits for sub-pixel drawing
_ONE = 1 << _SHIFT

SKIN = np.array([[255, 224, 196], [234, 192, 160], [198, 150, 112], [160, 110, 75], [110, 72, 48]], np.float32)
HAIR = np.array([[20, 15, 12], [70, 45, 25], [140, 95, 50], [210, 180, 120], [150, 60, 30], [120, 120, 120]],
                np.float32)
IRIS = np.array([[60, 40, 25], [90, 120, 60], [70, 110, 170], [40, 40, 40]], np.float32)


@dataclass(frozen=True)
class Identity:
    """Fixed per person. Lengths are fractions of the image size."""

    skin: tuple[float, float, float]
    face_w: float
    face_h: float
    eye_dx: float
    eye_y: float
    eye_r: float
    iris: tuple[float, float, float]
    brow_y: float
    brow_thick: float
    brow_tilt: float
    nose_len: float
    nose_w: float
    mouth_w: float
    mouth_y: float
    lip: tuple[float, float, float]
    hair: tuple[float, float, float]
    hair_style: int  # 0 short, 1 long, 2 receding
    hair_vol: float
    glasses: bool
    glasses_rgb: tuple[float, float, float]


@dataclass(frozen=True)
class Pose:
    """What varies per image: geometry, expression, lighting, background."""

    dx: float = 0.0
    dy: float = 0.0
    angle: float = 0.0  # degrees
    scale: float = 1.0
    mouth_open: float = 0.1  # 0 closed .. 1 wide open
    smile: float = 0.0  # -1 frown .. 1 smile
    eye_open: float = 1.0
    light_angle: float = 0.0
    light: float = 0.15  # strength of the directional shading
    brightness: float = 1.0
    bg: tuple[float, ...] = (200.0, 200.0, 200.0, 120.0, 120.0, 120.0)  # two RGB colours
    bg_kind: int = 0  # 0 linear gradient, 1 stripes, 2 radial
    bg_phase: float = 0.0


@dataclass(frozen=True)
class Camera:
    """Per video: how the images were taken."""

    blur: float  # Gaussian sigma in output pixels (demosaic / optics)
    gamma: float
    noise: float  # sensor noise sigma in 0-255 units
    jpeg: int  # JPEG quality


def _tuple(a: np.ndarray) -> tuple[float, ...]:
    return tuple(float(x) for x in a)


def _palette(rng: np.random.Generator, palette: np.ndarray, jitter: float) -> tuple[float, float, float]:
    i = rng.uniform(0, len(palette) - 1)
    lo = int(i)
    c = palette[lo] * (1 - (i - lo)) + palette[min(lo + 1, len(palette) - 1)] * (i - lo)
    return _tuple(np.clip(c + rng.normal(0, jitter, 3), 0, 255))


def random_identity(rng: np.random.Generator) -> Identity:
    skin = _palette(rng, SKIN, 8)
    lip = _tuple(np.clip(np.array(skin) * [0.85, 0.55, 0.55] + rng.normal(0, 10, 3), 0, 255))
    return Identity(
        skin=skin, face_w=rng.uniform(0.21, 0.28), face_h=rng.uniform(0.28, 0.34),
        eye_dx=rng.uniform(0.085, 0.115), eye_y=rng.uniform(-0.07, -0.03), eye_r=rng.uniform(0.028, 0.04),
        iris=_palette(rng, IRIS, 10), brow_y=rng.uniform(0.04, 0.065), brow_thick=rng.uniform(0.008, 0.02),
        brow_tilt=rng.uniform(-12, 12), nose_len=rng.uniform(0.07, 0.12), nose_w=rng.uniform(0.025, 0.045),
        mouth_w=rng.uniform(0.06, 0.1), mouth_y=rng.uniform(0.13, 0.17), lip=lip,
        hair=_palette(rng, HAIR, 10), hair_style=int(rng.integers(3)), hair_vol=rng.uniform(0.02, 0.07),
        glasses=bool(rng.random() < 0.2), glasses_rgb=_tuple(rng.uniform(0, 90, 3)),
    )


def random_pose(rng: np.random.Generator) -> Pose:
    return Pose(
        dx=rng.uniform(-0.04, 0.04), dy=rng.uniform(-0.04, 0.04), angle=rng.uniform(-10, 10),
        scale=rng.uniform(0.92, 1.08), mouth_open=rng.uniform(0, 0.5), smile=rng.uniform(-0.4, 1.0),
        eye_open=rng.uniform(0.6, 1.0), light_angle=rng.uniform(0, 2 * math.pi), light=rng.uniform(0.05, 0.3),
        brightness=rng.uniform(0.85, 1.1), bg=_tuple(rng.uniform(30, 240, 6)), bg_kind=int(rng.integers(3)),
        bg_phase=rng.uniform(0, 2 * math.pi),
    )


def random_camera(rng: np.random.Generator) -> Camera:
    return Camera(blur=rng.uniform(0.3, 0.8), gamma=rng.uniform(0.85, 1.15), noise=rng.uniform(1.0, 4.0),
                  jpeg=int(rng.integers(70, 96)))


def moved(pose: Pose, step: np.ndarray, t: int) -> Pose:
    """Frame `t` of a video: a small drift of position, tilt, expression and light (step = 5 velocities)."""
    return replace(pose, dx=pose.dx + t * step[0], dy=pose.dy + t * step[1], angle=pose.angle + t * step[2],
                   mouth_open=float(np.clip(pose.mouth_open + t * step[3], 0, 1)),
                   light_angle=pose.light_angle + t * step[4])


class _Frame:
    """Maps face-local coordinates (fractions of the image, origin at the face centre) to canvas pixels."""

    def __init__(self, pose: Pose, px: int):
        self.k = px * _ONE
        self.cx, self.cy = 0.5 + pose.dx, 0.52 + pose.dy
        self.s = pose.scale
        self.angle = pose.angle
        a = math.radians(pose.angle)
        self.cos, self.sin = math.cos(a), math.sin(a)

    def pt(self, u: float, v: float) -> tuple[int, int]:
        x = self.cx + self.s * (u * self.cos - v * self.sin)
        y = self.cy + self.s * (u * self.sin + v * self.cos)
        return round(x * self.k), round(y * self.k)

    def ax(self, a: float, b: float) -> tuple[int, int]:
        return max(1, round(a * self.s * self.k)), max(1, round(b * self.s * self.k))

    def ellipse(self, img, u, v, a, b, color, angle=0.0, start=0, end=360, thickness=-1) -> None:
        th = thickness if thickness < 0 else max(1, round(thickness * self.s * self.k / _ONE))
        cv2.ellipse(img, self.pt(u, v), self.ax(a, b), self.angle + angle, start, end, color, th, cv2.LINE_AA,
                    _SHIFT)

    def line(self, img, p, q, color, thickness) -> None:
        th = max(1, round(thickness * self.s * self.k / _ONE))
        cv2.line(img, self.pt(*p), self.pt(*q), color, th, cv2.LINE_AA, _SHIFT)


@lru_cache(maxsize=8)
def _grid(px: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:px, 0:px].astype(np.float32) / px
    return x - 0.5, y - 0.5


def _background(pose: Pose, px: int) -> np.ndarray:
    x, y = _grid(px)
    c, s = math.cos(pose.bg_phase), math.sin(pose.bg_phase)
    if pose.bg_kind == 0:
        w = np.clip(x * c + y * s + 0.5, 0, 1)
    elif pose.bg_kind == 1:
        w = 0.5 + 0.5 * np.sin((x * c + y * s) * 25 + pose.bg_phase)
    else:
        w = np.clip(np.sqrt(x * x + y * y) * 1.6, 0, 1)
    c1, c2 = np.array(pose.bg[:3], np.float32), np.array(pose.bg[3:], np.float32)
    return (c1 + w[..., None] * (c2 - c1)).astype(np.uint8)


def _shade(rgb: tuple[float, ...], f: float) -> tuple[float, ...]:
    return tuple(min(255.0, c * f) for c in rgb)


def draw_face(img: np.ndarray, ident: Identity, pose: Pose) -> None:
    """Draw the head onto `img` (a square uint8 RGB canvas) in place."""
    f = _Frame(pose, img.shape[0])
    w, h = ident.face_w, ident.face_h
    hair, skin = ident.hair, ident.skin
    if ident.hair_style == 1:  # long hair behind the head
        f.ellipse(img, 0, 0.05, w + ident.hair_vol + 0.03, h + 0.08, hair)
    f.line(img, (0, h * 0.8), (0, h + 0.2), _shade(skin, 0.85), 2 * w * 0.7)  # neck
    f.ellipse(img, -w, 0.0, 0.03, 0.05, _shade(skin, 0.9))  # ears
    f.ellipse(img, w, 0.0, 0.03, 0.05, _shade(skin, 0.9))
    f.ellipse(img, 0, 0, w, h, skin)
    top = -h * (0.55 if ident.hair_style == 2 else 0.35)  # hairline
    f.ellipse(img, 0, top, w + 0.01, (h + top + ident.hair_vol) * 0.9, hair, start=180, end=360)
    for side in (-1, 1):
        ex, ey = side * ident.eye_dx, ident.eye_y
        f.ellipse(img, ex, ey, ident.eye_r * 1.4, ident.eye_r * 0.8 * pose.eye_open, (245, 245, 240))
        f.ellipse(img, ex, ey, ident.eye_r * 0.6, ident.eye_r * 0.6 * min(1.0, pose.eye_open * 1.2), ident.iris)
        f.ellipse(img, ex, ey, ident.eye_r * 0.25, ident.eye_r * 0.25 * pose.eye_open, (10, 10, 10))
        by = ey - ident.brow_y
        f.ellipse(img, ex, by, ident.eye_r * 1.6, ident.brow_thick, _shade(hair, 0.8), angle=side * ident.brow_tilt)
    f.line(img, (0, ident.eye_y + 0.02), (0.01, ident.eye_y + ident.nose_len), _shade(skin, 0.8), 0.008)
    f.ellipse(img, 0, ident.eye_y + ident.nose_len, ident.nose_w, 0.012, _shade(skin, 0.75), start=0, end=180,
              thickness=0.008)
    my, mw = ident.mouth_y, ident.mouth_w
    opening = 0.005 + 0.035 * pose.mouth_open
    f.ellipse(img, 0, my, mw, opening + 0.012, ident.lip)
    if pose.mouth_open > 0.15:
        f.ellipse(img, 0, my, mw * 0.8, opening, (60, 20, 25))
        f.ellipse(img, 0, my - opening * 0.6, mw * 0.65, opening * 0.35, (235, 230, 220))  # teeth
    else:
        f.line(img, (-mw * 0.8, my), (mw * 0.8, my), _shade(ident.lip, 0.6), 0.006)
    if abs(pose.smile) > 0.1:  # corners of the mouth
        d = -0.015 * pose.smile
        for side in (-1, 1):
            f.line(img, (side * mw * 0.9, my), (side * mw * 1.15, my + d), _shade(ident.lip, 0.7), 0.006)
    if ident.glasses:
        for side in (-1, 1):
            f.ellipse(img, side * ident.eye_dx, ident.eye_y, ident.eye_r * 2.0, ident.eye_r * 1.6,
                      ident.glasses_rgb, thickness=0.008)
        f.line(img, (-ident.eye_dx + ident.eye_r * 2, ident.eye_y), (ident.eye_dx - ident.eye_r * 2, ident.eye_y),
               ident.glasses_rgb, 0.008)


def render(ident: Identity, pose: Pose, size: int) -> np.ndarray:
    """A clean (pre-camera) image: float32 HxWx3 RGB in 0..255, drawn at SS x size and area-downscaled."""
    px = size * SS
    img = cv2.resize(_background(pose, size), (px, px), interpolation=cv2.INTER_LINEAR)  # smooth: no detail lost
    draw_face(img, ident, pose)
    small = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    x, y = _grid(size)
    light = pose.brightness * (1 + pose.light * (x * math.cos(pose.light_angle) + y * math.sin(pose.light_angle)))
    return small * light[..., None]


REGIONS = ("face", "mouth", "eyes", "hair", "lips", "forehead")


def region_mask(ident: Identity, pose: Pose, size: int, name: str) -> np.ndarray:
    """A float32 HxW mask in 0..1 of one facial region, in output pixels (for forgeries)."""
    m = np.zeros((size, size), np.uint8)
    f = _Frame(pose, size)
    w, h = ident.face_w, ident.face_h
    if name == "face":  # the inner face a swap replaces: brows to chin, cheek to cheek
        f.ellipse(m, 0, 0.04, w * 0.82, h * 0.8, 255)
    elif name == "mouth":
        f.ellipse(m, 0, ident.mouth_y, ident.mouth_w * 1.35, 0.055, 255)
    elif name == "eyes":
        for side in (-1, 1):
            f.ellipse(m, side * ident.eye_dx, ident.eye_y - 0.01, ident.eye_r * 2.0, ident.eye_r * 1.8, 255)
    elif name == "lips":
        f.ellipse(m, 0, ident.mouth_y, ident.mouth_w * 1.05, 0.035, 255)
    elif name == "forehead":
        f.ellipse(m, 0, ident.eye_y - ident.brow_y - 0.06, w * 0.7, 0.05, 255)
    elif name == "hair":
        if ident.hair_style == 1:
            f.ellipse(m, 0, 0.05, w + ident.hair_vol + 0.03, h + 0.08, 255)
            f.ellipse(m, 0, 0, w, h, 0)
        top = -h * (0.55 if ident.hair_style == 2 else 0.35)
        f.ellipse(m, 0, top, w + 0.01, (h + top + ident.hair_vol) * 0.9, 255, start=180, end=360)
    else:
        raise ValueError(f"unknown region {name!r}; expected one of {REGIONS}")
    return m.astype(np.float32) * (1 / 255)


def feather(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Soft-edged version of a mask (Gaussian feathering, sigma in pixels)."""
    return cv2.GaussianBlur(mask, (0, 0), sigma) if sigma > 0 else mask


def sensor(img: np.ndarray, cam: Camera, rng: np.random.Generator) -> np.ndarray:
    """Optics blur, gamma and sensor noise (float32 in, float32 out, 0..255)."""
    out = cv2.GaussianBlur(img, (0, 0), cam.blur)
    out = 255.0 * np.power(np.clip(out, 0, 255) * (1 / 255), cam.gamma, dtype=np.float32)
    return out + rng.standard_normal(out.shape, dtype=np.float32) * cam.noise


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode/decode as JPEG in memory: float32 or uint8 RGB in, uint8 RGB out."""
    u8 = np.clip(img + 0.5, 0, 255).astype(np.uint8) if img.dtype != np.uint8 else img
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(u8[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV always encodes a valid array
        raise RuntimeError("JPEG encoding failed")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


def finish(img: np.ndarray, cam: Camera) -> np.ndarray:
    """The last step of every image, real or fake: JPEG at the video's quality."""
    return jpeg(img, cam.jpeg)
