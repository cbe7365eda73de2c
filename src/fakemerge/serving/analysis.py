"""The service's only door to the media layer and `detect()`: load the model, sniff, size-check, analyse.

Everything the service asks of `fakemerge.data.media` and `fakemerge.inference` goes through this module,
so the service reads and scores an upload exactly as `fakemerge detect` does the same file: the type from
the bytes (`media.sniff`), the size from the headers (`media.probe`) and the pixel limit of the media layer
(over it JPEGs are decoded reduced, anything else is refused — here with 413, before decoding).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import torch

from fakemerge.data import media
from fakemerge.errors import FakemergeError
from fakemerge.inference import DetectOptions, detect
from fakemerge.models.detector import Detector, ModelMeta
from fakemerge.models.loading import load_detector
from fakemerge.serving.errors import ApiError
from fakemerge.serving.settings import ServeSettings
from fakemerge.serving.uploads import Upload

HEAD_BYTES = media.HEAD_BYTES


def identify(head: bytes, name: str) -> str:
    """The upload's format from its first bytes (never its name); ApiError 415 when it is no image or video
    the media layer reads."""
    fmt = media.sniff(head)
    if media.kind_of(fmt) is None:
        why = media.UNSUPPORTED.get(fmt, "not an image or video this server reads")
        raise ApiError(415, "unsupported_media_type", f"{name}: {why} (judged from its bytes)")
    return fmt


def load_model(path: Path) -> tuple[Detector, ModelMeta]:
    """The one loader's detector (a fakemerge file, an exported HF folder or the field's checkpoint)."""
    detector, meta = load_detector(path)
    if torch.cuda.is_available():
        detector = detector.to("cuda")
    return detector, meta


def warm_up(detector: Detector) -> None:
    """One forward pass, so the first request does not pay for lazy initialisation."""
    size = detector.preprocessing.size
    with torch.inference_mode():
        detector(torch.zeros(1, 3, size, size, device=next(detector.parameters()).device))


@dataclass(frozen=True)
class Options:
    frames: int
    agg: str
    heatmap: bool


def analyse(detector: Detector, upload: Upload, options: Options, settings: ServeSettings) -> dict:
    """The `detect --format json` object for the upload (+ heatmap PNG as base64); ApiError 413/422."""
    path = upload.path

    def shown(text: str) -> str:  # messages name the upload, never the server's temp path
        return text.replace(str(path), upload.name).replace(str(path.parent), "(upload)")

    try:
        info = media.probe(path)
    except FakemergeError as e:
        raise ApiError(422, "unprocessable", shown(str(e))) from None
    if not info.fits(settings.max_pixels):
        what = "image is" if info.kind == "image" else "video frames are"
        raise ApiError(413, "too_many_pixels", f"{upload.name}: {info.width}×{info.height} {info.format.upper()} "
                                               f"{what} over this server's limit of {settings.max_pixels:,} pixels")
    detect_options = DetectOptions(frames=options.frames, agg=options.agg, k=settings.topk, face=settings.face,
                                   no_face=settings.no_face, max_pixels=settings.max_pixels, workers=0,
                                   heatmap_dir=path.parent / "maps" if options.heatmap else None)
    try:
        (result,) = detect(detector, [path], detect_options)
    except FakemergeError as e:
        raise ApiError(400, "bad_request", shown(str(e))) from None
    if result.error:
        raise ApiError(422, "unprocessable", shown(result.error))
    body = result.to_dict()
    body.update(input=upload.name, notes=[shown(n) for n in result.notes], heatmap=None,
                heatmap_png_base64=base64.b64encode(Path(result.heatmap).read_bytes()).decode()
                if result.heatmap else None)
    return body
