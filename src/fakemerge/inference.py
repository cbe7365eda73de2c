"""detect(): images, videos, frame folders and uploads -> P(fake) per input (or per face), one way for all.

The CLI, the service and Python scripts share `DetectOptions` (validated on construction: a bad value is a
usage error before any work) and `detect()`, which yields one `DetectResult` per input in input order —
per face track with `all_faces`. An input that fails yields a result with `error` (one line naming the input
and the cause) and the batch goes on. Frames go through `fakemerge.data.media` (bounded decoding) and
`fakemerge.data.faces.crop_frame` (the one frame -> crop function), then the model's own `Preprocessing`;
verdicts use the model's calibrated threshold (`Detector.threshold`; uncalibrated models use 0.5 and their
results say `calibrated: false`).

Decoding overlaps the model: `workers` threads decode, crop and normalise the next inputs (Pillow, PyAV,
OpenCV and torch release the GIL) while the calling thread runs full batches made of frames of several
inputs. The threads work ahead by about one batch of crops plus 2 × workers inputs (the inputs per batch
are estimated from the crops per input seen so far), so memory stays bounded by roughly two batches.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fakemerge.config import first_error
from fakemerge.data.faces import Crop, CropPolicy, check_backend, crop_frame, link_tracks, resize, upscale_note
from fakemerge.data.media import MAX_PIXELS, Item, Source, find_media, read_frames
from fakemerge.errors import FakemergeError, InputError
from fakemerge.evaluation.metrics import aggregate
from fakemerge.models.detector import Detector
from fakemerge.models.loading import load_detector
from fakemerge.models.preprocessing import Preprocessing, to_input
from fakemerge.progress import Progress, silent
from fakemerge.sharding import Shards

UNCALIBRATED_THRESHOLD = 0.5
HEATMAP_SIZE = 256  # the crop shown under a Grad-CAM overlay
# option -> the command-line flag users know it by (error messages name the flag)
FLAGS = {"k": "--topk", "face": "--face", "no_face": "--no-face", "min_face_score": "--min-face-score",
         "all_faces": "--all-faces", "batch_size": "--batch-size", "heatmap_dir": "--heatmaps",
         "folder_as_video": "--folder-as-video", "max_pixels": "--max-pixels", "face_size": "--face-size"}


class DetectOptions(BaseModel):
    """Everything that decides what `detect` does with the inputs (CLI flags in brackets)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    frames: int = Field(8, ge=1, le=4096, description="frames sampled per video, evenly spaced [--frames]")
    agg: Literal["mean", "max", "topk"] = Field("mean", description="frame -> video score [--agg]")
    k: int = Field(3, ge=1, description="k of --agg topk [--topk]")
    face: str = Field("none", description="face backend: none | dlib | a registered one [--face]")
    no_face: Literal["whole", "skip", "error"] = Field("whole", description="frames without a face [--no-face]")
    min_face_score: float = Field(0.2, allow_inf_nan=False, description="detector score of a face")
    all_faces: bool = Field(False, description="one result per face track instead of the largest face")
    margin: float = Field(1.3, ge=1.0, le=3.0, description="context around the aligned face [--margin]")
    face_size: int = Field(256, ge=16, le=4096, description="aligned face crop size before the model's own "
                           "resize, as DeepfakeBench crops [--face-size]")
    batch_size: int = Field(64, ge=1, le=4096, description="frames per forward pass [--batch-size]")
    heatmap_dir: Path | None = Field(None, description="write a Grad-CAM PNG per result here [--heatmaps]")
    folder_as_video: bool = Field(False, description="a folder of frames is one video [--folder-as-video]")
    max_pixels: int = Field(MAX_PIXELS, ge=256, description="pixel limit checked before decoding")
    workers: int = Field(2, ge=0, le=64, description="decoding threads (0: decode in the calling thread)")
    device: str | None = Field(None, description="torch device (default: cuda if available, else cpu)")

    def __init__(self, **values):
        try:
            super().__init__(**values)
        except ValidationError as e:
            where, message = first_error(e, "options")
            message = message.removeprefix("Value error, ")
            flag = FLAGS.get(where, f"--{where.replace('_', '-')}")
            given = values.get(where, "?") if where in values else ""
            raise InputError(f"{flag} {given}: {message}".replace("  ", " ")) from None

    @field_validator("face")
    @classmethod
    def _known_backend(cls, name: str) -> str:
        try:
            check_backend(name)
        except InputError as e:
            raise ValueError(str(e).split(": ", 1)[1]) from None
        return name

    def crop_policy(self) -> CropPolicy:
        return CropPolicy(self.face, self.face_size, self.margin, self.no_face, self.min_face_score, self.all_faces)


