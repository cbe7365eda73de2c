"""Dataset readers: DeepfakeBench / DF40 JSON, a plain folder tree, or a CSV manifest -> records.

`read_dataset(data, options, splits)` picks the reader from what DATA is:
  * a `.json` file: DeepfakeBench layout
    {dataset: {label_group: {split: {[c23|c40|raw:] {video: {label, frames, [family]}}}}}};
  * a `.csv` file: columns path,label[,family,video,split];
  * a folder holding exactly one DeepfakeBench JSON (or one CSV) at its top: that file, root = the folder;
  * any other folder: ROOT/<family or real>/<split>/[<video>/]<image>.

What the field's files need (tests/test_field_datasets.py has a fixture of each):
  * only the requested splits are parsed strictly; a malformed other split is a warning (DeepfakeBench's
    DFDC.json has a single `{label, frames}` entry as `val`), parsed only to check split overlap;
  * a compression level is chosen, never substituted: a requested level the file lacks is an error;
  * family names keep the method's identity (`fakemerge.data.families`);
  * frames are sampled evenly per video (`frames_per_video`), never the first N (DeepfakeBench's trap), in
    frame-number order (the JSONs list them in directory order);
  * splits sharing frames or videos are an error unless allowed (Celeb-DF-v2: val == test; e4e: train ==
    test), and the overlap is recorded;
  * `path_map` rewrites path prefixes (DF40's absolute cluster paths); Windows backslashes are fixed.
Frame paths are relative to the data root (the file's folder unless `root` is given). Video ids are full
relative paths of the video folder, so two methods' same-named videos never merge (a DeepfakeBench trap).
The library never prints: warnings are returned in `Dataset.warnings` for the caller to show.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from fakemerge.data.families import FamilyMap, family_of
from fakemerge.data.records import REAL, Record
from fakemerge.errors import InputError
from fakemerge.io import read_mapping

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")
COMPRESSIONS = ("c23", "c40", "raw")
DEFAULT_COMPRESSION = "c23"  # DeepfakeBench's default `compression`
LABEL_KEY_HINT = "expected a label containing 'real' or 'fake', the label group's own name, or 0/1"


@dataclass
class Dataset:
    """The records of the requested splits of one dataset, plus what the caller must show or record."""

    source: str
    root: Path
    records: list[Record]
    warnings: list[str] = field(default_factory=list)
    overlap: dict[str, dict] = field(default_factory=dict)  # "val/test": {"frames": n, "videos": n, ...}


def read_dataset(data: str | os.PathLike, *, root: str | os.PathLike | None = None,
                 splits: Sequence[str] | None = None, compression: str | None = None,
                 family_map: FamilyMap | None = None, path_map: Sequence[tuple[str, str]] = (),
                 frames_per_video: int | None = None, allow_split_overlap: bool = False) -> Dataset:
    """Read DATA (see the module doc) for `splits` (None: all). Raises InputError naming DATA for anything
    that cannot be honoured; returns warnings for what the user should see."""
    data = Path(data)
    family_map = family_map or FamilyMap()
    if compression is not None and compression not in COMPRESSIONS:
        raise InputError(f"--compression {compression}: choose one of {', '.join(COMPRESSIONS)}")
    if frames_per_video is not None and frames_per_video < 1:
        raise InputError(f"--frames-per-video {frames_per_video}: must be at least 1")
    if not data.exists():
        raise InputError(f"{data}: dataset not found")
    warnings: list[str] = []
    base = Path(root) if root is not None else (data if data.is_dir() else data.parent)
    table = _dataset_file_in(data) if data.is_dir() else data
    _check_root(base)
    if table is None:
        records = _records_from_tree(base, family_map)
    elif table.suffix.lower() == ".csv":
        records = _records_from_csv(table, family_map)
    else:
        obj = read_mapping(table, "DeepfakeBench dataset JSON")
        records = records_from_deepfakebench(obj, str(table), splits=splits, compression=compression,
                                             family_map=family_map, warnings=warnings)
    if (table is None or table.suffix.lower() == ".csv") and compression is not None:
        warnings.append(f"{data}: not a DeepfakeBench JSON, so --compression {compression} does not apply")
    source = str(table or data)
    records = _map_paths(records, path_map, source, warnings)
    overlap = split_overlap(records, splits)
    if overlap and not allow_split_overlap:
        pair, o = next(iter(overlap.items()))
        raise InputError(f"{source}: splits {pair.replace('/', ' and ')} share {o['videos']} video(s) and "
                         f"{o['frames']} frame(s) (e.g. {o['example']}): selecting on one would select on the "
                         "other; pass --allow-split-overlap to proceed (the report records it)")
    for pair, o in overlap.items():
        warnings.append(f"{source}: splits {pair.replace('/', ' and ')} share {o['videos']} video(s) and "
                        f"{o['frames']} frame(s) (allowed by --allow-split-overlap)")
    if splits is not None:
        records = [r for r in records if r.split in splits]
    if frames_per_video is not None:
        records = sample_per_video(records, frames_per_video)
    return Dataset(source, base, records, warnings, overlap)


def load_records(data: str | os.PathLike, root: str | os.PathLike | None = None,
                 compression: str | None = None) -> tuple[Path, list[Record]]:
    """(root, records of every split) with default options — `read_dataset` for callers that need no
    options and own the data (ForgeryLab, the demo): what `read_dataset` would warn about is an error here."""
    ds = read_dataset(data, root=root, compression=compression)
    if ds.warnings:
        raise InputError(ds.warnings[0])
    return ds.root, ds.records


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise InputError(f"{root}: data root folder not found")


def _looks_like_deepfakebench(obj: object) -> bool:
    """{dataset: {group: {split: ...}}} with at least one known split name."""
    if not isinstance(obj, dict) or len(obj) != 1:
        return False
    groups = next(iter(obj.values()))
    return isinstance(groups, dict) and any(
        isinstance(g, dict) and any(s in g for s in SPLITS) for g in groups.values())


def _dataset_file_in(folder: Path) -> Path | None:
    """The one DeepfakeBench JSON (else the one CSV manifest) at the folder's top, or None for a tree."""
    jsons = []
    for p in sorted(folder.glob("*.json")):
        try:
            if _looks_like_deepfakebench(json.loads(p.read_text(encoding="utf-8"))):
                jsons.append(p)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
    csvs = sorted(folder.glob("*.csv"))
    for found in (jsons, csvs):
        if len(found) > 1:
            raise InputError(f"{folder}: several dataset files ({', '.join(p.name for p in found)}); "
                             "pass one of them")
        if found:
            return found[0]
    return None


