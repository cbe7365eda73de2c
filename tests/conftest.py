"""Shared test fixtures: a tiny CLIP base and a tiny, easily separable DeepfakeBench-style dataset.

Plain builder functions (`make_tiny_base`, `make_tiny_dataset`) plus session-scoped fixtures that build
them once. Everything is offline and small enough for 2 CPU cores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

TINY = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64)


def make_tiny_base(directory: str | os.PathLike, seed: int = 0, **overrides) -> Path:
    """Save a randomly initialised tiny CLIPVisionModel (HF format) into `directory`; returns it."""
    from transformers import CLIPVisionModel

    from fakemerge.models.backbone import tiny_config

    torch.manual_seed(seed)
    directory = Path(directory)
    CLIPVisionModel(tiny_config(**{**TINY, **overrides})).save_pretrained(directory)
    return directory


def tiny_image(family: str, rng: np.random.Generator, size: int = 32, families=("FS", "FR")) -> np.ndarray:
    """RGB uint8: reals are smooth colour gradients; each fake family adds its own strong stripe pattern."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.stack([a * xx + b * yy + c for a, b, c in rng.uniform(0.1, 0.5, (3, 3))], -1) * 255
    image = base + rng.normal(0, 4, base.shape)
    if family != "real":
        k = list(families).index(family) if family in families else len(families)
        angle = np.pi * k / max(len(families), 1)
        wave = np.sin(2 * np.pi * 6 * (np.cos(angle) * xx + np.sin(angle) * yy))
        image = image + 70 * wave[..., None]
    return np.clip(image, 0, 255).astype(np.uint8)


def make_tiny_dataset(directory: str | os.PathLike, families=("FS", "FR"), n_per: int = 8, frames: int = 2,
                      splits=("train", "val", "test"), size: int = 32, seed: int = 0,
                      name: str = "Tiny") -> Path:
    """Write PNG frames + a DeepfakeBench JSON `<name>.json` (groups `<name>_Real`, `<name>_<FAM>`).

    `n_per` videos per (group, split), `frames` frames each; images under <group>/<split>/<video>/.
    Families come from the group names (no `family` key), as in DeepfakeBench JSONs. Returns the JSON path.
    """
    directory = Path(directory)
    rng = np.random.default_rng(seed)
    groups: dict = {}
    for family in ("real", *families):
        group = f"{name}_Real" if family == "real" else f"{name}_{family}"
        groups[group] = {}
        for split in splits:
            videos = {}
            for v in range(n_per):
                rel_dir = f"{family}/{split}/{v:03d}"
                (directory / rel_dir).mkdir(parents=True, exist_ok=True)
                paths = []
                for f in range(frames):
                    rel = f"{rel_dir}/{f:03d}.png"
                    image = tiny_image(family, rng, size, families)
                    cv2.imwrite(str(directory / rel), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                    paths.append(rel)
                videos[f"{v:03d}"] = {"label": group, "frames": paths}
            groups[group][split] = videos
    path = directory / f"{name}.json"
    path.write_text(json.dumps({name: groups}, indent=1))
    return path


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    return make_tiny_base(tmp_path_factory.mktemp("tiny_base"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """DeepfakeBench JSON of reals + FS + FR, 8 videos x 2 frames per group and split (32 px)."""
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny_data"))