@dataclass
class DetectResult:
    """One input's (or, with all_faces, one face track's) outcome; `to_dict()` is the JSON schema."""

    input: str  # the path as given (non-UTF-8 bytes shown as \xNN) or the upload's name
    kind: str | None = None  # image | video | frames (a folder read as a video); None if never opened
    format: str | None = None  # container sniffed from the bytes (png, jpeg, mp4, ...)
    face: int | None = None  # face track number with all_faces (0 = largest face where faces first appear)
    score: float | None = None  # aggregated P(fake); None when nothing was scored
    verdict: str | None = None  # fake | real: score >= threshold
    threshold: float = UNCALIBRATED_THRESHOLD
    calibrated: bool = False  # False: the model has no calibrated threshold and 0.5 was used
    frame_indices: list[int] = field(default_factory=list)  # of the scored frames
    frame_scores: list[float] = field(default_factory=list)
    face_boxes: list[list[float] | None] = field(default_factory=list)  # per scored frame [x0, y0, x1, y1]
    face_scores: list[float | None] = field(default_factory=list)  # the face detector's confidence
    face_status: list[str] = field(default_factory=list)  # per sampled frame: face|whole|centre|skipped
    notes: list[str] = field(default_factory=list)
    heatmap: str | None = None
    error: str | None = None

    @property
    def frames(self) -> int:
        return len(self.frame_scores)

    def to_dict(self) -> dict:
        return {**asdict(self), "frames": self.frames}


@dataclass
class _Unit:
    """A result waiting for its scores: the model inputs of its crops (and the crops shown under heatmaps)."""

    result: DetectResult
    inputs: list[np.ndarray] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)


def detect(model: str | os.PathLike | Detector, inputs: Iterable[Source | tuple[str, bytes]],
           options: DetectOptions | None = None, *, progress: Progress = silent,
           shards: Shards | None = None) -> Iterator[DetectResult]:
    """Score each input (files, folders, `(name, bytes)` uploads) in order; failures yield `error`.

    With `shards` of an `accelerate launch` (`Shards.current()`), each process scores its blocks of the
    inputs on its own device, and the main process yields every result in input order (the others yield
    nothing but must run the generator to its end)."""
    options = options or DetectOptions()
    launched = shards is not None and shards.world > 1
    if launched and options.device in (None, "cuda"):
        options = options.model_copy(update={"device": str(shards.device)})  # each process on its own GPU
    if launched and not shards.is_main:
        progress = silent
    detector = _ready(model, options.device)
    notes: list[str] = []
    items = find_media(inputs, folder_as_video=options.folder_as_video, notes=notes)
    for note in notes:
        progress("detect", 0, len(items), note=note)
    if not launched:
        yield from _detect_items(detector, items, options, progress)
        return
    chunk = options.batch_size
    parts = (list(_detect_items(detector, [items[i] for i in block], options, silent))
             for block in shards.blocks(len(items), chunk))
    for step, results in enumerate(shards.gather(parts, len(items), chunk), 1):
        yield from results
        progress("detect", min(len(items), step * chunk * shards.world), len(items))


