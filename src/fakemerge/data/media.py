"""The only code that opens image and video files: what a file is, how big, and its pixels, safely.

* The format comes from the file's first bytes (`sniff`), never from its name; a PNG named `.mp4` is read as
  the PNG it is, with a note saying so.
* Files are read through Python file objects (Pillow and PyAV never see a file name), so every name the OS
  allows works — spaces, unicode, bytes that are not UTF-8; uploads are passed as bytes.
* The pixel limit is checked on the header, before any pixel is decoded. Above it a JPEG is decoded at 1/2,
  1/4 or 1/8 scale (libjpeg's DCT scaling: only the reduced image is ever in memory) with a note; any other
  image or video is refused. Peak memory for one image is about 11 bytes × `max_pixels` (Pillow's 4-byte
  pixel buffer, its orientation copy and the RGB array: ~440 MB at the default 40 MP), plus the bytes of an
  upload; a video holds one decoded frame at a time (FFmpeg's own `max_pixels` guards each frame).
* Truncated or corrupt images are errors. A video whose data ends early or holds undecodable packets yields
  the frames that are there, with a note per problem.
* Every image becomes H×W×3 uint8 RGB the same way: EXIF orientation applied; grey, 1-bit, palette, CMYK and
  16-bit samples converted (16-bit keeps the high byte, as OpenCV does); alpha ignored (the stored colour is
  kept, as OpenCV reads images and DeepfakeBench's crops were made). Float and 32-bit integer samples have
  no agreed 8-bit meaning: refused.
* Videos: the display matrix is applied (rotations and mirrorings, as the ffmpeg command line does), frame
  timestamps come from demuxing (no decoding), so variable frame rates and B-frames index frames exactly;
  sampling is evenly spaced by frame index and seeks to the keyframe before each target.
* Nothing reaches stderr: Pillow does not print and PyAV keeps FFmpeg's log off; every problem becomes an
  `InputError` (one line naming the input and the cause) or a note.
"""

from __future__ import annotations

import contextlib
import errno
import io
import math
import os
import warnings
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from struct import error as struct_error  # Pillow raises it for some short headers
from typing import BinaryIO

import av
import numpy as np
from PIL import Image, ImageOps

from fakemerge.errors import InputError

MAX_PIXELS = 40_000_000  # default limit: 8K video frames (33 MP) pass, a 48 MP phone JPEG decodes at 1/2
HEAD_BYTES = 512  # enough for every signature `sniff` knows (MPEG-TS needs byte 188)

# sniffed format -> Pillow plugin id
IMAGE_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF", "gif": "GIF",
                 "avif": "AVIF"}
VIDEO_FORMATS = ("mp4", "mov", "3gp", "mkv", "webm", "avi", "mpeg", "mpegts", "flv", "asf", "ogg")
UNSUPPORTED = {
    "heif": "HEIC/HEIF images are not supported (convert to JPEG or PNG first)",
    "m4a": "an audio file (M4A): no video stream",
    "wav": "an audio file (WAV): no video stream",
    "mp3": "an audio file (MP3): no video stream",
    "flac": "an audio file (FLAC): no video stream",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".avif")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".3gp", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv",
                  ".wmv", ".ogv")
# what a suffix promises, for the note when the content differs (containers of one family count as one)
_SUFFIX_FAMILY = {".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".m4v": "mp4", ".mov": "mp4", ".3gp": "mp4",
                  ".mpg": "mpeg", ".ts": "mpegts", ".wmv": "asf", ".ogv": "ogg", ".webm": "mkv"}
_FORMAT_FAMILY = {"mov": "mp4", "3gp": "mp4", "webm": "mkv"}

Source = str | os.PathLike | bytes
# Pillow's own warnings (corrupt EXIF, palette transparency, ...) describe what it already handled; they are
# silenced process-wide for Pillow's modules only (warnings.catch_warnings is not thread-safe).
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


