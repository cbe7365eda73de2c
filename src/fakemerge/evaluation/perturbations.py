"""Robustness perturbations: what JPEG, blur, noise, downscaling, colour changes and occluding blocks do to AUC.

A perturbation is `family:severity` (`jpeg:50`, `blur:1.5`); a bare family name stands for its ladder of five
severities, mildest first, and `all` for every family's ladder. The families and ladders follow the
DeeperForensics-1.0 distortions that DeepfakeBench's and DF40's robustness tables use, with the parameter in
the unit a user expects (the correspondence is written beside each family):

  jpeg:Q        JPEG re-encoding at quality Q (1–100). DeeperForensics' column named "JPEG" is really a
                down/up-sampling (our `resize`); the quality ladder 90…30 is ours.
  blur:σ        Gaussian blur of standard deviation σ px, kernel 2⌊3σ⌋+1 (DeeperForensics GB: kernel k, σ = k/6;
                the ladder is its k = 7, 9, 13, 17, 21 — so `blur:1.5` is GB level 2).
  noise:σ       white Gaussian noise of standard deviation σ (fraction of the full range) on each of Y, Cb, Cr
                (DeeperForensics GNC with variance v is σ = √v; ladder v = 0.001 … 0.05). GNC works in
                studio-range YCbCr (219/255 of the range), we in full range: the same σ is ~14 % milder here.
  resize:f      shrink by f (bilinear) and back (DeeperForensics "JPEG", factor 1/f = 2 … 6).
  saturation:f  chroma (Cb, Cr) scaled by f around neutral grey (DeeperForensics CS, ladder 0.4 … 0.0).
  contrast:f    every value times f (DeeperForensics CC, ladder 0.85 … 0.35: it darkens as it flattens).
  brightness:δ  δ (fraction of the range) added to every value, clipped; not a DeeperForensics family.
  block:n       n grey (128) squares of side 8 px per 256 px at random places (DeeperForensics BW, ladder
                16 … 80; equal to BW on DeepfakeBench's 256-px crops, the same covered fraction at any size).
DeeperForensics' seventh family, video compression (H.264 CRF), needs the video stream, which a dataset of
frames does not have: not offered.

Perturbations act on the decoded RGB crop before the model's preprocessing (`models/preprocessing.py`). They
are deterministic: the random ones (noise, block) draw from a generator seeded by (seed, perturbation, the
image's key — its dataset path), so an image is perturbed alike in every process, worker, order and run.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from fakemerge.errors import InputError


@dataclass(frozen=True)
class Family:
    apply: Callable[[np.ndarray, float, np.random.Generator], np.ndarray]
    check: Callable[[float], str | None]  # why a severity is invalid, or None
    ladder: tuple[float, ...]  # five severities, mildest first
    random: bool = False


def _jpeg(image: np.ndarray, quality: float, rng) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _blur(image: np.ndarray, sigma: float, rng) -> np.ndarray:
    k = 2 * int(3 * sigma + 1e-9) + 1
    return cv2.GaussianBlur(image, (k, k), sigma)


def _ycbcr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2YCrCb)  # Y, Cr, Cb in [0, 1]


def _rgb(ycrcb: np.ndarray) -> np.ndarray:
    return _to_uint8(cv2.cvtColor(ycrcb.astype(np.float32), cv2.COLOR_YCrCb2RGB) * 255.0)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    ycrcb = _ycbcr(image)
    return _rgb(ycrcb + rng.normal(0.0, sigma, ycrcb.shape).astype(np.float32))


def _resize(image: np.ndarray, factor: float, rng) -> np.ndarray:
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, int(w * factor)), max(1, int(h * factor))), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _saturation(image: np.ndarray, factor: float, rng) -> np.ndarray:
    ycrcb = _ycbcr(image)
    ycrcb[..., 1:] = 0.5 + (ycrcb[..., 1:] - 0.5) * factor
    return _rgb(ycrcb)


def _contrast(image: np.ndarray, factor: float, rng) -> np.ndarray:
    return _to_uint8(image.astype(np.float32) * factor)


def _brightness(image: np.ndarray, delta: float, rng) -> np.ndarray:
    return _to_uint8(image.astype(np.float32) + 255.0 * delta)


def _block(image: np.ndarray, count: float, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    side = min(h, w, max(1, round(8 * min(h, w) / 256)))
    out = image.copy()
    ys = rng.integers(0, h - side + 1, int(count))
    xs = rng.integers(0, w - side + 1, int(count))
    for y, x in zip(ys.tolist(), xs.tolist(), strict=True):
        out[y:y + side, x:x + side] = 128
    return out


def _between(low: float, high: float, what: str, integer: bool = False, open_low: bool = False):
    def check(v: float) -> str | None:
        if integer and v != int(v):
            return f"{what} must be a whole number"
        if v < low or v > high or (open_low and v == low):
            return f"{what} must be in {'(' if open_low else '['}{low:g}, {high:g}]"
        return None

    return check


FAMILIES: dict[str, Family] = {
    "jpeg": Family(_jpeg, _between(1, 100, "JPEG quality", integer=True), (90, 75, 60, 45, 30)),
    "blur": Family(_blur, _between(0, 50, "blur sigma (px)", open_low=True), (1.167, 1.5, 2.167, 2.833, 3.5)),
    "noise": Family(_noise, _between(0, 1, "noise sigma", open_low=True), (0.03162, 0.04472, 0.07071, 0.1, 0.2236),
                    random=True),
    "resize": Family(_resize, _between(0, 1, "resize factor", open_low=True), (0.5, 0.3333, 0.25, 0.2, 0.1667)),
    "saturation": Family(_saturation, _between(0, 10, "saturation factor"), (0.4, 0.3, 0.2, 0.1, 0.0)),
    "contrast": Family(_contrast, _between(0, 10, "contrast factor"), (0.85, 0.725, 0.6, 0.475, 0.35)),
    "brightness": Family(_brightness, _between(-1, 1, "brightness shift"), (0.1, 0.2, 0.3, 0.4, 0.5)),
    "block": Family(_block, _between(1, 100_000, "block count", integer=True), (16, 32, 48, 64, 80), random=True),
}


@dataclass(frozen=True)
class Perturbation:
    """One family at one severity; `perturbation(image, key, seed)` returns a new HxWx3 uint8 RGB image."""

    family: str
    severity: float

    @property
    def name(self) -> str:
        return f"{self.family}:{self.severity:g}"

    @property
    def level(self) -> int | None:
        """1–5 when the severity is on the family's ladder (its DeeperForensics level), else None."""
        ladder = FAMILIES[self.family].ladder
        return ladder.index(self.severity) + 1 if self.severity in ladder else None

    def __call__(self, image: np.ndarray, key: str, seed: int = 0) -> np.ndarray:
        family = FAMILIES[self.family]
        rng = None
        if family.random:
            rng = np.random.default_rng([seed, zlib.crc32(self.name.encode()), zlib.crc32(key.encode())])
        return family.apply(image, self.severity, rng)