def _detect_items(detector: Detector, items: list[Item], options: DetectOptions,
                  progress: Progress) -> Iterator[DetectResult]:
    policy = options.crop_policy()
    threshold = detector.threshold if detector.threshold is not None else UNCALIBRATED_THRESHOLD

    def prepare(item: Item) -> list[_Unit]:
        return _prepare(item, options, policy, detector.preprocessing)

    pending: list[_Unit] = []
    seen = [0, 0]  # inputs and crops decoded so far: how many inputs fill a batch

    def window() -> int:
        per_input = seen[1] / seen[0] if seen[1] else options.frames
        return 2 * options.workers + math.ceil(options.batch_size / max(per_input, 1))

    for done, units in enumerate(_in_order(prepare, items, options.workers, window), 1):
        seen[0] += 1
        seen[1] += sum(len(u.inputs) for u in units)
        pending.extend(units)
        if sum(len(u.inputs) for u in pending) >= options.batch_size or done == len(items):
            _score(detector, pending, options.batch_size)
            for unit in pending:
                _finish(unit, detector, options, threshold)
                yield unit.result
            pending = []
        progress("detect", done, len(items))


def _ready(model, device: str | None) -> Detector:
    detector = model if isinstance(model, Detector) else load_detector(model)[0]
    if device is not None or not isinstance(model, Detector):
        detector = detector.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return detector.eval()


def _in_order(fn: Callable[[Item], list[_Unit]], items: list[Item], workers: int,
              window: Callable[[], int]) -> Iterator[list[_Unit]]:
    """fn over items, in order, on `workers` threads that keep `window()` items submitted ahead."""
    if workers == 0:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="fakemerge-decode") as pool:
        futures: list = []
        try:
            for i in range(len(items)):
                while len(futures) < min(len(items), i + 1 + window()):
                    futures.append(pool.submit(fn, items[len(futures)]))
                yield futures[i].result()
                futures[i] = None  # the unit now belongs to the consumer
        finally:
            for f in futures:
                if f is not None:
                    f.cancel()


def _prepare(item: Item, options: DetectOptions, policy: CropPolicy, prep: Preprocessing) -> list[_Unit]:
    """Decode one input and crop its frames: one unit (or one per face track). Never raises."""
    result = DetectResult(item.name)
    stats: dict = {}
    try:
        if item.error:
            raise InputError(item.error)
        sampled: list[tuple[int, list[Crop]]] = []
        for frame in read_frames(item.source, options.frames, name=item.name, max_pixels=options.max_pixels,
                                 notes=result.notes, stats=stats):
            where = item.name if stats["kind"] == "image" else f"{item.name} frame {frame.index}"
            sampled.append((frame.index, [_ready_crop(c, where, prep, options.heatmap_dir is not None)
                                          for c in crop_frame(frame.image, policy, where)]))
        result.kind, result.format = stats["kind"], stats.get("format")
        units = _group(result, sampled, options.all_faces)
        if not any(u.inputs for u in units):
            why = "all sampled frames skipped" if sampled else "nothing decoded"
            raise InputError(f"{item.name}: no frame with a face ({len(sampled)} sampled, {why}; "
                             f"--no-face {options.no_face})")
        return units
    except FakemergeError as e:
        result.error = str(e)
    except Exception as e:  # a decoder crash on one file must not stop the batch
        result.error = f"{item.name}: {type(e).__name__}: {e}"
    result.kind = result.kind or stats.get("kind")
    result.format = result.format or stats.get("format")
    return [_Unit(result)]


@dataclass
class _Ready:
    """A crop turned into the model's input at once (the frame-sized crop is not kept)."""

    crop: Crop  # status, face, note; its image dropped
    input: np.ndarray | None  # None: the frame was skipped
    shown: np.ndarray | None  # the crop at HEATMAP_SIZE, kept only for heatmaps


def _ready_crop(crop: Crop, where: str, prep: Preprocessing, heatmap: bool) -> _Ready:
    if crop.image is None:
        return _Ready(crop, None, None)
    small = upscale_note(where, crop.image, prep.size)
    crop.note = "; ".join(n for n in (crop.note, small) if n)
    ready = _Ready(crop, to_input(crop.image, prep), resize(crop.image, HEATMAP_SIZE) if heatmap else None)
    crop.image = None
    return ready


