"""Safetensors files read and written without holding whole models: the lazy reader, the streaming writer,
content hashes.

Merging N specialists must not hold N models in memory: `LazyState` reads one tensor per lookup (nothing is
cached; a large tensor is a mapping of its bytes alone, released with the tensor) and `SafetensorsWriter`
writes each tensor straight to its place in the output file. The content hash of a state dict
(`tensors_sha256`) is independent of file layout and metadata.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import shutil
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from fakemerge.errors import InputError
from fakemerge.io import atomic_path
from fakemerge.keys import canonical_key

_DTYPE_CODES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                torch.uint8: "U8", torch.bool: "BOOL"}
_DTYPES = {code: dtype for dtype, code in _DTYPE_CODES.items()}


def _safetensors_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / s for s in shards]
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    raise InputError(f"{path}: no safetensors weights found")


class _SafetensorsFile:
    """One safetensors file, each tensor read on its own: a large one is mapped (a private, copy-on-write
    mmap of just its bytes, unmapped when the tensor is freed), a small or misaligned one copied with
    `readinto`. Memory is exactly the tensors asked for; mapping skips a copy and the page faults of a fresh
    buffer, the largest costs of reading after hashing. The file's size is checked before every read, so a
    truncated file is an InputError, never a SIGBUS (a file cut short while a tensor of it is in use still
    would be: do not truncate inputs under a running merge).
    """

    MAX_HEADER = 100 << 20
    MAP_FROM = 1 << 20  # bytes: below this a copy is cheaper than a mapping

    def __init__(self, path: Path):
        self.path = path
        self._fh = open(path, "rb", buffering=0)  # noqa: SIM115 (kept open for the mapping's lifetime)
        try:
            (n,) = struct.unpack("<Q", self._fh.read(8))
            if n > self.MAX_HEADER:
                raise ValueError(f"header of {n} bytes")
            header = json.loads(self._fh.read(n))
            self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
            self.entries: dict[str, dict] = header
            self.start = 8 + n
            for e in header.values():
                e["dtype"], e["shape"] = _DTYPES[e["dtype"]], tuple(e["shape"])
        except Exception as e:  # struct, JSON, unknown dtype code, missing fields
            self._fh.close()
            raise InputError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None

    def read(self, key: str) -> torch.Tensor:
        e = self.entries[key]
        dtype, shape = e["dtype"], e["shape"]
        begin, end = e["data_offsets"]
        count = math.prod(shape)
        if count * dtype.itemsize != end - begin or begin > end:
            raise InputError(f"{self.path}: tensor {key} has {end - begin} bytes for shape {list(shape)}")
        offset = self.start + begin
        if offset + (end - begin) > os.fstat(self._fh.fileno()).st_size:
            raise InputError(f"{self.path}: file is truncated (tensor {key})")
        if end - begin >= self.MAP_FROM and offset % dtype.itemsize == 0:
            at = offset - offset % mmap.ALLOCATIONGRANULARITY
            mapped = mmap.mmap(self._fh.fileno(), offset + (end - begin) - at, access=mmap.ACCESS_COPY, offset=at)
            return torch.frombuffer(mapped, dtype=dtype, count=count, offset=offset - at).view(shape)
        t = torch.empty(shape, dtype=dtype)
        buf = memoryview(t.reshape(-1).view(torch.uint8).numpy()) if count else memoryview(b"")
        self._fh.seek(offset)
        done = 0
        while done < len(buf):
            got = self._fh.readinto(buf[done:])
            if not got:
                raise InputError(f"{self.path}: file is truncated (tensor {key})")
            done += got
        return t


class LazyState(Mapping[str, torch.Tensor]):
    """Read-only mapping over the backbone tensors (canonical names) of a safetensors file or HF directory.

    Each lookup reads one tensor from disk; nothing is cached, so memory stays at what the caller holds.
    `float32=True` upcasts floating tensors (a half-precision hub base is used in float32, as `load_base`
    does).
    """

    def __init__(self, path: str | os.PathLike, *, float32: bool = False):
        self.path = Path(path)
        self.float32 = float32
        self._files = [_SafetensorsFile(f) for f in _safetensors_files(self.path)]
        self.metadata: dict[str, str] = self._files[0].metadata
        self._where: dict[str, tuple[int, str]] = {}
        self._other: dict[str, tuple[int, str]] = {}
        for i, f in enumerate(self._files):
            for k in f.entries:
                ck = canonical_key(k)
                if ck is None:
                    self._other[k] = (i, k)
                else:
                    self._where[ck] = (i, k)

    def __getitem__(self, key: str) -> torch.Tensor:
        i, k = self._where[key]
        return self._read(i, k)

    def __contains__(self, key: object) -> bool:  # without reading the tensor, as Mapping's default would
        return key in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def _read(self, i: int, k: str) -> torch.Tensor:
        t = self._files[i].read(k)
        return t.float() if self.float32 and t.is_floating_point() else t

    def spec(self, key: str) -> tuple[torch.dtype, tuple[int, ...]]:
        """dtype and shape of a backbone tensor, read from the header only."""
        i, k = self._where[key]
        e = self._files[i].entries[k]
        dtype = torch.float32 if self.float32 and e["dtype"].is_floating_point else e["dtype"]
        return dtype, e["shape"]

    def extra(self, key: str) -> torch.Tensor | None:
        """A non-backbone tensor such as `head.weight`, or None when the file has none."""
        where = self._other.get(key)
        return None if where is None else self._read(*where)


def hash_update(h, key: str, t: torch.Tensor) -> None:
    """The bytes one tensor adds to `tensors_sha256` (so every hash of the same tensors agrees)."""
    t = t.detach().contiguous().cpu()
    h.update(key.encode())
    h.update(str(t.dtype).encode())
    h.update(str(tuple(t.shape)).encode())
    if t.numel():
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """Content hash of a state dict, independent of file layout and metadata (keys sorted). Reads one
    tensor at a time, so it works on a `LazyState` of any size."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        hash_update(h, k, tensors[k])
    return h.hexdigest()


