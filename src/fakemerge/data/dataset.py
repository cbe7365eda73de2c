"""Records -> model inputs, tolerating bad files: a missing or unreadable image is skipped and counted.

Images are decoded by `fakemerge.data.media` (the one reader of image files), so training, evaluation and
detection see the same pixels for the same file.

Missing files are dropped up front (cheap `stat`), so `len(dataset)` counts only images that exist; when
none exists the root is wrong, which is an error naming it (not "nothing to evaluate").
An image that exists but cannot be decoded is found lazily: `__getitem__` then yields a zero tensor with
label -1 (works in DataLoader worker processes too); `drop_skipped(batch)` removes such rows and
`dataset.note_skipped(indices)` records one line per file in `dataset.skipped` (the caller reports them).

Augmentation: horizontal flip only, off by default — ForgeryLab's forgery families may be left/right
asymmetric, and real face crops are aligned. The flip of an item is a pure function of (seed, epoch, index),
so an epoch is the same on any number of workers or processes and after a resume.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

from fakemerge.data.media import display_name, read_image
from fakemerge.data.records import Record
from fakemerge.errors import InputError
from fakemerge.models.preprocessing import Preprocessing, to_input

SKIPPED_LABEL = -1


def read_rgb(path: str | os.PathLike) -> np.ndarray | None:
    """HxWx3 uint8 RGB read by the media layer (any file name, pixel limit, truncation checks), or None if
    the file cannot be decoded; `unreadable_reason` says why."""
    try:
        return read_image(path)
    except InputError:
        return None


def unreadable_reason(path: str | os.PathLike) -> str:
    """The media layer's one-line reason a file cannot be decoded (read again: only for failed files)."""
    try:
        read_image(path)
    except InputError as e:
        return str(e)
    return f"{display_name(path)}: unreadable image"


class DecodedCache:
    """Decoded images kept in memory across epochs, trainings and evaluations of one process (LRU, bounded
    in bytes). Several models trained and scored on the same small dataset (the demo) decode each file
    once instead of once per epoch and model. Keyed by path, size and mtime, so a rewritten file is re-read.
    Set FAKEMERGE_DECODE_CACHE_MB=0 to turn it off."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def read(self, path: Path) -> np.ndarray | None:
        if self.max_bytes <= 0 or get_worker_info() is not None:  # a loader worker's copy dies with it
            return read_rgb(path)
        try:
            st = path.stat()
        except OSError:
            return None
        key = (str(path), st.st_size, st.st_mtime_ns)
        image = self._items.get(key)
        if image is not None:
            self._items.move_to_end(key)
            return image
        image = read_rgb(path)
        if image is not None and image.nbytes <= self.max_bytes:
            image.flags.writeable = False  # shared between callers
            self._items[key] = image
            self.bytes += image.nbytes
            while self.bytes > self.max_bytes:
                self.bytes -= self._items.popitem(last=False)[1].nbytes
        return image


DECODED = DecodedCache(int(float(os.environ.get("FAKEMERGE_DECODE_CACHE_MB", "1024")) * 2**20))


class ImageDataset(Dataset):
    """Yields (pixels 3xSxS float32 made by the model's `prep`, label, index into `self.records`).

    `perturb(image, key)`, when given, changes each decoded RGB image (key: its record path) before `prep`
    (robustness evaluation; it must return a new array: decoded images may be shared read-only)."""

    def __init__(self, root: str | os.PathLike, records: list[Record], prep: Preprocessing, flip: bool = False,
                 seed: int = 0, perturb: Callable[[np.ndarray, str], np.ndarray] | None = None):
        self.root = Path(root)
        self.prep = prep
        self.flip = flip
        self.seed = seed
        self.perturb = perturb
        self.epoch = 0
        self.skipped: list[str] = []
        self.records = []
        for r in records:
            if (self.root / r.path).is_file():
                self.records.append(r)
            else:
                self.skipped.append(f"{display_name(self.root / r.path)}: image file not found (skipped)")
        if records and not self.records:
            first = records[0].path
            where = "" if Path(first).is_absolute() else f" under {self.root.resolve()}"
            raise InputError(f"{len(records)}/{len(records)} frames not found{where} (first: {first}); pass --root "
                             "DIR (the folder the frame paths are relative to) or --path-map OLD=NEW")
        self._noted: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        record = self.records[index]
        image = DECODED.read(self.root / record.path)
        if image is None:
            return torch.zeros(3, self.prep.size, self.prep.size), SKIPPED_LABEL, index
        if self.flip and _coin(self.seed, self.epoch, index):
            image = image[:, ::-1]
        if self.perturb is not None:
            image = self.perturb(image, record.path)
        return torch.from_numpy(to_input(image, self.prep)), record.label, index

    def note_skipped(self, indices) -> list[str]:
        """Record (once each) the unreadable images at these indices; returns the new messages."""
        new = []
        for i in (int(i) for i in indices):
            if i not in self._noted:
                self._noted.add(i)
                new.append(f"{unreadable_reason(self.root / self.records[i].path)} (skipped)")
        self.skipped.extend(new)
        return new


def _coin(seed: int, epoch: int, index: int) -> bool:
    return bool(np.random.default_rng((seed, epoch, index)).integers(2))


def drop_skipped(batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]):
    """Split a batch into its good rows and the indices of unreadable images."""
    pixels, labels, indices = batch
    good = labels != SKIPPED_LABEL
    return pixels[good], labels[good], indices[good], indices[~good]


class EpochShuffle(Sampler[int]):
    """A seeded permutation per epoch (`set_epoch`), identical in every process: deterministic order
    that `accelerate` can shard and that a resumed run reproduces."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())
