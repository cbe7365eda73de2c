"""Image decoding with Pillow: the pixel limit before any pixel, truncation as an error, one RGB normalisation."""

from __future__ import annotations

import math
import warnings
from struct import error as struct_error  # Pillow raises it for some short headers
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from fakemerge.data.media.formats import IMAGE_FORMATS
from fakemerge.data.media.opening import first_line, note
from fakemerge.errors import InputError

# Pillow's own warnings (corrupt EXIF, palette transparency, ...) describe what it already handled; they are
# silenced process-wide for Pillow's modules only (warnings.catch_warnings is not thread-safe).
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


def pil_open(f: BinaryIO, name: str, fmt: str) -> Image.Image:
    """Pillow's reader for the sniffed format, headers only. Its plugin is called directly: the format is
    already known, and our own pixel limit replaces Pillow's global decompression-bomb check."""
    Image.init()
    try:
        return Image.OPEN[IMAGE_FORMATS[fmt]][0](f, None)
    except (OSError, SyntaxError, ValueError, EOFError, KeyError, IndexError, TypeError, struct_error) as e:
        raise InputError(f"{name}: corrupt {fmt.upper()} header ({first_line(e)})") from None


def reduced_scale(width: int, height: int, fmt: str, max_pixels: int) -> int | None:
    """1 when the image fits `max_pixels`; else the JPEG DCT scale (2, 4 or 8) at which it fits; None when
    nothing does (any other format over the limit, or a JPEG too large even at 1/8)."""
    if width * height <= max_pixels:
        return 1
    if fmt != "jpeg":
        return None
    return next((s for s in (2, 4, 8) if math.ceil(width / s) * math.ceil(height / s) <= max_pixels), None)


def decode_image(f: BinaryIO, name: str, fmt: str, max_pixels: int, notes: list[str] | None) -> np.ndarray:
    declared = webp_size(f.read(32)) if fmt == "webp" else None
    f.seek(0)
    if declared and declared[0] * declared[1] > max_pixels:  # libwebp allocates the canvas when opened
        w, h = declared
        raise InputError(f"{name}: {w}×{h} WEBP image is over the pixel limit "
                         f"({w * h / 1e6:.1f} MP > {max_pixels / 1e6:g} MP); raise the limit to read it")
    im = pil_open(f, name, fmt)
    w, h = im.size
    if w < 1 or h < 1:
        raise InputError(f"{name}: {fmt.upper()} header gives an empty image ({w}×{h})")
    scale = reduced_scale(w, h, fmt, max_pixels)
    if scale != 1:
        if scale is None:
            raise InputError(f"{name}: {w}×{h} {fmt.upper()} image is over the pixel limit "
                             f"({w * h / 1e6:.1f} MP > {max_pixels / 1e6:g} MP); raise the limit to read it")
        im.draft("RGB", (math.ceil(w / scale), math.ceil(h / scale)))
        note(notes, f"{name}: {w}×{h} is over the {max_pixels / 1e6:g} MP limit; decoded at 1/{scale} scale "
                     f"({im.size[0]}×{im.size[1]})")
    if getattr(im, "n_frames", 1) > 1:
        note(notes, f"{name}: the {fmt.upper()} holds {im.n_frames} frames (or pages); the first is used")
    try:
        im.load()
        im = ImageOps.exif_transpose(im)
        return _to_rgb(im, name)
    except InputError:
        raise
    except OSError as e:
        if "truncated" in str(e):
            raise InputError(f"{name}: truncated {fmt.upper()} data (the file ends before the image does)"
                             ) from None
        raise InputError(f"{name}: corrupt {fmt.upper()} data ({first_line(e)})") from None
    except (SyntaxError, ValueError, EOFError, IndexError, TypeError, struct_error, MemoryError) as e:
        raise InputError(f"{name}: corrupt {fmt.upper()} data ({first_line(e)})") from None


def webp_size(head: bytes) -> tuple[int, int] | None:
    """Canvas size from a WebP's first chunk (lossy VP8, lossless VP8L or extended VP8X), None if unclear."""
    chunk = head[12:16]
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
    if chunk == b"VP8L" and head[20:21] == b"\x2f":
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


def orientation(im: Image.Image) -> int:
    """The EXIF orientation known from the headers (for a PNG whose eXIf chunk follows the pixels, Pillow
    would decode the whole image to find it: 1 is assumed there; decoding applies it anyway)."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block is ignored, as every viewer does
        return 1


def _to_rgb(im: Image.Image, name: str) -> np.ndarray:
    if im.mode.startswith("I;16"):
        grey = (np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    if im.mode in ("I", "F"):
        raise InputError(f"{name}: {'32-bit integer' if im.mode == 'I' else 'floating-point'} samples have no "
                         "agreed 8-bit meaning; convert the image to 8 or 16 bits")
    if im.mode != "RGB":
        try:
            im = im.convert("RGB")
        except ValueError:
            raise InputError(f"{name}: colour mode {im.mode} is not supported") from None
    return np.asarray(im)
