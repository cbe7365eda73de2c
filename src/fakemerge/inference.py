"""detect(): images, folders (recursive) and videos -> per-frame and per-input P(fake).

Frames of many inputs are batched together so the model runs full batches (the cost per image is the
backbone forward plus decoding). A bad input becomes a result with `error` set (one line naming the file
and the cause) and the rest of the batch goes on.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from fakemerge.data.faces import crop_face
from fakemerge.data.video import is_video, sample_indexed
from fakemerge.errors import FakemergeError, InputError
from fakemerge.evaluation.metrics import AGGREGATIONS, aggregate
from fakemerge.models.detector import Detector, load_detector
from fakemerge.models.preprocessing import batch_inputs
from fakemerge.progress import Progress, silent

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
THRESHOLD = 0.5


@dataclass
class DetectResult:
    input: str
    kind: str  # image | video
    score: float | None = None  # aggregated P(fake); None when nothing could be scored
    verdict: str | None = None  # fake | real (score >= 0.5 is fake)
    frame_scores: list[float] = field(default_factory=list)
    frame_indices: list[int] = field(default_factory=list)
    face_status: list[str] = field(default_factory=list)  # per frame: face | whole | centre | skipped
    notes: list[str] = field(default_factory=list)  # e.g. "no face found ..., whole frame used"
    heatmap: str | None = None
    error: str | None = None

    @property
    def frames(self) -> int:
        return len(self.frame_scores)

    def to_dict(self) -> dict:
        return {**asdict(self), "frames": self.frames}


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; folders replaced by their images and videos (recursive, sorted)."""
    out = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and
                           (p.suffix.lower() in IMAGE_SUFFIXES or is_video(p)))
            out.extend(found or [item])  # an empty folder stays, to be reported as an error
        else:
            out.append(item)
    return out


@dataclass
class _Unit:
    """One input's decoded crops, waiting for its scores."""

    result: DetectResult
    crops: list[np.ndarray]


def _decode(path: Path, *, frames: int, face: str, no_face: str, size: int) -> _Unit:
    kind = "video" if is_video(path) else "image"
    result = DetectResult(str(path), kind)
    try:
        if path.is_dir():
            raise InputError(f"{path}: folder has no images or videos")
        if not path.is_file():
            raise InputError(f"{path}: file not found")
        if kind == "video":
            indexed = sample_indexed(path, frames)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise InputError(f"{path}: unreadable image")
            indexed = [(0, cv2.cvtColor(image, cv2.COLOR_BGR2RGB))]
        else:
            raise InputError(f"{path}: not an image or video file ({path.suffix or 'no suffix'})")
        crops = []
        for index, frame in indexed:
            source = f"{path}" + (f" frame {index}" if kind == "video" else "")
            crop = crop_face(frame, face, size=size, no_face=no_face, source=source)
            result.face_status.append(crop.status)
            if crop.message:
                result.notes.append(crop.message)
            if crop.image is not None:
                crops.append(crop.image)
                result.frame_indices.append(index)
        if not crops:
            raise InputError(f"{path}: no frame with a face ({len(indexed)} sampled)")
        return _Unit(result, crops)
    except FakemergeError as e:
        result.error = str(e)
    except Exception as e:  # a decoder crash on one file must not stop the batch
        result.error = f"{path}: {type(e).__name__}: {e}"
    return _Unit(result, [])


def detect(model: str | os.PathLike | Detector, inputs: Iterable[str | os.PathLike], *, frames: int = 8,
           agg: str = "mean", k: int = 3, face: str = "none", no_face: str = "whole", batch_size: int = 64,
           heatmap_dir: str | os.PathLike | None = None, device: str | torch.device | None = None,
           progress: Progress = silent) -> Iterator[DetectResult]:
    """Score each input (in order); an input that fails yields a result with `error` set."""
    if agg not in AGGREGATIONS:
        raise InputError(f"--agg {agg}: choose one of {', '.join(AGGREGATIONS)}")
    detector = model if isinstance(model, Detector) else load_detector(model)[0]
    if device is not None or not isinstance(model, Detector):
        detector = detector.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    detector.eval()
    size = detector.config.image_size
    paths = expand_inputs(inputs)
    pending: list[_Unit] = []
    n_frames = done = 0

    def flush() -> Iterator[DetectResult]:
        nonlocal pending, n_frames, done
        crops = [c for unit in pending for c in unit.crops]
        scores = _score(detector, crops, batch_size) if crops else []
        start = 0
        for unit in pending:
            r = unit.result
            if unit.crops:
                r.frame_scores = scores[start:start + len(unit.crops)]
                start += len(unit.crops)
                r.score = aggregate(r.frame_scores, agg, k)
                r.verdict = "fake" if r.score >= THRESHOLD else "real"
                if heatmap_dir is not None:
                    r.heatmap = str(_save_heatmap(detector, unit, Path(heatmap_dir), done))
            done += 1
            progress("detect", done, len(paths))
            yield r
        pending, n_frames = [], 0

    for path in paths:
        unit = _decode(path, frames=frames, face=face, no_face=no_face, size=size)
        pending.append(unit)
        n_frames += len(unit.crops)
        if n_frames >= batch_size:
            yield from flush()
    yield from flush()


def _score(detector: Detector, crops: list[np.ndarray], batch_size: int) -> list[float]:
    device = next(detector.parameters()).device
    out: list[float] = []
    with torch.inference_mode():
        for i in range(0, len(crops), batch_size):
            pixels = batch_inputs(crops[i:i + batch_size], detector.preprocessing).to(device)
            out += detector(pixels).softmax(-1)[:, 1].float().cpu().tolist()
    return out


def _save_heatmap(detector: Detector, unit: _Unit, folder: Path, number: int) -> Path:
    """Grad-CAM overlay of the input's most suspicious frame, as `<number>_<stem>.png`."""
    from fakemerge.evaluation.heatmap import gradcam, overlay
    from fakemerge.io import atomic_path

    best = int(np.argmax(unit.result.frame_scores))
    crop = unit.crops[best]
    pixels = batch_inputs([crop], detector.preprocessing).to(next(detector.parameters()).device)
    small = min(crop.shape[:2]) < 256
    shown = cv2.resize(crop, (256, 256), interpolation=cv2.INTER_CUBIC) if small else crop
    image = overlay(shown, gradcam(detector, pixels)[0])
    path = folder / f"{number:04d}_{Path(unit.result.input).stem}.png"
    with atomic_path(path) as tmp:
        tmp.write_bytes(cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes())
    return path
