"""One validation pass over a merge's inputs: every backbone tensor visited once, hashed and checked finite."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fakemerge.errors import InputError
from fakemerge.io.safetensors import hash_update
from fakemerge.progress import Progress, silent


def _check_finite(name: str, key: str, t: torch.Tensor) -> None:
    """A NaN/Inf makes the sum non-finite (one cheap pass); only then look element by element."""
    if t.is_floating_point() and not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        raise InputError(f"{name}: tensor {key} contains NaN or Inf values")


@dataclass
class InputScan:
    """What one pass over base + specialists learns: content hashes (every value was found finite)."""

    base_hash: str  # tensors_sha256 of the base backbone
    hashes: list[str]  # tensors_sha256 of each specialist's tensors (backbone + `heads`)


def scan_inputs(base: Mapping[str, torch.Tensor], specialists: Sequence[Mapping[str, torch.Tensor]],
                names: Sequence[str], heads: Sequence[Mapping[str, torch.Tensor]] = (),
                progress: Progress = silent) -> InputScan:
    """Visit every backbone tensor once (sorted keys): hash it and check it is finite.

    `heads` (one mapping per specialist) are hashed and checked first: `head.*` sorts before `vision_model.*`,
    so each hash equals `tensors_sha256` of the whole file. Raises InputError naming the file and tensor for
    a NaN/Inf value. Keys and shapes must already match.
    """
    base_h, spec_h = hashlib.sha256(), [hashlib.sha256() for _ in specialists]
    for name, head, h in zip(names, heads, spec_h, strict=False):
        for key in sorted(head):
            _check_finite(name, key, head[key])
            hash_update(h, key, head[key])
    keys = sorted(base)
    for done, key in enumerate(keys):
        hash_update(base_h, key, base[key])
        for name, spec, h in zip(names, specialists, spec_h, strict=True):
            t = spec[key]
            hash_update(h, key, t)
            _check_finite(name, key, t)
        progress("scan", done + 1, len(keys))
    return InputScan(base_h.hexdigest(), [h.hexdigest() for h in spec_h])


