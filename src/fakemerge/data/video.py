"""Evenly spaced frame sampling with PyAV, decoding only what is needed.

For each target frame we seek to the keyframe at or before it and decode forward to the target (a few
frames of one GOP), instead of decoding the whole video. A target close after the current position is
reached by decoding on without a seek. Containers whose streams have no timestamps or cannot seek fall
back to one sequential decode that keeps only the targets.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np

from fakemerge.errors import InputError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def even_indices(total: int, n: int) -> list[int]:
    """`n` evenly spaced frame indices over [0, total), first and last included; fewer if total < n."""
    if total <= 0 or n <= 0:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, total - 1, min(n, total))})


def sample_frames(path: str | os.PathLike, n: int) -> list[np.ndarray]:
    """`n` evenly spaced RGB uint8 frames (HxWx3) of the video at `path`."""
    return [frame for _, frame in sample_indexed(path, n)]


def sample_indexed(path: str | os.PathLike, n: int,
                   stats: dict | None = None) -> list[tuple[int, np.ndarray]]:
    """(frame index, RGB frame) pairs at evenly spaced indices; `stats["decoded"]` counts decoded frames."""
    stats = stats if stats is not None else {}
    stats["decoded"] = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            total = stream.frames or _count_packets(container, stream)
            targets = even_indices(total, n)
            if not targets:
                raise InputError(f"{path}: video has no frames")
            frames = None
            if _seekable(stream):
                try:
                    frames = _seek_decode(container, stream, targets, stats)
                except (av.FFmpegError, ValueError):
                    frames = None
            if frames is None or len(frames) < len(targets):
                container.seek(0)
                frames = _sequential_decode(container, stream, targets, stats)
    except InputError:
        raise
    except (av.FFmpegError, OSError, ValueError) as e:
        cause = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{path}: unreadable video ({cause})") from None
    if not frames:
        raise InputError(f"{path}: no frame could be decoded")
    return frames


def _count_packets(container, stream) -> int:
    """Frame count from demuxing only (no decode), for containers that do not store it."""
    count = sum(1 for p in container.demux(stream) if p.size)
    container.seek(0)
    return count


def _seekable(stream) -> bool:
    return stream.time_base is not None and bool(stream.average_rate or stream.guessed_rate)


def _index_of(frame, stream, start: int, fps: float) -> int | None:
    if frame.pts is None:
        return None
    return int(round(float((frame.pts - start) * stream.time_base) * fps))


def _seek_decode(container, stream, targets: list[int], stats: dict) -> list[tuple[int, np.ndarray]] | None:
    fps = float(stream.average_rate or stream.guessed_rate)
    start = stream.start_time or 0
    gop = 0  # largest keyframe distance seen within one decode run: closer targets are reached by decoding on
    out: list[tuple[int, np.ndarray]] = []
    position, last_key, decoder = -1, None, None
    for target in targets:
        if decoder is None or target - position > max(gop, 1):
            container.seek(start + int(target / fps / stream.time_base), stream=stream, backward=True)
            decoder, last_key = container.decode(stream), None
        for frame in decoder:
            stats["decoded"] += 1
            index = _index_of(frame, stream, start, fps)
            if index is None:
                return None
            if frame.key_frame:
                if last_key is not None and index > last_key:
                    gop = max(gop, index - last_key)
                last_key = index
            position = index
            if index >= target:
                out.append((index, frame.to_ndarray(format="rgb24")))
                break
        else:
            break  # stream ended before the target (frame count overstated): keep what was found
    return out


def _sequential_decode(container, stream, targets: list[int], stats: dict) -> list[tuple[int, np.ndarray]]:
    wanted = set(targets)
    out = []
    for i, frame in enumerate(container.decode(stream)):
        stats["decoded"] += 1
        if i in wanted:
            out.append((i, frame.to_ndarray(format="rgb24")))
            if len(out) == len(wanted):
                break
    return out
