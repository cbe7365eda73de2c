"""The service's only door to the media layer and `detect()`: load the model, sniff, size-check, analyse.

Everything the service asks of `fakemerge.data.media` and `fakemerge.inference` goes through this module,
so the service scores an upload exactly as `fakemerge detect` scores the same file.

INTERIM (until the media layer's `sniff`, `probe` and pixel limit are on main): `sniff` below reads the
magic bytes itself and `dimensions` reads headers with Pillow / PyAV. Both are to be replaced by
`fakemerge.data.media.sniff` / `probe`, and the `detect()` call by `detect(model, inputs, DetectOptions)`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import av
import torch
from PIL import Image

from fakemerge.errors import FakemergeError
from fakemerge.inference import detect
from fakemerge.models.detector import Detector, ModelMeta, load_detector
from fakemerge.serving.errors import ApiError
from fakemerge.serving.settings import ServeSettings
from fakemerge.serving.uploads import Upload

# format -> (kind, the suffix the spooled file gets, so that detect() reads it as what its bytes are)
FORMATS = {"png": ("image", ".png"), "jpeg": ("image", ".jpg"), "bmp": ("image", ".bmp"),
           "webp": ("image", ".webp"), "tiff": ("image", ".tif"), "mp4": ("video", ".mp4"),
           "matroska": ("video", ".mkv"), "avi": ("video", ".avi"), "mpeg": ("video", ".mpg")}


def sniff(head: bytes) -> str | None:
    """INTERIM: the container/format from the first bytes (never from the name), or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"BM") and len(head) >= 14:
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] in (b"WEBP", b"AVI "):
        return "webp" if head[8:12] == b"WEBP" else "avi"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head.startswith(b"\x1aE\xdf\xa3"):
        return "matroska"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "mpeg"
    return None


def dimensions(path: Path, fmt: str) -> tuple[int, int] | None:
    """INTERIM: (width, height) from the headers, before any decoding; None when the headers are unreadable
    (detect() then reports the file as unreadable). Images: the format's Pillow plugin reads the header
    (Image.open would refuse sizes past its own bomb limit without telling them)."""
    try:
        if FORMATS[fmt][0] == "image":
            Image.init()
            factory, _ = Image.OPEN[fmt.upper()]
            with open(path, "rb") as f:
                return factory(f, "").size
        with av.open(str(path)) as container:
            if not container.streams.video:
                return None
            codec = container.streams.video[0].codec_context
            return codec.width, codec.height
    except Exception:  # an unreadable header is detect()'s to report, with its own message
        return None


def load_model(path: Path) -> tuple[Detector, ModelMeta]:
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
    kind, suffix = FORMATS[upload.format]
    path = upload.path.with_name("upload" + suffix)
    upload.path.rename(path)
    size = dimensions(path, upload.format)
    if size is not None and size[0] * size[1] > settings.max_pixels:
        what = "image" if kind == "image" else "video frame"
        raise ApiError(413, "too_many_pixels", f"{upload.name}: {what} of {size[0]}×{size[1]} pixels is above "
                                               f"this server's limit of {settings.max_pixels:,} pixels")

    def shown(text: str) -> str:  # messages name the upload, never the server's temp path
        return text.replace(str(path), upload.name).replace(str(path.parent), "(upload)")

    maps = path.parent / "maps"
    try:
        (result,) = detect(detector, [path], frames=options.frames, agg=options.agg, k=settings.topk,
                           face=settings.face, no_face=settings.no_face, heatmap_dir=maps if options.heatmap else None)
    except FakemergeError as e:
        raise ApiError(400, "bad_request", shown(str(e))) from None
    if result.error:
        raise ApiError(422, "unprocessable", shown(result.error))
    body = result.to_dict()
    body.update(input=upload.name, notes=[shown(n) for n in result.notes], heatmap=None,
                heatmap_png_base64=base64.b64encode(Path(result.heatmap).read_bytes()).decode()
                if result.heatmap else None)
    return body
