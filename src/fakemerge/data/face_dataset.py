"""`fakemerge faces`: videos / images / frame folders -> aligned face crops + a DeepfakeBench dataset JSON.

Layout: OUT/<family or real>/<split>/<video>/<frame index>.png and OUT/<dataset>.json, whose entries carry a
`label` string that DeepfakeBench's `label_dict` must know (the known ones are listed below; for a new one
the summary gives the line to add). Runs are resumable: OUT/faces_state.json records every input (its size
and modification time, the video name it got, frames, per-frame face status, notes, error) and the crop
settings. A re-run skips inputs already done (unchanged since), redoes failed and changed ones, and never
duplicates an entry: names are kept per input. The JSON and the state are rewritten atomically after every
finished input, so a crash loses at most the inputs in progress. Inputs run in parallel worker processes.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2

from fakemerge.data import faces
from fakemerge.data.faces import CropPolicy, crop_frame, resize, upscale_note
from fakemerge.data.media import MAX_PIXELS, Item, display_name, find_media, read_frames
from fakemerge.errors import FakemergeError, InputError
from fakemerge.io import atomic_path, write_json
from fakemerge.progress import Progress, silent

STATE = "faces_state.json"
SPLITS = ("train", "val", "test")
# DeepfakeBench's label_dict (training/config/train_config.yaml at 8a4a7bf): label strings it maps to 0/1
DEEPFAKEBENCH_LABELS = {
    "DFD_fake": 1, "DFD_real": 0, "FF-SH": 1, "FF-F2F": 1, "FF-DF": 1, "FF-FS": 1, "FF-NT": 1, "FF-FH": 1,
    "FF-real": 0, "CelebDFv1_real": 0, "CelebDFv1_fake": 1, "CelebDFv2_real": 0, "CelebDFv2_fake": 1,
    "DFDCP_Real": 0, "DFDCP_FakeA": 1, "DFDCP_FakeB": 1, "DFDC_Fake": 1, "DFDC_Real": 0, "DF_fake": 1,
    "DF_real": 0, "UADFV_Fake": 1, "UADFV_Real": 0, "roop_Real": 0, "roop_Fake": 1,
}


@dataclass(frozen=True)
class FacesJob:
    """One `faces` run: where, under which label group and split, and how crops are made."""

    out: Path
    label: str  # real | fake
    policy: CropPolicy  # backend, crop size, margin, no-face policy, minimum face score
    family: str | None = None  # forgery family of fakes (folder name and `family` key)
    dataset: str = "Faces"
    split: str = "test"
    group: str | None = None  # label group / label string; default <dataset>_Real or <dataset>_<family>
    frames: int = 32
    folder_as_video: bool = False
    max_pixels: int = MAX_PIXELS
    workers: int = 1

    def __post_init__(self) -> None:
        if self.label not in ("real", "fake"):
            raise InputError(f"--label {self.label}: choose real or fake")
        if self.split not in SPLITS:
            raise InputError(f"--split {self.split}: choose one of {', '.join(SPLITS)}")
        for flag, value in (("--dataset", self.dataset), ("--family", self.family), ("--group", self.group)):
            if value is not None and (not value.strip() or any(c in value for c in "/\\\0")):
                raise InputError(f"{flag} {value!r}: must be a non-empty name without slashes")
        if self.policy.all_faces:
            raise InputError("faces: one face per frame (DeepfakeBench layout); all_faces is for detect")
        if not 1 <= self.frames <= 4096:
            raise InputError(f"--frames {self.frames}: must be from 1 to 4096")
        if not 1 <= self.workers <= 256:
            raise InputError(f"--workers {self.workers}: must be from 1 to 256")
        if self.max_pixels < 256:
            raise InputError(f"--max-pixels {self.max_pixels}: must be >= 256")

    @property
    def family_dir(self) -> str:
        return "real" if self.label == "real" else (self.family or "fake")

    @property
    def label_group(self) -> str:
        if self.group:
            return self.group
        return f"{self.dataset}_Real" if self.label == "real" else f"{self.dataset}_{self.family_dir}"

    def settings(self) -> dict:
        """What makes crops comparable: a re-run into the same folder must use the same."""
        p = self.policy
        return {"frames": self.frames, "backend": p.backend, "size": p.size, "margin": p.margin,
                "no_face": p.no_face, "min_score": p.min_score, "folder_as_video": self.folder_as_video}


@dataclass
class FacesSummary:
    json_path: Path
    done: list[dict]  # state entries finished in this run
    skipped: int  # inputs already done in an earlier run
    failed: list[dict]
    label_dict_lines: list[str]  # lines to add to DeepfakeBench's label_dict ([] if it knows the group)


def extract_faces(inputs, job: FacesJob, progress: Progress = silent) -> FacesSummary:
    """Run `job` over the inputs (files, folders); see the module doc for layout and resume rules."""
    out = Path(job.out)
    state_path, json_path = out / STATE, out / f"{job.dataset}.json"
    state = _read(state_path, {"settings": job.settings(), "inputs": {}})
    if state.get("settings") != job.settings():
        raise InputError(f"{out}: made with other settings ({_diff(state.get('settings'), job.settings())}); "
                         "use the same ones to resume, or another --out")
    table = _read(json_path, {job.dataset: {}})
    videos = table.setdefault(job.dataset, {}).setdefault(job.label_group, {}).setdefault(job.split, {})
    listing: list[str] = []
    items = find_media(inputs, folder_as_video=job.folder_as_video, notes=listing)
    for note in listing:
        progress("faces", 0, len(items), note=note)
    todo, skipped, failed = [], 0, []
    taken = {e["video"] for e in state["inputs"].values() if e.get("group") == job.label_group
             and e.get("split") == job.split}
    for item in items:
        key, stamp = _key(item)
        old = state["inputs"].get(key)
        if old and (old["group"], old["split"]) != (job.label_group, job.split):
            failed.append(_entry(item, old["video"], job, stamp, error=f"{item.name}: already extracted into "
                                 f"{old['group']}/{old['split']}; not added to {job.label_group}/{job.split}"))
        elif old and old["status"] == "done" and old["stamp"] == stamp:
            skipped += 1
        else:
            name = old["video"] if old else _unique(_video_name(item), taken)
            taken.add(name)
            todo.append((key, item, name, stamp))
    done = []
    total = len(items)
    progress("faces", skipped, total)

    def finished(key: str, entry: dict) -> None:
        state["inputs"][key] = entry
        if entry["status"] == "done":
            videos[entry["video"]] = {"label": job.label_group, "family": job.family_dir,
                                      "frames": entry.pop("paths")}
            done.append(entry)
        else:
            entry.pop("paths", None)
            videos.pop(entry["video"], None)
            failed.append(entry)
        write_json(json_path, table)  # the dataset first: a crash between the two only redoes this input
        write_json(state_path, state)
        progress("faces", skipped + len(done) + len(failed), total, note=entry["error"])

    for key, entry in _run(todo, job):
        finished(key, entry)
    if not todo:
        write_json(json_path, table)
        write_json(state_path, state)
    wanted = int(job.label == "fake")
    lines = [] if DEEPFAKEBENCH_LABELS.get(job.label_group) == wanted else [f"  {job.label_group}: {wanted}"]
    return FacesSummary(json_path, done, skipped, failed, lines)


def _run(todo, job: FacesJob):
    """(key, state entry) per input as each finishes: in this process, or in `job.workers` processes."""
    if job.workers == 1 or len(todo) <= 1:
        for key, item, name, stamp in todo:
            yield key, extract_one(item, name, job, stamp)
        return
    backend = (job.policy.backend, faces._FACTORIES[job.policy.backend], faces._REQUIRES.get(job.policy.backend, ()))
    with ProcessPoolExecutor(min(job.workers, len(todo)), mp_context=get_context("spawn"),
                             initializer=_init_worker, initargs=(backend,)) as pool:
        pending = {pool.submit(extract_one, item, name, job, stamp): key for key, item, name, stamp in todo}
        while pending:
            ready, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in ready:
                yield pending.pop(future), future.result()


def _init_worker(backend) -> None:
    """Workers are fresh processes: a backend registered at run time is registered there too."""
    name, factory, requires = backend
    if name not in faces._FACTORIES:
        faces.register_backend(name, factory, requires)


def extract_one(item: Item, video: str, job: FacesJob, stamp: list) -> dict:
    """Crops of one input written under OUT/<family>/<split>/<video>/; the state entry. Never raises."""
    entry = _entry(item, video, job, stamp)
    try:
        if item.error:
            raise InputError(item.error)
        stats: dict = {}
        for frame in read_frames(item.source, job.frames, name=item.name, max_pixels=job.max_pixels,
                                 notes=entry["notes"], stats=stats):
            where = f"{item.name} frame {frame.index}"
            (crop,) = crop_frame(frame.image, job.policy, where)
            entry["face_status"].append(crop.status)
            if crop.image is not None and crop.status != "face":  # the frame's centre square: to crop size
                crop.note = "; ".join(n for n in (crop.note, upscale_note(where, crop.image, job.policy.size)) if n)
                crop.image = resize(crop.image, job.policy.size)
            if crop.note:
                entry["notes"].append(crop.note)
            if crop.image is not None:
                rel = f"{job.family_dir}/{job.split}/{video}/{frame.index:03d}.png"
                ok, png = cv2.imencode(".png", cv2.cvtColor(crop.image, cv2.COLOR_RGB2BGR))
                with atomic_path(Path(job.out) / rel) as tmp:
                    tmp.write_bytes(png.tobytes())
                entry["paths"].append(rel)
        if not entry["paths"]:
            raise InputError(f"{item.name}: no frame with a face ({len(entry['face_status'])} sampled, "
                             f"--no-face {job.policy.no_face})")
        entry["frames"], entry["status"] = len(entry["paths"]), "done"
        folder = Path(job.out) / job.family_dir / job.split / video
        for stale in set(folder.glob("*.png")) - {Path(job.out) / p for p in entry["paths"]}:
            stale.unlink()  # a changed input redone: crops of frames it no longer has go
    except FakemergeError as e:
        entry["error"] = str(e)
    except Exception as e:  # one broken input must not stop the others
        entry["error"] = f"{item.name}: {type(e).__name__}: {e}"
    return entry


def _entry(item: Item, video: str, job: FacesJob, stamp: list, error: str | None = None) -> dict:
    return {"input": item.name, "video": video, "group": job.label_group, "split": job.split, "stamp": stamp,
            "status": "failed", "frames": 0, "face_status": [], "notes": [], "error": error, "paths": []}


def _key(item: Item) -> tuple[str, list]:
    """The input's identity across runs (absolute path) and its stamp (size, mtime): changed -> redone."""
    path = Path(item.source) if not isinstance(item.source, bytes) else None
    if path is None:
        return f"<bytes>/{item.name}", [len(item.source), 0]
    key = display_name(os.path.abspath(path))
    try:
        st = path.stat()
        return key, [st.st_size, st.st_mtime_ns]
    except OSError:
        return key, [None, None]


def _video_name(item: Item) -> str:
    """The input's name without suffix (a frame folder keeps its name), safe as a folder name."""
    name = Path(item.name)
    stem = name.name if isinstance(item.source, Path) and item.source.is_dir() else name.stem
    return "".join(c if c.isprintable() and c not in '<>:"|?*' else "_" for c in stem) or "input"


def _unique(name: str, taken: set) -> str:
    candidate, i = name, 2
    while candidate in taken:
        candidate, i = f"{name}_{i}", i + 1
    return candidate


def _read(path: Path, default: dict) -> dict:
    if not path.exists():
        return default
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: cannot resume from it ({e})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: cannot resume from it (not a JSON object)")
    return obj


def _diff(old: dict | None, new: dict) -> str:
    old = old or {}
    return ", ".join(f"{k} {old.get(k)!r} now {v!r}" for k, v in new.items() if old.get(k) != v)

