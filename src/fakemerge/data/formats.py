"""Dataset readers: DeepfakeBench JSON, a plain folder tree, or a CSV manifest -> (root, [Record]).

`load_records(data)` picks the reader from what DATA is:
  * a `.json` file: DeepfakeBench layout
    {dataset: {label_group: {split: {[c23|c40:] {video: {label, frames, [family]}}}}}};
  * a `.csv` file: columns path,label[,family,video,split];
  * a folder holding exactly one DeepfakeBench JSON (or one CSV) at its top: that file, root = the folder;
  * any other folder: ROOT/<family or real>/<split>/[<video>/]<image>.
Frame paths are relative to the data root (the file's folder unless `root` is given), POSIX-separated
(DeepfakeBench JSONs made on Windows carry backslashes: fixed here). Video ids are full relative paths of the
video folder, so two methods' same-named videos never merge (a DeepfakeBench trap).
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path, PurePosixPath

from fakemerge.data.records import REAL, Record
from fakemerge.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")
COMPRESSIONS = ("c23", "c40", "raw", "c0")
LABEL_KEY_HINT = "expected a label containing 'real' or 'fake', the label group's own name, or 0/1"


def load_records(data: str | os.PathLike, root: str | os.PathLike | None = None,
                 compression: str = "c23") -> tuple[Path, list[Record]]:
    """Read any supported dataset description; returns the data root and its records (all splits)."""
    data = Path(data)
    if not data.exists():
        raise InputError(f"{data}: dataset not found")
    if data.is_dir():
        table = _dataset_file_in(data)
        if table is None:
            base = Path(root) if root is not None else data
            _check_root(base)
            return base, _records_from_tree(base)
        root = root if root is not None else data
        data = table
    base = Path(root) if root is not None else data.parent
    _check_root(base)
    if data.suffix.lower() == ".csv":
        return base, _records_from_csv(data)
    return base, records_from_deepfakebench(_read_json(data), str(data), compression)


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise InputError(f"{root}: data root folder not found")


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: malformed JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: not a DeepfakeBench dataset JSON (top level is not an object)")
    return obj


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


def family_from_group(group: str, dataset: str) -> str:
    """'ForgeryLab_FS' -> 'FS', 'FF-DF' -> 'DF', 'simswap_Fake' -> 'simswap'."""
    name = group
    for prefix in (f"{dataset}_", f"{dataset}-", "FF-", "FF_"):
        if name.startswith(prefix) and len(name) > len(prefix):
            name = name[len(prefix):]
            break
    for suffix in ("_Fake", "_fake", "-fake", "-Fake", "_FAKE"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return name


def _videos_of_split(node: dict, compression: str) -> dict:
    """A split's {video: entry}; FF++-style splits have an extra compression level (prefer `compression`)."""
    levels = [k for k in node if k in COMPRESSIONS and isinstance(node[k], dict) and "frames" not in node[k]]
    if not levels:
        return node
    return node[compression] if compression in levels else node[levels[0]]


def records_from_deepfakebench(obj: dict, source: str, compression: str = "c23") -> list[Record]:
    """Records of a parsed DeepfakeBench JSON (see module doc). `source` names the file in errors."""
    if not _looks_like_deepfakebench(obj):
        raise InputError(f"{source}: not a DeepfakeBench dataset JSON (expected {{dataset: {{group: "
                         "{train|val|test: {video: {label, frames}}}}}})")
    dataset, groups = next(iter(obj.items()))
    entries = []  # (split, group, video name, label, family, frames)
    for group, splits in groups.items():
        if not isinstance(splits, dict):
            raise InputError(f"{source}: label group {group!r} is not an object")
        for split, node in splits.items():
            if not isinstance(node, dict):
                raise InputError(f"{source}: {group}/{split} is not an object")
            for name, entry in _videos_of_split(node, compression).items():
                where = f"{source}: {group}/{split}/{name}"
                if not isinstance(entry, dict) or not isinstance(entry.get("frames"), list):
                    raise InputError(f"{where}: video entry has no 'frames' list")
                label = classify_label(entry.get("label", group), group, where)
                family = REAL if label == 0 else str(entry.get("family") or family_from_group(group, dataset))
                entries.append((split, group, name, label, family, [posix(str(f)) for f in entry["frames"]]))
    # Video id = the frames' folder, unless another entry shares that folder (then group/split/name).
    folder_of = [_common_folder(e[5]) for e in entries]
    uses = Counter(folder_of)
    records = []
    for (split, group, name, label, family, frames), folder in zip(entries, folder_of, strict=True):
        video = folder if folder and uses[folder] == 1 else f"{dataset}/{group}/{split}/{name}"
        records.extend(Record(f, label, family, video, split) for f in frames)
    return records


def _common_folder(frames: list[str]) -> str | None:
    parents = {str(PurePosixPath(f).parent) for f in frames}
    return parents.pop() if len(parents) == 1 and "." not in parents else None


def _records_from_tree(root: Path) -> list[Record]:
    """ROOT/<family or real>/<split>/[<video>/]<image>; an image directly under a split is its own video."""
    records = []
    for family_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        is_real = family_dir.name.lower() == REAL
        for split_dir in sorted(p for p in family_dir.iterdir() if p.is_dir()):
            for image in sorted(split_dir.rglob("*")):
                if image.suffix.lower() not in IMAGE_SUFFIXES or not image.is_file():
                    continue
                rel = image.relative_to(root).as_posix()
                video_dir = image.parent.relative_to(root).as_posix()
                video = rel if image.parent == split_dir else video_dir
                records.append(Record(rel, 0 if is_real else 1, REAL if is_real else family_dir.name,
                                      video, split_dir.name))
    if not records:
        raise InputError(f"{root}: no images found (expected ROOT/<family or real>/<split>/[<video>/]"
                         "<image>, a DeepfakeBench JSON or a CSV manifest)")
    return records


def _records_from_csv(path: Path) -> list[Record]:
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
        family = REAL if label == 0 else (row.get("family") or "fake")
        records.append(Record(rel, label, family, posix(row.get("video") or rel), row.get("split") or "test"))
    return records
