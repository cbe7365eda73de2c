"""Resumable training state in OUT.ckpt/: one folder per completed epoch, committed by `state.json`.

Per epoch folder: `trainable.safetensors` (current trainable tensors), `best.safetensors` (the best epoch's
trainable tensors so far), `optim.pt` (optimizer + scheduler state: plain tensors and numbers, loadable with
`torch.load(weights_only=True)`). Frozen tensors are not stored: a resumed run rebuilds them from the base.
`state.json` is written last and names the folder, so a kill mid-save leaves the previous epoch usable.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from fakemerge.errors import InputError
from fakemerge.io import atomic_path, write_json
from fakemerge.io.safetensors import save_tensors


@dataclass
class Saved:
    epochs_done: int
    trainable: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor]
    optim: dict
    state: dict  # history, best epoch, recipe, ...


def checkpoint_dir(out: Path) -> Path:
    return out.with_suffix(".ckpt")


def save(ckpt: Path, epochs_done: int, trainable: dict, best: dict, optim: dict, state: dict) -> None:
    folder = ckpt / f"epoch-{epochs_done:04d}"
    if folder.exists():
        shutil.rmtree(folder)
    save_tensors(trainable, folder / "trainable.safetensors")
    save_tensors(best, folder / "best.safetensors")
    with atomic_path(folder / "optim.pt") as tmp:
        torch.save(optim, tmp)
    write_json(ckpt / "state.json", {**state, "epochs_done": epochs_done, "folder": folder.name})
    for old in ckpt.glob("epoch-*"):
        if old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)


def load(ckpt: Path) -> Saved | None:
    """The last committed state, or None when there is none."""
    state_file = ckpt / "state.json"
    if not state_file.is_file():
        return None
    try:
        state = json.loads(state_file.read_text())
        folder = ckpt / state["folder"]
        return Saved(epochs_done=state["epochs_done"],
                     trainable=load_file(str(folder / "trainable.safetensors")),
                     best=load_file(str(folder / "best.safetensors")),
                     optim=torch.load(folder / "optim.pt", weights_only=True),
                     state=state)
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise InputError(f"{ckpt}: damaged training checkpoint ({e}); delete it to start over") from None
