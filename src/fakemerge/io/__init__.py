"""File IO: every output is written atomically (temp file + rename), so a crash never leaves half a file;
settings files (JSON or YAML mappings) are read here.

Safetensors reading, streaming writing and content hashes live in `fakemerge.io.safetensors`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fakemerge.errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_mapping(path: str | os.PathLike, what: str = "config") -> dict:
    """A JSON (by suffix) or YAML file holding a mapping — settings, a family map, a dataset JSON, a Hugging
    Face config; anything else is a one-line error naming the file and `what` it should be."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read {what} ({getattr(e, 'strerror', None) or e})") from None
    if path.suffix.lower() == ".json":  # json: DeepfakeBench JSONs reach hundreds of MB
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: malformed JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    else:
        import yaml

        try:
            obj = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise InputError(f"{path}: malformed YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: {what} must be a mapping")
    return obj


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Save a matplotlib figure as PNG atomically (tight bounding box) and release it if pyplot made it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    if getattr(fig.canvas, "manager", None) is not None:
        import matplotlib.pyplot as plt

        plt.close(fig)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