def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                 metadata: Mapping[str, object] | None = None) -> None:
    """Save a safetensors file atomically; metadata values that are not strings are stored as JSON."""
    meta = {k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in (metadata or {}).items()}
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=meta)


def rewrite_metadata(path: str | os.PathLike, metadata: Mapping[str, str]) -> None:
    """Replace a safetensors file's header metadata, atomically; every tensor's bytes stay as they were
    (copied one tensor at a time, in file order). How a threshold is stored without touching the weights."""
    path = Path(path)
    src = _SafetensorsFile(path)
    try:
        order = sorted(src.entries, key=lambda k: src.entries[k]["data_offsets"][0])
        layout = {k: (src.entries[k]["dtype"], src.entries[k]["shape"]) for k in order}
        with atomic_path(path) as tmp, SafetensorsWriter(tmp, layout, metadata, reserve=0) as writer:
            for k in order:
                writer.write(k, src.read(k))
    finally:
        src._fh.close()


class SafetensorsWriter:
    """Write a safetensors file tensor by tensor, in any order, holding one tensor at a time.

    The layout (name → dtype, shape) is known up front (from the base), so the header goes first and each
    tensor is written at its offset. Metadata known only at the end (merge diagnostics) is passed to
    `close()`: it is written into the `reserve` bytes kept after the header (JSON allows trailing spaces), or,
    if it does not fit, the data is moved once. `close()` refuses a file with a tensor missing. Use inside
    `atomic_path` so a crash never leaves a partial output.
    """

    def __init__(self, path: str | os.PathLike, layout: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
                 metadata: Mapping[str, str] | None = None, reserve: int = 1 << 16):
        self.path = Path(path)
        self.layout = dict(layout)
        self.offsets: dict[str, tuple[int, int]] = {}
        self._entries: dict[str, object] = {}
        pos = 0
        for k, (dtype, shape) in self.layout.items():
            size = torch.Size(shape).numel() * dtype.itemsize
            self.offsets[k] = (pos, pos + size)
            self._entries[k] = {"dtype": _DTYPE_CODES[dtype], "shape": list(shape),
                                "data_offsets": [pos, pos + size]}
            pos += size
        self._size = pos
        blob = self._header(metadata)
        self._header_len = len(blob) + reserve + (-(len(blob) + reserve) % 8)  # data starts 8-byte aligned
        self._file = open(self.path, "w+b")  # noqa: SIM115 (held until close())
        self._write_header(blob)
        self._file.truncate(8 + self._header_len + pos)
        self._written: set[str] = set()

    def _header(self, metadata: Mapping[str, str] | None) -> bytes:
        header = {"__metadata__": dict(metadata), **self._entries} if metadata else self._entries
        return json.dumps(header, separators=(",", ":")).encode()

    def _write_header(self, blob: bytes) -> None:
        self._file.seek(0)
        self._file.write(struct.pack("<Q", self._header_len) + blob + b" " * (self._header_len - len(blob)))

    def write(self, key: str, tensor: torch.Tensor) -> None:
        if key not in self.layout:
            raise ValueError(f"unexpected tensor {key}")
        dtype, shape = self.layout[key]
        if tuple(tensor.shape) != shape:
            raise ValueError(f"tensor {key} has shape {tuple(tensor.shape)}, expected {shape}")
        t = tensor.detach().to("cpu", dtype).contiguous()
        self._file.seek(8 + self._header_len + self.offsets[key][0])
        if t.numel():
            self._file.write(memoryview(t.view(torch.uint8).numpy()))
        self._written.add(key)

    def close(self, metadata: Mapping[str, str] | None = None) -> None:
        missing = set(self.layout) - self._written
        if missing:
            self._file.close()
            raise ValueError(f"tensors never written: {sorted(missing)[:3]}")
        if metadata is not None:
            blob = self._header(metadata)
            if len(blob) <= self._header_len:
                self._write_header(blob)
            else:
                self._move_data(blob)
        self._file.close()

    def _move_data(self, blob: bytes) -> None:
        """Rewrite the file with a larger header (metadata outgrew the reserve): one copy of the data."""
        old_start = 8 + self._header_len
        self._header_len = len(blob) + (-len(blob) % 8)
        grown = self.path.with_name(self.path.name + ".grow")
        old, self._file = self._file, open(grown, "wb")  # noqa: SIM115 (closed below)
        try:
            self._write_header(blob)
            old.seek(old_start)
            shutil.copyfileobj(old, self._file, 1 << 24)
            self._file.close()
            os.replace(grown, self.path)
        except BaseException:
            self._file.close()
            grown.unlink(missing_ok=True)
            raise
        finally:
            old.close()

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is not None:
            self._file.close()
        elif not self._file.closed:
            self.close()