def _group(base: DetectResult, sampled: list[tuple[int, list[_Ready]]], all_faces: bool) -> list[_Unit]:
    """Crops -> units: one for the input, or with all_faces one per face track (+ one for whole frames)."""
    for _, readies in sampled:
        base.notes.extend(r.crop.note for r in readies if r.crop.note)
    if not all_faces:
        unit = _Unit(base)
        for index, (ready,) in sampled:
            _add(unit, index, ready)
        return [unit]
    faces = [(index, [r for r in readies if r.crop.status == "face"]) for index, readies in sampled]
    tracks = link_tracks([[r.crop.face.box for r in readies] for _, readies in faces])
    units: dict[int | None, _Unit] = {}
    for (index, readies), ids in zip(faces, tracks, strict=True):
        for ready, track in zip(readies, ids, strict=True):
            unit = units.setdefault(track, _Unit(DetectResult(base.input, base.kind, base.format, face=track,
                                                              notes=list(base.notes))))
            _add(unit, index, ready)
    for index, readies in sampled:
        for ready in readies:
            if ready.crop.status != "face":
                unit = units.setdefault(None, _Unit(DetectResult(base.input, base.kind, base.format,
                                                                 notes=list(base.notes))))
                _add(unit, index, ready)
    return [units[k] for k in sorted(units, key=lambda t: -1 if t is None else t)] or [_Unit(base)]


def _add(unit: _Unit, index: int, ready: _Ready) -> None:
    crop = ready.crop
    unit.result.face_status.append(crop.status)
    if ready.input is None:
        return
    unit.inputs.append(ready.input)
    if ready.shown is not None:
        unit.crops.append(ready.shown)
    unit.result.frame_indices.append(index)
    unit.result.face_boxes.append([round(float(v), 1) for v in crop.face.box] if crop.face else None)
    unit.result.face_scores.append(round(crop.face.score, 4) if crop.face else None)


def _score(detector: Detector, units: list[_Unit], batch_size: int) -> None:
    """P(fake) of every unit's inputs, in full batches across units."""
    inputs = [x for u in units for x in u.inputs]
    if not inputs:
        return
    device = next(detector.parameters()).device
    scores: list[float] = []
    with torch.inference_mode():
        for i in range(0, len(inputs), batch_size):
            pixels = torch.from_numpy(np.stack(inputs[i:i + batch_size])).to(device)
            scores += detector(pixels).softmax(-1)[:, 1].float().cpu().tolist()
    start = 0
    for u in units:
        u.result.frame_scores = scores[start:start + len(u.inputs)]
        start += len(u.inputs)


def _finish(unit: _Unit, detector: Detector, options: DetectOptions, threshold: float) -> None:
    r = unit.result
    r.threshold, r.calibrated = threshold, detector.threshold is not None
    if r.error or not r.frame_scores:
        return
    r.score = aggregate(r.frame_scores, options.agg, options.k)
    r.verdict = "fake" if r.score >= threshold else "real"
    if options.heatmap_dir is not None:
        try:
            r.heatmap = str(_save_heatmap(detector, unit, Path(options.heatmap_dir)))
        except OSError as e:
            r.notes.append(f"{r.input}: heatmap not written ({e.strerror or e})")


def _save_heatmap(detector: Detector, unit: _Unit, folder: Path) -> Path:
    """Grad-CAM overlay of the result's most suspicious crop, as `<stem>[_face<n>]_<hash>.png`."""
    import hashlib

    import cv2

    from fakemerge.io import atomic_path
    from fakemerge.models.gradcam import gradcam, overlay

    r = unit.result
    best = int(np.argmax(r.frame_scores))
    pixels = torch.from_numpy(unit.inputs[best][None]).to(next(detector.parameters()).device)
    image = overlay(unit.crops[best], gradcam(detector, pixels)[0])
    tag = hashlib.sha1(r.input.encode("utf-8", "backslashreplace")).hexdigest()[:8]  # two inputs, one stem
    face = "" if r.face is None else f"_face{r.face}"
    path = folder / f"{Path(r.input).stem[:80]}{face}_{tag}.png"
    with atomic_path(path) as tmp:
        tmp.write_bytes(cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes())
    return path
