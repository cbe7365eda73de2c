"""Frame -> the model's crop: face detection backends, five-point alignment, and the "no face" policy.

`crop_frame(frame, policy)` is the one function that turns a decoded frame into crops; detect, `faces` and
the service all call it. Aligned faces are cut at `policy.size` (256, as DeepfakeBench crops); whole-frame
and centre crops are the frame's centre square at its own resolution, so that the model's own preprocessing
does the one resize to its input (bicubic for DeepfakeBench models, a centre crop for Effort's, ...), as in
their training, and `fakemerge faces` resizes them to its crop size.

Which face: the backend's candidates scoring at least `policy.min_score` are the confident ones, and the
largest of those is the face (`all_faces`: every confident face, largest first).
Default minimum 0.2 for dlib's HOG scores: below every score the one real face shipped offline (matplotlib's
grace_hopper.jpg) kept under the blur, noise, JPEG, rotation and scale perturbations tried (0.23-1.71), above
the false positive that motivated it (a badge at 0.05); no face dataset was available to tune it on.

Alignment, as DeepfakeBench's preprocessing: five landmarks (68-point scheme indices 37 and 44 on the upper
eyelids, 30 the nose tip, 49 and 55 beside the mouth corners — the points it takes) are mapped by the
least-squares similarity (rotation, uniform scale, translation) onto the ArcFace 112×112 template scaled to
the crop size and shrunk around the centre by `margin` (1.3 = 30 % context), warped bilinearly with black
borders. Faces are detected on a copy of at most `DETECT_PIXELS` (1080p and smaller at full size), so dlib's
memory stays bounded whatever the frame size; landmarks are scaled back and the crop is cut at full size.

Backends: "none" (no detection: the centre square of the frame) and "dlib" (HOG detector + the 68-point
landmark model from `face-recognition-models`, offline wheels of the `faces` extra); `register_backend` adds
others (an object with `.detect(rgb, min_score) -> list[Face]`).
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from fakemerge.errors import InputError

NO_FACE_POLICIES = ("whole", "skip", "error")
MIN_SIDE = 16  # frames smaller than this on a side carry too little to score
DETECT_PIXELS = 1920 * 1080
MARGIN_RANGE = (1.0, 3.0)
SIZE_RANGE = (16, 4096)
# ArcFace 112x112 template (x, y): left eye, right eye, nose tip, left and right mouth corners
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)
DLIB_POINTS = (37, 44, 30, 49, 55)  # the 68-point landmarks DeepfakeBench aligns with, in template order


@dataclass
class Face:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the frame's pixels
    score: float  # the backend's confidence
    landmarks: np.ndarray | None = None  # (5, 2) in template order, or None (then the box is cropped)

    @property
    def area(self) -> float:
        return max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0)


@dataclass
class Crop:
    """A crop and how it was made: status "face", "whole" (no face: the policy used the frame), "centre"
    (no detection asked) or "skipped" (no face: the policy dropped the frame, `image` is None)."""

    image: np.ndarray | None
    status: str
    face: Face | None = None
    note: str = ""


@dataclass(frozen=True)
class CropPolicy:
    """How every caller turns frames into crops; validated on construction (usage errors, exit 2)."""

    backend: str = "none"
    size: int = 256  # of aligned face crops
    margin: float = 1.3
    no_face: str = "whole"
    min_score: float = 0.2
    all_faces: bool = False
    extras: dict = field(default_factory=dict, compare=False, hash=False)  # backend settings (e.g. upsample)

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not (
                SIZE_RANGE[0] <= self.size <= SIZE_RANGE[1]):
            raise InputError(f"--size {self.size}: crop size must be an integer from {SIZE_RANGE[0]} to "
                             f"{SIZE_RANGE[1]} pixels")
        if not (MARGIN_RANGE[0] <= self.margin <= MARGIN_RANGE[1]):
            raise InputError(f"--margin {self.margin:g}: must be from {MARGIN_RANGE[0]:g} (the template's own "
                             f"framing) to {MARGIN_RANGE[1]:g}")
        if self.no_face not in NO_FACE_POLICIES:
            raise InputError(f"--no-face {self.no_face}: choose one of {', '.join(NO_FACE_POLICIES)}")
        if not np.isfinite(self.min_score):
            raise InputError(f"--min-face-score {self.min_score}: must be a finite number")
        check_backend(self.backend)


def template(size: int, margin: float = 1.3) -> np.ndarray:
    """The five ArcFace points for a `size` crop with `margin` (DeepfakeBench's `scale`)."""
    return ((ARCFACE_112 / 112.0 - 0.5) / margin + 0.5) * size


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2×3 similarity [[a, -b, tx], [b, a, ty]] minimising Σ‖M·src_i − dst_i‖² (closed form).

    With both point sets centred, the least-squares a and b are Σ(x·u + y·v) / Σ‖p‖² and
    Σ(x·v − y·u) / Σ‖p‖² (p = (x, y) source, (u, v) target); the translation maps the source centroid
    onto the target centroid. This is Umeyama's solution without reflection, over all points equally."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    ms, md = src.mean(0), dst.mean(0)
    p, q = src - ms, dst - md
    norm = (p ** 2).sum()
    if norm == 0:
        raise ValueError("source points coincide")
    a = (p[:, 0] * q[:, 0] + p[:, 1] * q[:, 1]).sum() / norm
    b = (p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]).sum() / norm
    rot = np.array([[a, -b], [b, a]])
    return np.hstack([rot, (md - rot @ ms)[:, None]])