def posix(path: str) -> str:
    """Normalise a stored frame path: Windows backslashes -> '/', no leading './'."""
    return str(PurePosixPath(path.replace("\\", "/")))


def classify_label(label: object, group: str, source: str) -> int:
    """DeepfakeBench label string -> 0 real / 1 fake; unknown strings are an error, not a guess."""
    if isinstance(label, bool) or label is None:
        raise InputError(f"{source}: unknown label {label!r} ({LABEL_KEY_HINT})")
    if isinstance(label, int) and label in (0, 1):
        return label
    text = str(label).strip()
    low = text.lower()
    if text in ("0", "1"):
        return int(text)
    if "real" in low:
        return 0
    if "fake" in low or (text == group and "real" not in group.lower()):
        return 1
    raise InputError(f"{source}: unknown label {text!r} ({LABEL_KEY_HINT})")


def _videos_of_split(node: dict, compression: str | None, where: str) -> tuple[dict, bool]:
    """(a split's {video: entry}, whether it had compression levels). FF++-style splits have an extra level:
    the requested one (default c23) must be there — never another in its place."""
    levels = [k for k in node if k in COMPRESSIONS and isinstance(node[k], dict) and "frames" not in node[k]]
    if not levels:
        return node, False
    want = compression or DEFAULT_COMPRESSION
    if want not in levels:
        flag = "--compression" if compression else f"the default compression {DEFAULT_COMPRESSION}; pass --compression"
        raise InputError(f"{where} has compression level(s) {', '.join(levels)} but not {want} "
                         f"({flag} {levels[0]} to use {levels[0]})")
    return node[want], True


