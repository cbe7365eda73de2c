"""Write a ForgeryLab dataset: PNG frames + a DeepfakeBench-style JSON + one contact sheet per family.

Layout: OUT/ForgeryLab.json, OUT/<family>/<split>/<video>/<frame>.png (reals under OUT/real/...),
OUT/contact/<family>.png. Identities are disjoint across splits. A "video" is `frames` frames of one
identity drifting in pose, expression and light, with one camera; a fake video keeps its forgery plan
(donor, colour gain, edit) across frames. Every pixel is a function of (seed, split, identity, video, frame).

| scale | identities train/val/test | real videos per identity | fake videos per identity & family | frames |
|-------|---------------------------|--------------------------|-----------------------------------|--------|
| small | 120 / 20 / 24             | 2                        | 3                                 | 4      |
| full  | 240 / 60 / 100            | 2                        | 2                                 | 4      |

So a full test split holds 800 reals and 800 fakes per family; a small one 192 reals and 288 per family.
A small train split gives a specialist 960 reals + 1440 fakes: with fewer fake videos (1 per identity) the
FS/FE specialists stayed below 0.80 AUC at the demo's budget (measured; see families.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fakemerge.io import atomic_path, write_json
from fakemerge.lab.families import FAMILIES, SEEN_FAMILIES, STRENGTH, UNSEEN_FAMILIES, forge, plan_video
from fakemerge.lab.render import finish, moved, random_camera, random_identity, random_pose, render, sensor
from fakemerge.progress import Progress, silent

DATASET = "ForgeryLab"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Scale:
    identities: tuple[int, int, int]
    real_videos: int = 2
    fake_videos: int = 1
    frames: int = 4


SCALES = {"small": Scale((120, 20, 24), fake_videos=3), "full": Scale((240, 60, 100), fake_videos=2)}


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def _identity(seed: int, split: int, identity: int):
    return random_identity(_rng(seed, split, identity, 0))


def render_video(seed: int, split: int, identity: int, video: int, family: str, size: int,
                 frames: int, n_ids: int = 1) -> list[np.ndarray]:
    """The uint8 RGB frames of one video (family "real" or a forgery family); swaps take their donor
    among the split's `n_ids` identities."""
    ident = _identity(seed, split, identity)
    rng = _rng(seed, split, identity, 1 + video, 0 if family == "real" else 1 + FAMILIES.index(family))
    pose, cam = random_pose(rng), random_camera(rng)
    step = rng.normal(0, [0.006, 0.006, 1.5, 0.08, 0.15])
    donor = None
    if family.startswith("FS") and n_ids > 1:
        donor = _identity(seed, split, (identity + 1 + int(rng.integers(n_ids - 1))) % n_ids)
    plan = None if family == "real" else plan_video(family, rng, donor)
    out = []
    for t in range(frames):
        p = moved(pose, step, t)
        captured = sensor(render(ident, p, size), cam, rng)
        img = captured if plan is None else forge(family, captured, ident, p, plan)
        out.append(finish(img, cam))
    return out


def _videos(scale: Scale):
    """(split index, identity, video index, family) for every video of the dataset."""
    for s, n_ids in enumerate(scale.identities):
        for i in range(n_ids):
            for v in range(scale.real_videos):
                yield s, i, v, "real"
            for family in FAMILIES:
                for v in range(scale.fake_videos):
                    yield s, i, v, family


def _write_png(path: Path, img: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img[..., ::-1]))
    if not ok:  # pragma: no cover
        raise RuntimeError(f"{path}: PNG encoding failed")
    path.write_bytes(buf.tobytes())


LAB_SOURCES = Path(__file__).parent