def align(image: np.ndarray, face: Face, size: int, margin: float = 1.3) -> np.ndarray:
    """The face warped onto the template (or, without landmarks, the square around the box × margin)."""
    if face.landmarks is not None:
        matrix = similarity(face.landmarks, template(size, margin))
    else:
        x0, y0, x1, y1 = face.box
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * margin / 2
        s = size / (2 * half)
        matrix = np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy]])
    return cv2.warpAffine(np.ascontiguousarray(image), matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def centre_square(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return image[y:y + s, x:x + s]


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Area when shrinking, bicubic when enlarging (as fakemerge models are trained)."""
    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image)
    interp = cv2.INTER_AREA if min(image.shape[:2]) > size else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=interp)


# --------------------------------------------------------------------------------------------- backends

class NoDetector:
    name = "none"

    def detect(self, image: np.ndarray, min_score: float) -> list[Face]:
        return []


class DlibDetector:
    """dlib's HOG frontal-face detector (upsampled once, as DeepfakeBench) + the 68-point shape predictor."""

    name = "dlib"

    def __init__(self, upsample: int = 1):
        import dlib

        spec = importlib.util.find_spec("face_recognition_models")  # not imported: it needs pkg_resources
        model = Path(spec.submodule_search_locations[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(model))
        self.upsample = upsample
        self.lock = threading.Lock()  # one instance serves every decoding thread; dlib's objects are not shared-safe

    def detect(self, image: np.ndarray, min_score: float) -> list[Face]:
        with self.lock:
            return self._detect(np.ascontiguousarray(image), min_score)

    def _detect(self, image: np.ndarray, min_score: float) -> list[Face]:
        import dlib

        rects, scores, _ = self.detector.run(image, self.upsample, float(min_score))
        faces = []
        for rect, score in zip(rects, scores, strict=True):
            shape = self.predictor(image, dlib.rectangle(rect.left(), rect.top(), rect.right(), rect.bottom()))
            points = np.array([[shape.part(i).x, shape.part(i).y] for i in DLIB_POINTS], np.float64)
            faces.append(Face((rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1), float(score),
                              points))
        return faces


_FACTORIES = {"none": NoDetector, "dlib": DlibDetector}
_REQUIRES = {"dlib": ("dlib", "face_recognition_models")}


def register_backend(name: str, factory, requires: tuple[str, ...] = ()) -> None:
    """Plug in another face detector (e.g. MTCNN, RetinaFace) under `name`."""
    _FACTORIES[name] = factory
    _REQUIRES[name] = requires
    get_backend.cache_clear()


def available_backends() -> list[str]:
    return [b for b in _FACTORIES if all(importlib.util.find_spec(m) for m in _REQUIRES.get(b, ()))]


def check_backend(name: str) -> None:
    """A usage error now (before any work) for an unknown or uninstalled backend; loads nothing."""
    if name not in _FACTORIES:
        raise InputError(f"--face {name}: unknown face backend; choose one of {', '.join(_FACTORIES)}")
    if name not in available_backends():
        raise InputError(f"--face {name}: backend not installed (pip install 'fakemerge[faces]', which "
                         "brings dlib-bin and face-recognition-models)")


@cache
def get_backend(name: str):
    """The detector for a backend name (cached: loading dlib's landmark model takes a moment)."""
    check_backend(name)
    return _FACTORIES[name]()


# ------------------------------------------------------------------------------------------ frame -> crop

def crop_frame(frame: np.ndarray, policy: CropPolicy, source: str = "image") -> list[Crop]:
    """The crops of one RGB frame under `policy`: one crop (or, with `all_faces`, one per confident face),
    or what the no-face policy says; "error" raises InputError. `source` names the frame in messages."""
    h, w = frame.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InputError(f"{source}: {w}×{h} pixels is too small to score (at least {MIN_SIDE} a side)")
    if policy.backend == "none":
        return [Crop(centre_square(frame), "centre")]
    faces = [f for f in _detect(frame, policy) if f.score >= policy.min_score]
    if faces:
        faces.sort(key=lambda f: (f.area, f.score), reverse=True)
        chosen = faces if policy.all_faces else faces[:1]
        return [Crop(align(frame, f, policy.size, policy.margin), "face", f) for f in chosen]
    message = f"{source}: no face with score >= {policy.min_score:g} ({policy.backend})"
    if policy.no_face == "error":
        raise InputError(message)
    if policy.no_face == "skip":
        return [Crop(None, "skipped", note=message + ", frame skipped")]
    return [Crop(centre_square(frame), "whole", note=message + ", whole frame used")]


def upscale_note(source: str, image: np.ndarray, size: int) -> str | None:
    """The note for a crop enlarged more than 2× to `size` (a 16×16 image scored at 224 px)."""
    side = min(image.shape[:2])
    if side * 2 >= size:
        return None
    return (f"{source}: {image.shape[1]}×{image.shape[0]} crop upscaled {size / side:.0f}× to {size}×{size}; "
            "scores of images this small are unreliable")


def _detect(frame: np.ndarray, policy: CropPolicy) -> list[Face]:
    """Candidates from the backend, found on a copy of at most DETECT_PIXELS, in the frame's coordinates."""
    backend = get_backend(policy.backend)
    h, w = frame.shape[:2]
    scale = min(1.0, (DETECT_PIXELS / (h * w)) ** 0.5)
    small = frame if scale == 1.0 else cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                   interpolation=cv2.INTER_AREA)
    faces = backend.detect(small, policy.min_score)
    if scale != 1.0:
        for f in faces:
            f.box = tuple(v / scale for v in f.box)
            if f.landmarks is not None:
                f.landmarks = f.landmarks / scale
    return faces


def link_tracks(boxes: list[list[tuple[float, float, float, float]]], min_iou: float = 0.3) -> list[list[int]]:
    """Face boxes per sampled frame -> a track number per box: a box joins the track whose latest box
    overlaps it most (IoU >= `min_iou`, each track at most once per frame), else starts a new track."""
    last: list[tuple[float, float, float, float]] = []
    out = []
    for frame_boxes in boxes:
        pairs = sorted(((_iou(b, t), i, j) for i, b in enumerate(frame_boxes) for j, t in enumerate(last)),
                       reverse=True)
        ids = [-1] * len(frame_boxes)
        used = set()
        for iou, i, j in pairs:
            if iou >= min_iou and ids[i] < 0 and j not in used:
                ids[i] = j
                used.add(j)
        for i, b in enumerate(frame_boxes):
            if ids[i] < 0:
                ids[i] = len(last)
                last.append(b)
            else:
                last[ids[i]] = b
        out.append(ids)
    return out


def _iou(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
