"""Face detection + 5-point alignment + crop, with pluggable backends and an explicit "no face" policy.

Backends: "none" (no detection: centre square crop of the whole frame) and "dlib" (HOG detector + the
5-point landmark model, as DeepfakeBench preprocesses; needs the `faces` extra: dlib-bin and
face-recognition-models, both offline wheels); `register_backend` plugs in others.
Alignment maps the eye centres and the nose tip onto an ArcFace-style template with a margin (1.3 by
default, as DeepfakeBench), so crops look like the training crops. When no face is found the policy decides
— "skip", "whole" (use the whole frame) or "error" — and the outcome is reported per frame, never dropped.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from fakemerge.errors import InputError
from fakemerge.progress import Progress, silent

NO_FACE_POLICIES = ("skip", "whole", "error")
# ArcFace 112x112 template: left eye, right eye, nose tip, left and right mouth corners (image coordinates)
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)


@dataclass
class Face:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1
    landmarks: np.ndarray | None = None  # (3, 2): left eye centre, right eye centre, nose tip (image x order)


@dataclass
class Crop:
    """A frame's crop and how it was obtained: status is "face", "whole", "centre" or "skipped"."""

    image: np.ndarray | None
    status: str
    message: str = ""


def centre_square(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return image[y:y + s, x:x + s]


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image)
    interp = cv2.INTER_AREA if min(image.shape[:2]) > size else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=interp)


def template(size: int, margin: float) -> np.ndarray:
    """Eye centres + nose of the ArcFace template scaled to `size`, shrunk around the centre by `margin`."""
    points = ARCFACE_112[:3] / 112.0
    return ((points - 0.5) / margin + 0.5) * size


def align(image: np.ndarray, face: Face, size: int = 256, margin: float = 1.3) -> np.ndarray:
    """Similarity-warp the face onto the template; without landmarks, a square crop of the box × margin."""
    if face.landmarks is not None:
        matrix, _ = cv2.estimateAffinePartial2D(face.landmarks.astype(np.float32), template(size, margin),
                                                method=cv2.LMEDS)
        if matrix is not None:
            return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REFLECT)
    x0, y0, x1, y1 = face.box
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * margin / 2
    src = np.float32([[cx - half, cy - half], [cx + half, cy - half], [cx - half, cy + half]])
    dst = np.float32([[0, 0], [size, 0], [0, size]])
    return cv2.warpAffine(image, cv2.getAffineTransform(src, dst), (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


class NoDetector:
    name = "none"

    def detect(self, image: np.ndarray) -> list[Face]:
        return []


class DlibDetector:
    """dlib's HOG frontal-face detector + 5-point shape predictor (weights from face-recognition-models)."""

    name = "dlib"

    def __init__(self, upsample: int = 1):
        import dlib

        spec = importlib.util.find_spec("face_recognition_models")  # not imported: it needs pkg_resources
        model = Path(spec.submodule_search_locations[0]) / "models" / "shape_predictor_5_face_landmarks.dat"
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(model))
        self.upsample = upsample

    def detect(self, image: np.ndarray) -> list[Face]:
        faces = []
        for rect in self.detector(image, self.upsample):
            shape = self.predictor(image, rect)
            p = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], np.float32)
            eyes = sorted([p[0:2].mean(0), p[2:4].mean(0)], key=lambda e: e[0])  # two corners per eye
            faces.append(Face((rect.left(), rect.top(), rect.right(), rect.bottom()),
                              np.stack([eyes[0], eyes[1], p[4]])))
        return faces


# name -> factory of an object with `.name` and `.detect(rgb) -> list[Face]`; `register_backend` adds one
_FACTORIES = {"none": NoDetector, "dlib": DlibDetector}
_REQUIRES = {"dlib": ("dlib", "face_recognition_models")}


def register_backend(name: str, factory, requires: tuple[str, ...] = ()) -> None:
    """Plug in another face detector (e.g. MTCNN, RetinaFace) under `name`."""
    _FACTORIES[name] = factory
    _REQUIRES[name] = requires
    get_backend.cache_clear()


def available_backends() -> list[str]:
    return [b for b in _FACTORIES if all(importlib.util.find_spec(m) for m in _REQUIRES.get(b, ()))]