def sniff(head: bytes) -> str | None:
    """The container/format named by a file's first bytes (`HEAD_BYTES` suffice), or None if unknown."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in (12, 40, 52, 56, 64,
                                                                                         108, 124):
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:4] == b"RIFF" and len(head) >= 12:
        return {b"WEBP": "webp", b"AVI ": "avi", b"WAVE": "wav"}.get(head[8:12])
    if head[4:8] == b"ftyp":
        return _iso_brand(head)
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"):
        return "mov"  # QuickTime files older than the ftyp box
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm" if b"webm" in head[:64] else "mkv"
    if head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):
        return "mpeg"
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:
        return "mpegts"
    if head.startswith(b"FLV\x01"):
        return "flv"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return "asf"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"ID3") or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "mp3"
    return None


def _iso_brand(head: bytes) -> str:
    """ISO base media files: the ftyp brands say video (mp4, mov, 3gp), image (HEIF, AVIF) or audio (M4A)."""
    size = int.from_bytes(head[:4], "big")
    brands = [head[8:12]] + [head[i:i + 4] for i in range(16, min(size, len(head)) - 3, 4)]
    if brands[0] in (b"avif", b"avis") or (brands[0] in (b"mif1", b"msf1") and b"avif" in brands):
        return "avif"
    if brands[0] in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"):
        return "heif"
    if brands[0] in (b"M4A ", b"M4B "):
        return "m4a"
    if brands[0] == b"qt  ":
        return "mov"
    if brands[0].startswith((b"3gp", b"3g2")):
        return "3gp"
    return "mp4"


def kind_of(fmt: str | None) -> str | None:
    """'image', 'video' or None (unknown or unsupported)."""
    return "image" if fmt in IMAGE_FORMATS else "video" if fmt in VIDEO_FORMATS else None


@dataclass(frozen=True)
class MediaInfo:
    """What the headers say. Images: size as displayed (EXIF orientation applied), `frames` 1 for stills.
    Videos: size as stored (the display rotation is known only once a frame is decoded), `frames` as the
    container states it (None when it does not)."""

    kind: str  # image | video
    format: str  # a key of IMAGE_FORMATS or one of VIDEO_FORMATS
    width: int
    height: int
    frames: int | None = None

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass
class Frame:
    """One decoded picture, upright: `index` is the frame number in presentation order (0 for an image)."""

    index: int
    image: np.ndarray  # H×W×3 uint8 RGB
    time: float | None = None  # seconds from the start (videos)


@dataclass(frozen=True)
class Item:
    """One input of a batch: a file, an upload's bytes, or a folder of frames read as one video.
    `error` is set when listing already found the problem (an empty folder, a symbolic link loop)."""

    name: str
    source: Path | bytes
    error: str | None = None


def display_name(path: str | os.PathLike | bytes) -> str:
    """A path as printable text: bytes that are not UTF-8 are shown as \\xNN (JSON and consoles accept it)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


# ---------------------------------------------------------------------------------------------- opening

@contextlib.contextmanager
def _opened(source: Source, name: str | None) -> Iterator[tuple[BinaryIO, str]]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield io.BytesIO(source), name or "<bytes>"
        return
    name = name or display_name(source)
    try:
        f = open(source, "rb")  # noqa: SIM115 (closed below; errors must be told apart from the block's)
    except OSError as e:
        raise InputError(f"{name}: {_os_reason(e)}") from None
    with f:
        yield f, name


def _os_reason(e: OSError) -> str:
    known = {errno.ENOENT: "file not found", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
             errno.ELOOP: "symbolic link loop", errno.EISDIR: "is a folder, not a file",
             errno.ENAMETOOLONG: "file name too long"}
    return known.get(e.errno, f"cannot read ({e.strerror or e})")


def _identify(f: BinaryIO, name: str, notes: list[str] | None) -> str:
    """The sniffed format of an open file (rewound), or an InputError saying what the file is instead."""
    try:
        head = f.read(HEAD_BYTES)
        f.seek(0)
    except OSError as e:
        raise InputError(f"{name}: {_os_reason(e)}") from None
    fmt = sniff(head)
    if fmt in UNSUPPORTED:
        raise InputError(f"{name}: {UNSUPPORTED[fmt]}")
    if fmt is None:
        raise InputError(f"{name}: {_describe_unknown(head)}")
    suffix = Path(name).suffix.lower()
    promised = _SUFFIX_FAMILY.get(suffix, suffix.lstrip("."))
    if notes is not None and suffix in IMAGE_SUFFIXES + VIDEO_SUFFIXES and promised != _FORMAT_FAMILY.get(fmt,
                                                                                                          fmt):
        notes.append(f"{name}: content is a {fmt.upper()} {kind_of(fmt)}, not what the name ({suffix}) says; "
                     "read as its content")
    return fmt


