"""ForgeryLab generation speed: images per second on ONE core, per family, at 64 px (target >= 500).

"synth" times `render_video` alone (render + camera + forgery + JPEG, in memory); "synth+png" adds the
PNG encoding that `generate` writes. Every family is timed over the same identities and videos, in
interleaved rounds (one batch of each family per round), so load drifts of a shared machine hit all alike;
the best round estimates the uncontended speed (the median is printed too).

    python benchmarks/lab_bench.py --size 64 --videos 40 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from fakemerge.lab.families import FAMILIES  # noqa: E402
from fakemerge.lab.generate import render_video  # noqa: E402

cv2.setNumThreads(1)


def _batch(family: str, size: int, videos: int, frames: int, png: bool) -> float:
    """Seconds to make `videos` videos of `family` (train split, 100 identities for donors)."""
    t = time.perf_counter()
    for v in range(videos):
        for img in render_video(0, 0, v, 0, family, size, frames, 100):
            if png:
                cv2.imencode(".png", img)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--videos", type=int, default=40, help="videos per family per round")
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    families = ["real", *FAMILIES]
    n = args.videos * args.frames
    times: dict[tuple[str, bool], list[float]] = {(f, p): [] for f in families for p in (False, True)}
    for f in families:  # warm-up (imports, caches)
        _batch(f, args.size, 2, args.frames, True)
    for _ in range(args.rounds):
        for f in families:
            for png in (False, True):
                times[f, png].append(_batch(f, args.size, args.videos, args.frames, png))
    print(f"ForgeryLab generation, {args.size} px, 1 core, {n} images x {args.rounds} rounds per family")
    print(f"{'family':<14}{'synth img/s':>14}{'(median)':>10}{'synth+png img/s':>18}{'(median)':>10}")
    for f in families:
        best = [n / min(times[f, p]) for p in (False, True)]
        med = [n / statistics.median(times[f, p]) for p in (False, True)]
        print(f"{f:<14}{best[0]:>14.0f}{med[0]:>10.0f}{best[1]:>18.0f}{med[1]:>10.0f}")
    all_best = sum(n / min(times[f, True]) for f in families) / len(families)
    print(f"{'mean':<14}{'':>24}{all_best:>18.0f}   (target >= 500 img/s per core)")
    print(f"numpy {np.__version__}, OpenCV {cv2.__version__}")


if __name__ == "__main__":
    main()