@cache
def get_backend(name: str):
    """The detector for a backend name (cached: loading dlib's model takes a moment)."""
    if name not in _FACTORIES:
        raise InputError(f"--face {name}: unknown face backend; choose one of {', '.join(_FACTORIES)}")
    if name not in available_backends():
        raise InputError(f"--face {name}: backend not installed (pip install 'fakemerge[faces]', which "
                         "brings dlib-bin and face-recognition-models)")
    return _FACTORIES[name]()


def crop_face(image: np.ndarray, backend: str = "none", *, size: int = 256, margin: float = 1.3,
              no_face: str = "whole", source: str = "image") -> Crop:
    """The aligned crop of the largest face in an RGB frame, or what the "no face" policy says to do."""
    if no_face not in NO_FACE_POLICIES:
        raise InputError(f"--no-face {no_face}: choose one of {', '.join(NO_FACE_POLICIES)}")
    detector = get_backend(backend)
    if detector.name == "none":
        return Crop(_resize(centre_square(image), size), "centre")
    faces = detector.detect(image)
    if faces:
        face = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        return Crop(align(image, face, size, margin), "face")
    message = f"{source}: no face found ({backend})"
    if no_face == "error":
        raise InputError(message)
    if no_face == "skip":
        return Crop(None, "skipped", message + ", frame skipped")
    return Crop(_resize(centre_square(image), size), "whole", message + ", whole frame used")


def preprocess(inputs, out_dir, *, label: str, family: str | None = None, dataset: str = "Faces",
               split: str = "test", backend: str = "dlib", frames: int = 32, size: int = 256,
               margin: float = 1.3, no_face: str = "skip", progress: Progress = silent) -> tuple[Path, list[dict]]:
    """Videos/images -> aligned face crops + a DeepfakeBench-style JSON (merged into an existing one).

    Layout: OUT/<family>/<split>/<video>/<frame index>.png and OUT/<dataset>.json with the label group
    `<dataset>_Real` or `<dataset>_<family>`. Returns the JSON path and one status entry per input (frames
    kept, per-frame face status, notes, error) — the caller reports them; nothing is dropped silently.
    """
    import json

    from fakemerge.data.video import is_video, sample_indexed
    from fakemerge.inference import expand_inputs
    from fakemerge.io import write_json

    if label not in ("real", "fake"):
        raise InputError(f"--label {label}: choose real or fake")
    family = "real" if label == "real" else (family or "fake")
    group = f"{dataset}_Real" if label == "real" else f"{dataset}_{family}"
    out = Path(out_dir)
    json_path = out / f"{dataset}.json"
    table = json.loads(json_path.read_text()) if json_path.is_file() else {dataset: {}}
    videos = table.setdefault(dataset, {}).setdefault(group, {}).setdefault(split, {})
    paths = expand_inputs(inputs)
    statuses = []
    for n, path in enumerate(paths, 1):
        status = {"input": str(path), "frames": 0, "face_status": [], "notes": [], "error": None}
        try:
            if is_video(path):
                indexed = sample_indexed(path, frames)
            else:
                image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
                if image is None:
                    raise InputError(f"{path}: unreadable or missing image")
                indexed = [(0, cv2.cvtColor(image, cv2.COLOR_BGR2RGB))]
            name = _unique(f"{family}/{split}/{path.stem}", videos)
            kept = []
            for index, frame in indexed:
                crop = crop_face(frame, backend, size=size, margin=margin, no_face=no_face,
                                 source=f"{path} frame {index}")
                status["face_status"].append(crop.status)
                if crop.message:
                    status["notes"].append(crop.message)
                if crop.image is not None:
                    rel = f"{name}/{index:03d}.png"
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(out / rel), cv2.cvtColor(crop.image, cv2.COLOR_RGB2BGR))
                    kept.append(rel)
            if not kept:
                raise InputError(f"{path}: no frame with a face ({len(indexed)} sampled)")
            videos[name] = {"label": group, "family": family, "frames": kept}
            status["frames"] = len(kept)
        except InputError as e:
            status["error"] = str(e)
        statuses.append(status)
        progress("faces", n, len(paths))
    write_json(json_path, table)
    return json_path, statuses


def _unique(name: str, taken) -> str:
    candidate, i = name, 2
    while candidate in taken:
        candidate, i = f"{name}_{i}", i + 1
    return candidate
