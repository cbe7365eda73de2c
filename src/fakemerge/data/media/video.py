"""Video frames with PyAV: timestamps from demuxing, evenly spaced targets reached by seeking, frames upright."""

from __future__ import annotations

import contextlib
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import av
import numpy as np

from fakemerge.data.media.opening import first_line, note
from fakemerge.errors import InputError


@dataclass
class Frame:
    """One decoded picture, upright: `index` is the frame number in presentation order (0 for an image)."""

    index: int
    image: np.ndarray  # H×W×3 uint8 RGB
    time: float | None = None  # seconds from the start (videos)


def even_indices(total: int, n: int) -> list[int]:
    """`n` evenly spaced indices over [0, total), first and last included; all of them if total <= n."""
    if total <= 0 or n <= 0:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, total - 1, min(n, total))})


@contextlib.contextmanager
def av_open(f: BinaryIO, name: str, fmt: str):
    try:
        container = av.open(f, "r", metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{name}: unreadable {fmt.upper()} video ({first_line(e)})") from None
    with container:
        yield container


def video_stream(container, name: str):
    if not container.streams.video:
        if container.streams.audio:
            raise InputError(f"{name}: no video stream (audio only)")
        raise InputError(f"{name}: no video stream found (truncated or damaged file?)")
    return container.streams.video[0]


def video_frames(container, name: str, count: int, max_pixels: int, notes, stats) -> Iterator[Frame]:
    stream = video_stream(container, name)
    w, h = stream.codec_context.width, stream.codec_context.height
    if w * h > max_pixels:
        raise InputError(f"{name}: {w}×{h} video frames are over the pixel limit "
                         f"({w * h / 1e6:.1f} MP > {max_pixels / 1e6:g} MP); raise the limit to read it")
    stream.codec_context.options = {"max_pixels": str(max_pixels)}  # FFmpeg refuses larger frames itself
    stream.thread_type = "AUTO"
    pts, keys, damaged = timeline(container, stream)
    total = len(pts)
    if total == 0:
        raise InputError(f"{name}: video has no frames" + (" (damaged container)" if damaged else ""))
    if stream.frames and stream.frames > total:
        note(notes, f"{name}: the container lists {stream.frames} frames but only {total} are intact "
                     "(truncated or damaged file?)")
    elif damaged:
        note(notes, f"{name}: {damaged} damaged packet(s) in the container ignored")
    targets = even_indices(total, count)
    if len(targets) < count:
        note(notes, f"{name}: video has {total} frame(s); all of them used ({count} requested)")
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
        raise InputError(f"{name}: unreadable video ({first_line(e)})") from None


def timeline(container, stream) -> tuple[list[int | None], list[int], int]:
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
                note(notes, f"{name}: frame {i} could not be decoded (the stream ends early); skipped")
        except _NoTimestamps:
            container.seek(0)
            yield from _decode_in_order(container, stream, [j for j in targets if j > last], stats)
            return
        except av.FFmpegError as e:
            decoder = None
            note(notes, f"{name}: frame {i}: undecodable video data ({first_line(e)}); skipped")


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
        note(notes, f"{name}: display rotation of {frame.rotation}° is not a multiple of 90°; frames used as "
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