def _describe_unknown(head: bytes) -> str:
    if not head:
        return "empty file (0 bytes)"
    try:
        text = head.decode("utf-8")
        if all(c.isprintable() or c.isspace() for c in text[:-4] or text):
            return "not an image or video (the file holds text)"
    except UnicodeDecodeError:
        pass
    return f"not an image or video (unrecognised content starting {head[:8].hex(' ')})"


def probe(source: Source, name: str | None = None) -> MediaInfo:
    """Kind, format, size and frame count from the headers only (no pixel is decoded)."""
    with _opened(source, name) as (f, name):
        fmt = _identify(f, name, None)
        declared = _webp_size(f.read(32)) if fmt == "webp" else None
        f.seek(0)
        if declared:
            return MediaInfo("image", fmt, *declared, 1)  # Pillow's reader would allocate the canvas
        if kind_of(fmt) == "image":
            im = _pil_open(f, name, fmt)
            w, h = im.size
            if _orientation(im) in (5, 6, 7, 8):
                w, h = h, w
            return MediaInfo("image", fmt, w, h, getattr(im, "n_frames", 1))
        with _av_open(f, name, fmt) as container:
            stream = _video_stream(container, name)
            return MediaInfo("video", fmt, stream.codec_context.width, stream.codec_context.height,
                             stream.frames or None)


# ----------------------------------------------------------------------------------------------- images

def read_image(source: Source, *, name: str | None = None, max_pixels: int = MAX_PIXELS,
               notes: list[str] | None = None) -> np.ndarray:
    """An image file or bytes -> H×W×3 uint8 RGB, upright; notes (reduced decoding, a misleading name) are
    appended to `notes`. A video, an unknown or a broken file is an InputError."""
    with _opened(source, name) as (f, name):
        fmt = _identify(f, name, notes)
        if kind_of(fmt) != "image":
            raise InputError(f"{name}: a {fmt.upper()} video, not an image")
        return _decode_image(f, name, fmt, max_pixels, notes)


def _pil_open(f: BinaryIO, name: str, fmt: str) -> Image.Image:
    """Pillow's reader for the sniffed format, headers only. Its plugin is called directly: the format is
    already known, and our own pixel limit replaces Pillow's global decompression-bomb check."""
    Image.init()
    try:
        return Image.OPEN[IMAGE_FORMATS[fmt]][0](f, None)
    except (OSError, SyntaxError, ValueError, EOFError, KeyError, IndexError, TypeError, struct_error) as e:
        raise InputError(f"{name}: corrupt {fmt.upper()} header ({_first_line(e)})") from None


def _decode_image(f: BinaryIO, name: str, fmt: str, max_pixels: int, notes: list[str] | None) -> np.ndarray:
    declared = _webp_size(f.read(32)) if fmt == "webp" else None
    f.seek(0)
    if declared and declared[0] * declared[1] > max_pixels:  # libwebp allocates the canvas when opened
        w, h = declared
        raise InputError(f"{name}: {w}×{h} WEBP image is over the pixel limit "
                         f"({w * h / 1e6:.1f} MP > {max_pixels / 1e6:g} MP); raise the limit to read it")
    im = _pil_open(f, name, fmt)
    w, h = im.size
    if w < 1 or h < 1:
        raise InputError(f"{name}: {fmt.upper()} header gives an empty image ({w}×{h})")
    if w * h > max_pixels:
        scale = next((s for s in (2, 4, 8) if math.ceil(w / s) * math.ceil(h / s) <= max_pixels), None)
        if fmt != "jpeg" or scale is None:
            raise InputError(f"{name}: {w}×{h} {fmt.upper()} image is over the pixel limit "
                             f"({w * h / 1e6:.1f} MP > {max_pixels / 1e6:g} MP); raise the limit to read it")
        im.draft("RGB", (math.ceil(w / scale), math.ceil(h / scale)))
        _note(notes, f"{name}: {w}×{h} is over the {max_pixels / 1e6:g} MP limit; decoded at 1/{scale} scale "
                     f"({im.size[0]}×{im.size[1]})")
    if getattr(im, "n_frames", 1) > 1:
        _note(notes, f"{name}: the {fmt.upper()} holds {im.n_frames} frames (or pages); the first is used")
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
        raise InputError(f"{name}: corrupt {fmt.upper()} data ({_first_line(e)})") from None
    except (SyntaxError, ValueError, EOFError, IndexError, TypeError, struct_error, MemoryError) as e:
        raise InputError(f"{name}: corrupt {fmt.upper()} data ({_first_line(e)})") from None