def records_from_deepfakebench(obj: dict, source: str, *, splits: Sequence[str] | None = None,
                               compression: str | None = None, family_map: FamilyMap | None = None,
                               warnings: list[str] | None = None) -> list[Record]:
    """Records of a parsed DeepfakeBench JSON (see the module doc). `source` names the file in errors.

    The requested `splits` (None: all) must be well-formed; any other split is parsed only for the overlap
    check, and a malformed one becomes a line in `warnings`.
    """
    if not _looks_like_deepfakebench(obj):
        raise InputError(f"{source}: not a DeepfakeBench dataset JSON (expected {{dataset: {{group: "
                         "{train|val|test: {video: {label, frames}}}}}})")
    family_map = family_map or FamilyMap()
    warnings = warnings if warnings is not None else []
    dataset, groups = next(iter(obj.items()))
    entries = []  # (split, group, video name, label, family, frames)
    unnamed: set[str] = set()
    had_levels = False
    for group, group_splits in groups.items():
        if not isinstance(group_splits, dict):
            raise InputError(f"{source}: label group {group!r} is not an object")
        for split, node in group_splits.items():
            requested = splits is None or split in splits
            try:
                parsed, levels = _parse_split(node, source, dataset, group, split, compression, family_map)
            except InputError as e:
                if requested:
                    raise
                warnings.append(f"{e} — split {split} is not used here, so it is ignored")
                continue
            had_levels |= levels
            for entry, named in parsed:
                entries.append(entry)
                if not named and requested:
                    unnamed.add(entry[1])
    if compression is not None and not had_levels:
        warnings.append(f"{source}: has no compression levels, so --compression {compression} does not apply")
    if unnamed:
        warnings.append(f"{source}: label group(s) {', '.join(sorted(unnamed))} match no family map entry, "
                        "'family' key or DF40 method: each is its own family (--family-map FILE.yaml groups them)")
    # Video id = the frames' folder, unless another entry of the split shares that folder (a flat folder of
    # several videos: then dataset/group/split/name). The same video listed in two splits keeps one id.
    folder_of = [_common_folder(e[5]) for e in entries]
    uses = Counter((e[0], f) for e, f in zip(entries, folder_of, strict=True))
    records = []
    for (split, group, name, label, family, frames), folder in zip(entries, folder_of, strict=True):
        video = folder if folder and uses[(split, folder)] == 1 else f"{dataset}/{group}/{split}/{name}"
        records.extend(Record(f, label, family, video, split, group) for f in frames)
    return records


def _parse_split(node: object, source: str, dataset: str, group: str, split: str, compression: str | None,
                 family_map: FamilyMap) -> tuple[list[tuple[tuple, bool]], bool]:
    """[(entry, whether a rule named its family)], whether the split had compression levels."""
    where = f"{source}: {group}/{split}"
    if not isinstance(node, dict):
        raise InputError(f"{where} is not an object of videos")
    if "frames" in node and isinstance(node.get("frames"), list):
        raise InputError(f"{where} is a single {{label, frames}} entry, not an object of videos")
    videos, levels = _videos_of_split(node, compression, where)
    out = []
    for name, entry in videos.items():
        at = f"{where}/{name}"
        if not isinstance(entry, dict) or not isinstance(entry.get("frames"), list):
            raise InputError(f"{at}: video entry has no 'frames' list")
        label = classify_label(entry.get("label", group), group, at)
        if label == 0:
            family, named = REAL, True
        else:
            explicit = entry.get("family")
            family, named = family_of(group, dataset, str(explicit) if explicit else None, family_map)
        frames = [posix(str(f)) for f in entry["frames"]]
        out.append(((split, group, name, label, family, frames), named))
    return out, levels


def _common_folder(frames: list[str]) -> str | None:
    parents = {str(PurePosixPath(f).parent) for f in frames}
    return parents.pop() if len(parents) == 1 and "." not in parents else None


