"""The batch an input list stands for: files, folders searched recursively (each once), frame folders, uploads."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fakemerge.data.media.formats import HEAD_BYTES, IMAGE_SUFFIXES, VIDEO_SUFFIXES, kind_of, sniff
from fakemerge.data.media.opening import Source, display_name, note, os_reason


@dataclass(frozen=True)
class Item:
    """One input of a batch: a file, an upload's bytes, or a folder of frames read as one video.
    `error` is set when listing already found the problem (an empty folder, a symbolic link loop)."""

    name: str
    source: Path | bytes
    error: str | None = None


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
            items.append(Item(name, path, f"{name}: {os_reason(e)}"))
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
            items.append(Item(display_name(folder), folder, f"{display_name(folder)}: {os_reason(e)}"))
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
            items.append(Item(display_name(folder), folder, f"{display_name(folder)}: {os_reason(e)}"))
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
                items.append(Item(name, entry, f"{name}: {os_reason(e)}"))
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
        note(notes, f"{display_name(root)}: skipped {len(skipped)} file(s) that are not images or videos "
                     f"(e.g. {skipped[0]})")
    return sorted(items, key=lambda item: item.name)


def _link_problem(path: Path) -> str:
    try:
        path.stat()
    except OSError as e:
        return os_reason(e) if e.errno == errno.ELOOP else "broken symbolic link"
    return "vanished while listing"


def _kind_of_file(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return kind_of(sniff(f.read(HEAD_BYTES)))
    except OSError:
        return "image"  # unreadable: listed, so that reading it reports the reason


def frame_files(folder: Path) -> list[Path]:
    """A frame folder's images, in frame order: by number when every name is one (DeepfakeBench's 000.png
    ...), else by name."""
    images = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if images and all(p.stem.isdigit() for p in images):
        return sorted(images, key=lambda p: (int(p.stem), p.name))
    return sorted(images)