def _webp_size(head: bytes) -> tuple[int, int] | None:
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


def _orientation(im: Image.Image) -> int:
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


# ----------------------------------------------------------------------------------------------- videos

def read_frames(source: Source, count: int, *, name: str | None = None, max_pixels: int = MAX_PIXELS,
                notes: list[str] | None = None, stats: dict | None = None) -> Iterator[Frame]:
    """`count` evenly spaced frames of a video, the one frame of an image, or `count` evenly spaced images
    of a folder read as one video (frames sorted by their numeric names, else by name). Frames are decoded
    one at a time as the caller asks. `stats`, if given, receives the input's "kind" (image, video or
    frames), its "format" and the number of video frames "decoded"."""
    if count < 1:
        raise InputError(f"frames to sample must be >= 1, got {count}")
    stats = stats if stats is not None else {}
    stats["decoded"] = 0
    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        stats["kind"] = "frames"
        yield from _folder_frames(Path(source), count, name or display_name(source), max_pixels, notes)
        return
    with _opened(source, name) as (f, name):
        fmt = _identify(f, name, notes)
        stats["kind"], stats["format"] = kind_of(fmt), fmt
        if kind_of(fmt) == "image":
            yield Frame(0, _decode_image(f, name, fmt, max_pixels, notes))
            return
        with _av_open(f, name, fmt) as container:
            yield from _video_frames(container, name, count, max_pixels, notes, stats)


def even_indices(total: int, n: int) -> list[int]:
    """`n` evenly spaced indices over [0, total), first and last included; all of them if total <= n."""
    if total <= 0 or n <= 0:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, total - 1, min(n, total))})