def _map_paths(records: list[Record], path_map: Sequence[tuple[str, str]], source: str,
               warnings: list[str]) -> list[Record]:
    """Rewrite path prefixes OLD -> NEW (first match wins) in frame paths and video ids."""
    if not path_map:
        return records
    used = [0] * len(path_map)

    def remap(path: str, count: bool) -> str:
        for i, (old, new) in enumerate(path_map):
            if path.startswith(old):
                used[i] += count
                return posix(new + path[len(old):]) if (new + path[len(old):]) else path
        return path

    out = [Record(remap(r.path, True), r.label, r.family, remap(r.video, False), r.split, r.method)
           for r in records]
    for (old, new), n in zip(path_map, used, strict=True):
        if n == 0:
            warnings.append(f"{source}: --path-map {old}={new} matches no frame path")
    return out


def split_overlap(records: Iterable[Record], splits: Sequence[str] | None = None) -> dict[str, dict]:
    """Pairs of splits (at least one of them in `splits`; None: any) sharing frames or video ids."""
    frames, videos = defaultdict(set), defaultdict(set)
    for r in records:
        frames[r.split].add(r.path)
        videos[r.split].add(r.video)
    names = sorted(frames, key=lambda s: (SPLITS.index(s) if s in SPLITS else len(SPLITS), s))
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if splits is not None and a not in splits and b not in splits:
                continue
            shared_frames, shared_videos = frames[a] & frames[b], videos[a] & videos[b]
            if shared_frames or shared_videos:
                example = min(shared_videos) if shared_videos else min(shared_frames)
                out[f"{a}/{b}"] = {"frames": len(shared_frames), "videos": len(shared_videos), "example": example}
    return out


def _frame_number(path: str) -> int | None:
    stem = PurePosixPath(path).stem
    return int(stem) if stem.isdigit() else None


def sample_per_video(records: list[Record], n: int) -> list[Record]:
    """At most `n` evenly spaced frames of each (split, video), first and last included, in frame-number order
    when every frame stem is a number (else in listed order)."""
    from fakemerge.data.media import even_indices

    by_video: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for r in records:
        by_video[(r.split, r.video)].append(r)
    out = []
    for frames in by_video.values():
        if all(_frame_number(r.path) is not None for r in frames):
            frames = sorted(frames, key=lambda r: _frame_number(r.path))
        out.extend(frames[i] for i in even_indices(len(frames), n))
    return out


def _records_from_tree(root: Path, family_map: FamilyMap) -> list[Record]:
    """ROOT/<family or real>/<split>/[<video>/]<image>; an image directly under a split is its own video."""
    records = []
    for family_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        is_real = family_dir.name.lower() == REAL
        family = REAL if is_real else (family_map.lookup(family_dir.name) or family_dir.name)
        for split_dir in sorted(p for p in family_dir.iterdir() if p.is_dir()):
            for image in sorted(split_dir.rglob("*")):
                if image.suffix.lower() not in IMAGE_SUFFIXES or not image.is_file():
                    continue
                rel = image.relative_to(root).as_posix()
                video_dir = image.parent.relative_to(root).as_posix()
                video = rel if image.parent == split_dir else video_dir
                records.append(Record(rel, 0 if is_real else 1, family, video, split_dir.name, family_dir.name))
    if not records:
        raise InputError(f"{root}: no images found (expected ROOT/<family or real>/<split>/[<video>/]"
                         "<image>, a DeepfakeBench JSON or a CSV manifest)")
    return records


def _records_from_csv(path: Path, family_map: FamilyMap) -> list[Record]:
    """Columns path,label[,family,video,split]; without `video` each image is its own video, without
    `split` every row is 'test' (a manifest without splits is for evaluation)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: cannot read CSV manifest ({e})") from None
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise InputError(f"{path}: CSV manifest needs a header with columns path,label[,family,video,split]")
    records = []
    for i, row in enumerate(rows, start=2):
        if not row.get("path"):
            raise InputError(f"{path}: line {i}: empty path")
        label = classify_label(row["label"], "", f"{path}: line {i}")
        rel = posix(row["path"])
        method = REAL if label == 0 else (row.get("family") or "fake")
        family = REAL if label == 0 else (family_map.lookup(method) or method)
        records.append(Record(rel, label, family, posix(row.get("video") or rel), row.get("split") or "test",
                              method))
    return records
