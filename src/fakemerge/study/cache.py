"""Training reused across runs: a specialist is retrained only when something that defines it changed.

The stamp beside each model (`OUT.train.json`) holds its training settings (TrainConfig.recipe()), the
content hashes of the dataset description and of the base's weight files, and a hash of the code that
trains (training, models, data, config): a changed setting, dataset, base or trainer means a new model, so a
resumed multi-seed run never mixes models from different code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fakemerge.config import TrainConfig
from fakemerge.io import file_sha256, write_json
from fakemerge.progress import Progress, silent

PACKAGE = Path(__file__).resolve().parents[1]
TRAINING_SOURCES = ("training", "models", "data", "config.py")


def _code_hash() -> str:
    h = hashlib.sha256()
    for part in TRAINING_SOURCES:
        root = PACKAGE / part
        for source in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            h.update(source.relative_to(PACKAGE).as_posix().encode())
            h.update(source.read_bytes())
    return h.hexdigest()


def _base_hash(base: str) -> str:
    path = Path(base)
    if path.is_file():
        return file_sha256(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())
        return hashlib.sha256("".join(f"{p.name}:{file_sha256(p)}" for p in files).encode()).hexdigest()
    return base  # an HF id: the id is all we know


def stamp(config: TrainConfig) -> dict:
    return {"recipe": json.loads(json.dumps(config.recipe(), default=str)),
            "data": [file_sha256(d) if Path(d).is_file() else d for d in config.data],
            "base": _base_hash(config.base), "code": _code_hash()}


def train_cached(config: TrainConfig, progress: Progress = silent) -> bool:
    """Train `config` unless OUT exists with an identical stamp; True when it trained."""
    from fakemerge.training.trainer import train

    out = Path(config.out)
    stamp_path = out.with_suffix(".train.json")
    want = stamp(config)
    if out.is_file() and stamp_path.is_file() and json.loads(stamp_path.read_text()) == want:
        progress("train", 1, 1, note=f"reused {out.name} (same settings, data, base and code)")
        return False
    train(config, progress=progress)
    write_json(stamp_path, want)
    return True