def parse(specs: str | Iterable[str]) -> list[Perturbation]:
    """`"jpeg:50,blur"` (or a list of such strings) -> perturbations, in the order given; `blur` alone is its
    ladder, `all` every family's ladder. Unknown families, bad severities and repeats are errors."""
    items = [specs] if isinstance(specs, str) else list(specs)
    out: list[Perturbation] = []
    for item in (part.strip() for spec in items for part in spec.split(",")):
        if not item:
            continue
        family, sep, value = item.partition(":")
        family = family.strip().lower()
        if family == "all" and not sep:
            out += [Perturbation(f, s) for f, fam in FAMILIES.items() for s in fam.ladder]
            continue
        if family not in FAMILIES:
            raise InputError(f"--perturb {item}: unknown perturbation (known: {', '.join(FAMILIES)}, all)")
        if not sep:
            out += [Perturbation(family, s) for s in FAMILIES[family].ladder]
            continue
        try:
            severity = float(value)
        except ValueError:
            raise InputError(f"--perturb {item}: severity {value.strip()!r} is not a number") from None
        problem = FAMILIES[family].check(severity) if np.isfinite(severity) else "severity must be finite"
        if problem:
            raise InputError(f"--perturb {item}: {problem}")
        out.append(Perturbation(family, int(severity) if severity == int(severity) else severity))
    names = [p.name for p in out]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"--perturb: {', '.join(repeated)} given more than once")
    return out