def settings_hash(**settings) -> str:
    """Cache key of a lab product: its settings plus the source of the lab's code, so a cached dataset or
    base is rebuilt when the rendering, the forgeries or the pretraining change (not only the settings)."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for source in sorted(LAB_SOURCES.glob("*.py")):
        h.update(source.read_bytes())
    return h.hexdigest()[:16]


def generate(out_dir: str | Path, *, size: int = 64, seed: int = 0, scale: str = "small",
             progress: Progress = silent, workers: int | None = None) -> Path:
    """Generate (or reuse, when OUT already holds the same settings) a ForgeryLab dataset; returns its JSON.

    Videos are rendered by `workers` processes (default: one per CPU core, at most 8); every pixel is a
    function of the seed and the video's coordinates, so the bytes do not depend on the worker count."""
    if scale not in SCALES:
        raise ValueError(f"scale {scale!r}: expected one of {', '.join(SCALES)}")
    if not 32 <= size <= 256:
        raise ValueError(f"size {size}: ForgeryLab renders 32 to 256 px")
    out = Path(out_dir)
    js = out / f"{DATASET}.json"
    key = settings_hash(size=size, seed=seed, scale=scale, strength=STRENGTH, version=4)
    stamp = out / ".settings"
    if js.is_file() and stamp.is_file() and stamp.read_text() == key:
        return js
    sc = SCALES[scale]
    videos = list(_videos(sc))
    tree: dict = {}
    examples: dict[str, list] = {}
    jobs = [(out, seed, s, i, v, family, size, sc.frames, sc.identities[s]) for s, i, v, family in videos]
    workers = max(1, min(workers or os.cpu_count() or 1, 8))
    with ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        results = pool.map(_write_video, jobs, chunksize=64) if pool else map(_write_video, jobs)
        for n, ((s, i, v, family), (name, paths, first)) in enumerate(zip(videos, results, strict=True)):
            split = SPLITS[s]
            group = f"{DATASET}_Real" if family == "real" else f"{DATASET}_{family}"
            tree.setdefault(group, {s_: {} for s_ in SPLITS})[split][name] = {
                "label": group, "family": family, "frames": paths}
            if split == "test" and v == 0 and len(examples.setdefault(family, [])) < 8:
                examples[family].append((i, first))
            progress("generate", n + 1, len(videos))
    write_json(js, {DATASET: tree})
    _contact_sheets(out / "contact", examples, seed, size, sc.frames)
    stamp.write_text(key)
    return js


def _write_video(job: tuple) -> tuple[str, list[str], np.ndarray | None]:
    """Render one video and write its frames; returns its name, frame paths and (for the contact sheets'
    candidates, first test videos) its first frame."""
    out, seed, s, i, v, family, size, frames, n_ids = job
    name = f"{family}/{SPLITS[s]}/id{i:04d}_v{v}"
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    images = render_video(seed, s, i, v, family, size, frames, n_ids)
    paths = []
    for t, img in enumerate(images):
        _write_png(folder / f"{t:03d}.png", img)
        paths.append(f"{name}/{t:03d}.png")
    return name, paths, images[0] if SPLITS[s] == "test" and v == 0 else None


def _contact_sheets(out: Path, examples: dict[str, list], seed: int, size: int, frames: int) -> None:
    """One PNG per family: top row real frames, bottom row the fakes of the same identities."""
    out.mkdir(parents=True, exist_ok=True)
    test = SPLITS.index("test")
    for family in FAMILIES:
        pairs = [(render_video(seed, test, i, 0, "real", size, frames)[0], fake) for i, fake in examples[family]]
        top = np.concatenate([p[0] for p in pairs], axis=1)
        bottom = np.concatenate([p[1] for p in pairs], axis=1)
        sheet = cv2.resize(np.concatenate([top, bottom], axis=0), None, fx=2, fy=2,
                           interpolation=cv2.INTER_NEAREST)
        with atomic_path(out / f"{family}.png") as tmp:
            _write_png(tmp, sheet)


__all__ = ["generate", "render_video", "SCALES", "SEEN_FAMILIES", "UNSEEN_FAMILIES"]