@contextlib.contextmanager
def _av_open(f: BinaryIO, name: str, fmt: str):
    try:
        container = av.open(f, "r", metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{name}: unreadable {fmt.upper()} video ({_first_line(e)})") from None
    with container:
        yield container


def _video_stream(container, name: str):
    if not container.streams.video:
        if container.streams.audio:
            raise InputError(f"{name}: no video stream (audio only)")
        raise InputError(f"{name}: no video stream found (truncated or damaged file?)")
    return container.streams.video[0]


def _video_frames(container, name: str, count: int, max_pixels: int, notes, stats) -> Iterator[Frame]:
    stream = _video_stream(container, name)
    w, h = stream.codec_context.width, stream.codec_context.height
    if w * h > max_pixels:
        raise InputError(f"{name}: {w}×{h} video frames are over the pixel limit "
                         f"({w * h / 1e6:.1f} MP > {max_pixels / 1e6:g} MP); raise the limit to read it")
    stream.codec_context.options = {"max_pixels": str(max_pixels)}  # FFmpeg refuses larger frames itself
    stream.thread_type = "AUTO"
    pts, keys, damaged = _timeline(container, stream)
    total = len(pts)
    if total == 0:
        raise InputError(f"{name}: video has no frames" + (" (damaged container)" if damaged else ""))
    if stream.frames and stream.frames > total:
        _note(notes, f"{name}: the container lists {stream.frames} frames but only {total} are intact "
                     "(truncated or damaged file?)")
    elif damaged:
        _note(notes, f"{name}: {damaged} damaged packet(s) in the container ignored")
    targets = even_indices(total, count)
    if len(targets) < count:
        _note(notes, f"{name}: video has {total} frame(s); all of them used ({count} requested)")
    container.seek(0)
    try:
        if any(p is None for p in pts):
            frames = _decode_in_order(container, stream, targets, stats)
        else:
            frames = _seek_and_decode(container, stream, pts, keys, targets, name, notes, stats)
        for index, frame in frames:
            if frame.width * frame.height > max_pixels:
                raise InputError(f"{name}: frame {index} is {frame.width}×{frame.height}, over the pixel limit")
            time = float(frame.pts * stream.time_base) if frame.pts is not None and stream.time_base else None
            yield Frame(index, _upright(frame, name, notes), time)
    except av.FFmpegError as e:
        raise InputError(f"{name}: unreadable video ({_first_line(e)})") from None


def _timeline(container, stream) -> tuple[list[int | None], list[int], int]:
    """Presentation timestamps of every frame (sorted; None entries when the container has none) and of the
    keyframes, from demuxing alone; the count of damaged packets (flagged corrupt, e.g. cut short by a
    truncated file: not counted as frames) plus 1 if demuxing stopped on bad data."""
    pts: list[int | None] = []
    keys: list[int] = []
    damaged = 0
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the flush packet at the end
            if packet.is_corrupt:
                damaged += 1
                continue
            pts.append(packet.pts)
            if packet.is_keyframe and packet.pts is not None:
                keys.append(packet.pts)
    except (av.FFmpegError, OSError):
        damaged += 1
    if all(p is not None for p in pts):
        pts.sort()
    keys.sort()
    return pts, keys, damaged


def _seek_and_decode(container, stream, pts, keys, targets, name, notes, stats):
    """(index, frame) at each target: seek to the keyframe at or before it unless decoding on from the
    current position is shorter (the target lies in the GOP being decoded)."""
    decoder, position, last = None, None, -1
    for i in targets:
        t = pts[i]
        k = bisect_right(keys, t)
        key = keys[k - 1] if k else None
        if decoder is None or position is None or position >= t or (key is not None and key > position):
            try:
                container.seek(t, stream=stream, backward=True)
            except av.FFmpegError:  # a container that cannot seek: decode the rest in order
                container.seek(0)
                yield from _decode_in_order(container, stream, [j for j in targets if j > last], stats)
                return
            decoder, position = container.decode(stream), None
        try:
            for frame in decoder:
                stats["decoded"] += 1
                if frame.pts is None:
                    raise _NoTimestamps
                position = frame.pts
                if frame.pts >= t:
                    index = min(bisect_left(pts, frame.pts), len(pts) - 1)
                    if index > last:  # two targets can land on one frame after a damaged stretch
                        last = index
                        yield index, frame
                    break
            else:
                decoder = None
                _note(notes, f"{name}: frame {i} could not be decoded (the stream ends early); skipped")
        except _NoTimestamps:
            container.seek(0)
            yield from _decode_in_order(container, stream, [j for j in targets if j > last], stats)
            return
        except av.FFmpegError as e:
            decoder = None
            _note(notes, f"{name}: frame {i}: undecodable video data ({_first_line(e)}); skipped")


class _NoTimestamps(Exception):
    """Decoded frames carry no pts: fall back to counting frames in decode order."""


def _decode_in_order(container, stream, targets, stats):
    """For streams without timestamps: decode from the start, keep the targets, stop after the last."""
    wanted = set(targets)
    for i, frame in enumerate(container.decode(stream)):
        stats["decoded"] += 1
        if i in wanted:
            yield i, frame
            wanted.discard(i)
            if not wanted:
                return


def _upright(frame, name: str, notes) -> np.ndarray:
    """The frame as displayed: the display matrix's rotation / mirroring applied, as ffmpeg's autorotate.

    FFmpeg's matrix maps a stored pixel (x, y) to the displayed (a·x + c·y, b·x + d·y); for the axis-aligned
    cases (all that cameras write) that is a transpose when a = 0 plus a flip per negative entry."""
    rgb = frame.to_ndarray(format="rgb24")
    matrix = next((np.frombuffer(bytes(sd), np.int32) for sd in frame.side_data
                   if sd.type.name == "DISPLAYMATRIX"), None)
    if matrix is None:
        return rgb
    a, b, c, d = (float(matrix[i]) / 65536 for i in (0, 1, 3, 4))
    swap = abs(a) < 1e-3 and abs(d) < 1e-3 and abs(b) > 1e-3 and abs(c) > 1e-3
    if not swap and not (abs(b) < 1e-3 and abs(c) < 1e-3 and abs(a) > 1e-3 and abs(d) > 1e-3):
        _note(notes, f"{name}: display rotation of {frame.rotation}° is not a multiple of 90°; frames used as "
                     "stored")
        return rgb
    if swap:
        rgb = rgb.transpose(1, 0, 2)  # rows now follow the stored x (-> displayed y = b·x), columns y
        rows, cols = b, c
    else:
        rows, cols = d, a
    if rows < 0:
        rgb = rgb[::-1]
    if cols < 0:
        rgb = rgb[:, ::-1]
    return np.ascontiguousarray(rgb)


def _folder_frames(folder: Path, count: int, name: str, max_pixels: int, notes) -> Iterator[Frame]:
    images = frame_files(folder)
    if not images:
        raise InputError(f"{name}: folder has no images to read as video frames")
    targets = even_indices(len(images), count)
    if len(targets) < count:
        _note(notes, f"{name}: folder has {len(images)} frame(s); all of them used ({count} requested)")
    good = 0
    for i in targets:
        try:
            image = read_image(images[i], max_pixels=max_pixels, notes=notes)
        except InputError as e:
            _note(notes, f"{e}; frame skipped")
            continue
        good += 1
        yield Frame(i, image)
    if not good:
        raise InputError(f"{name}: none of the {len(targets)} sampled frames could be read")


def frame_files(folder: Path) -> list[Path]:
    """A frame folder's images, in frame order: by number when every name is one (DeepfakeBench's 000.png
    ...), else by name."""
    images = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if images and all(p.stem.isdigit() for p in images):
        return sorted(images, key=lambda p: (int(p.stem), p.name))
    return sorted(images)


# ------------------------------------------------------------------------------------------------ inputs

def find_media(inputs: Iterable[Source | tuple[str, bytes]], *, folder_as_video: bool = False,
               notes: list[str] | None = None) -> list[Item]:
    """The batch an input list stands for: files as given; folders searched recursively (symbolic links
    followed, each folder once) for files named as images or videos or whose content is one; with
    `folder_as_video`, every folder holding images directly is one video; `(name, bytes)` pairs are uploads.
    Files skipped in folders (not media) are reported in `notes`; problems found while listing (an empty
    folder, a link loop) become items with `error`, so the batch reports them in order."""
    items: list[Item] = []
    for given in inputs:
        if isinstance(given, tuple):
            items.append(Item(given[0], bytes(given[1])))
            continue
        path = Path(os.fsdecode(given)) if isinstance(given, bytes) else Path(given)
        name = display_name(path)
        try:
            is_dir = path.is_dir()
        except OSError as e:
            items.append(Item(name, path, f"{name}: {_os_reason(e)}"))
            continue
        if not is_dir:
            items.append(Item(name, path))
            continue
        found = _walk(path, folder_as_video, notes)
        items.extend(found or [Item(name, path, f"{name}: folder has no images or videos")])
    return items


def _walk(root: Path, folder_as_video: bool, notes: list[str] | None) -> list[Item]:
    items, skipped = [], []
    seen: dict[tuple[int, int], Path] = {}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
        except OSError as e:
            items.append(Item(display_name(folder), folder, f"{display_name(folder)}: {_os_reason(e)}"))
            continue
        if (st.st_dev, st.st_ino) in seen:
            items.append(Item(display_name(folder), folder, f"{display_name(folder)}: symbolic link loop (the "
                                                            f"folder {display_name(seen[st.st_dev, st.st_ino])} "
                                                            "again); not searched twice"))
            continue
        seen[st.st_dev, st.st_ino] = folder
        try:
            entries = sorted(folder.iterdir())
        except OSError as e:
            items.append(Item(display_name(folder), folder, f"{display_name(folder)}: {_os_reason(e)}"))
            continue
        subfolders, frames = [], False
        for entry in entries:
            name = display_name(entry)
            try:
                if entry.is_dir():
                    subfolders.append(entry)
                    continue
                if not entry.exists():
                    items.append(Item(name, entry, f"{name}: {_link_problem(entry)}"))
                    continue
            except OSError as e:
                items.append(Item(name, entry, f"{name}: {_os_reason(e)}"))
                continue
            suffix = entry.suffix.lower()
            kind = "image" if suffix in IMAGE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES else _kind_of_file(
                entry)
            if kind is None:
                skipped.append(name)
            elif kind == "image" and folder_as_video:
                frames = True
            else:
                items.append(Item(name, entry))
        if frames:
            items.append(Item(display_name(folder), folder))
        stack.extend(reversed(subfolders))
    if skipped:
        _note(notes, f"{display_name(root)}: skipped {len(skipped)} file(s) that are not images or videos "
                     f"(e.g. {skipped[0]})")
    return sorted(items, key=lambda item: item.name)


def _link_problem(path: Path) -> str:
    try:
        path.stat()
    except OSError as e:
        return _os_reason(e) if e.errno == errno.ELOOP else "broken symbolic link"
    return "vanished while listing"


def _kind_of_file(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return kind_of(sniff(f.read(HEAD_BYTES)))
    except OSError:
        return "image"  # unreadable: listed, so that reading it reports the reason


def _note(notes: list[str] | None, text: str) -> None:
    if notes is not None:
        notes.append(text)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

