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

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fakemerge.data.media.formats import (
    HEAD_BYTES,
    IMAGE_FORMATS,
    IMAGE_SUFFIXES,
    UNSUPPORTED,
    VIDEO_FORMATS,
    VIDEO_SUFFIXES,
    kind_of,
    sniff,
)
from fakemerge.data.media.images import decode_image, orientation, pil_open, reduced_scale, webp_size
from fakemerge.data.media.listing import Item, find_media, frame_files
from fakemerge.data.media.opening import Source, display_name, identify, note, opened
from fakemerge.data.media.video import Frame, av_open, even_indices, video_frames, video_stream
from fakemerge.errors import InputError

MAX_PIXELS = 40_000_000  # default limit: 8K video frames (33 MP) pass, a 48 MP phone JPEG decodes at 1/2

__all__ = ["HEAD_BYTES", "IMAGE_FORMATS", "IMAGE_SUFFIXES", "MAX_PIXELS", "UNSUPPORTED", "VIDEO_FORMATS",
           "VIDEO_SUFFIXES", "Frame", "Item", "MediaInfo", "Source", "display_name", "even_indices", "find_media",
           "frame_files", "kind_of", "probe", "read_frames", "read_image", "sniff"]


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

    def fits(self, max_pixels: int) -> bool:
        """Whether it can be read within `max_pixels` (a JPEG over it is decoded reduced, down to 1/8)."""
        return (self.kind == "image" and reduced_scale(self.width, self.height, self.format, max_pixels)
                is not None) or self.pixels <= max_pixels


def probe(source: Source, name: str | None = None) -> MediaInfo:
    """Kind, format, size and frame count from the headers only (no pixel is decoded)."""
    with opened(source, name) as (f, name):
        fmt = identify(f, name, None)
        declared = webp_size(f.read(32)) if fmt == "webp" else None
        f.seek(0)
        if declared:
            return MediaInfo("image", fmt, *declared, 1)  # Pillow's reader would allocate the canvas
        if kind_of(fmt) == "image":
            im = pil_open(f, name, fmt)
            w, h = im.size
            if orientation(im) in (5, 6, 7, 8):
                w, h = h, w
            return MediaInfo("image", fmt, w, h, getattr(im, "n_frames", 1))
        with av_open(f, name, fmt) as container:
            stream = video_stream(container, name)
            return MediaInfo("video", fmt, stream.codec_context.width, stream.codec_context.height,
                             stream.frames or None)


def read_image(source: Source, *, name: str | None = None, max_pixels: int = MAX_PIXELS,
               notes: list[str] | None = None) -> np.ndarray:
    """An image file or bytes -> H×W×3 uint8 RGB, upright; notes (reduced decoding, a misleading name) are
    appended to `notes`. A video, an unknown or a broken file is an InputError."""
    with opened(source, name) as (f, name):
        fmt = identify(f, name, notes)
        if kind_of(fmt) != "image":
            raise InputError(f"{name}: a {fmt.upper()} video, not an image")
        return decode_image(f, name, fmt, max_pixels, notes)


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
    with opened(source, name) as (f, name):
        fmt = identify(f, name, notes)
        stats["kind"], stats["format"] = kind_of(fmt), fmt
        if kind_of(fmt) == "image":
            yield Frame(0, decode_image(f, name, fmt, max_pixels, notes))
            return
        with av_open(f, name, fmt) as container:
            yield from video_frames(container, name, count, max_pixels, notes, stats)


def _folder_frames(folder: Path, count: int, name: str, max_pixels: int, notes) -> Iterator[Frame]:
    images = frame_files(folder)
    if not images:
        raise InputError(f"{name}: folder has no images to read as video frames")
    targets = even_indices(len(images), count)
    if len(targets) < count:
        note(notes, f"{name}: folder has {len(images)} frame(s); all of them used ({count} requested)")
    good = 0
    for i in targets:
        try:
            image = read_image(images[i], max_pixels=max_pixels, notes=notes)
        except InputError as e:
            note(notes, f"{e}; frame skipped")
            continue
        good += 1
        yield Frame(i, image)
    if not good:
        raise InputError(f"{name}: none of the {len(targets)} sampled frames could be read")
