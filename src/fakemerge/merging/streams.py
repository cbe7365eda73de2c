"""Per-key access to a base and its specialists' task vectors, for merge methods that stream.

Inputs are touched only through `keys()` and `__getitem__`, so they may be lazy mappings that read one
tensor from disk per access; nothing here keeps a whole model. Keys may be spelled with or without the
`vision_model.` prefix in each input independently; results use the base's spelling.

The specialists are put in one canonical order, by a content fingerprint each (the caller's content hashes,
else a sha256 of their tensors), so that every method sees the same stack whatever order they were given
in, and any order gives the same bytes; what is reported per task goes back to the caller's order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch

from fakemerge.errors import InputError
from fakemerge.io.safetensors import hash_update
from fakemerge.keys import bare
from fakemerge.progress import Progress, silent


class TaskStream:
    """The base θ0 and task vectors τi = θi − θ0 of N specialists, one key at a time (read-only).

    `stacked(key)` returns the N task vectors of one tensor as one N × shape tensor in the compute dtype
    (float32, or float64 when an input is float64). `each(stage, keys)` walks keys reporting progress, so
    every pass over the stream (the driver's and a method's own) shows as a stage.
    """

    def __init__(self, base: Mapping[str, torch.Tensor], specialists: Sequence[Mapping[str, torch.Tensor]],
                 progress: Progress = silent, fingerprints: Sequence[str] | None = None):
        if fingerprints is not None and len(fingerprints) != len(specialists):
            raise ValueError(f"{len(fingerprints)} fingerprints for {len(specialists)} specialists")
        self.base = base
        self.progress = progress
        self.keys = list(base.keys())
        names = [bare(k) for k in self.keys]
        if len(set(names)) != len(names):
            raise InputError("base: the same tensor appears with and without the 'vision_model.' prefix")
        for i, spec in enumerate(specialists):
            own = {bare(k) for k in spec.keys()}  # noqa: SIM118 -- lazy inputs promise keys() only
            missing, extra = set(names) - own, own - set(names)
            if missing or extra:
                raise InputError(f"specialist {i}: its tensors do not match the base's: "
                                 f"missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}")
        given = list(fingerprints) if fingerprints is not None else [fingerprint(s) for s in specialists]
        self.order = sorted(range(len(specialists)), key=lambda i: given[i])  # canonical position → given
        self.specialists = [specialists[i] for i in self.order]
        self.fingerprints = [given[i] for i in self.order]
        self._spelling = [{bare(k): k for k in spec.keys()} for spec in self.specialists]  # noqa: SIM118
        self.shapes: dict[str, torch.Size] = {}  # of every key read so far

    @property
    def n(self) -> int:
        return len(self.specialists)

    def given_order(self, values: Sequence) -> list:
        """Per-task values (canonical order) in the order the specialists were given."""
        out = [None] * self.n
        for c, i in enumerate(self.order):
            out[i] = values[c]
        return out

    def given_gram(self, gram: torch.Tensor) -> torch.Tensor:
        """An N×N matrix over the tasks (canonical order) in the order the specialists were given."""
        where = torch.tensor(self.given_order(list(range(self.n))))  # canonical position of each given one
        return gram[where][:, where]

    def each(self, stage: str, keys: Iterable[str]) -> Iterator[str]:
        keys = list(keys)
        for done, key in enumerate(keys):
            yield key
            self.progress(stage, done + 1, len(keys))

    def theta0(self, key: str) -> torch.Tensor:
        t = self.base[key].detach()
        self.shapes[key] = t.shape
        return t

    def is_float(self, key: str) -> bool:
        return self.base[key].is_floating_point()

    def float_keys(self) -> list[str]:
        return [k for k in self.keys if self.is_float(k)]

    def specialist(self, i: int, key: str) -> torch.Tensor:
        t = self.specialists[i][self._spelling[i][bare(key)]].detach()
        base = self.base[key]
        if t.shape != base.shape:
            raise InputError(f"specialist {self.order[i]}: tensor {bare(key)} has shape {tuple(t.shape)}, "
                             f"the base has {tuple(base.shape)}")
        return t

    def dtype_for(self, *tensors: torch.Tensor) -> torch.dtype:
        return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32

    def task(self, i: int, key: str) -> torch.Tensor:
        """τi of `key` in the compute dtype."""
        base, theta = self.theta0(key), self.specialist(i, key)
        dtype = self.dtype_for(base, theta)
        return theta.to(dtype) - base.to(dtype)

    def stacked(self, key: str) -> torch.Tensor:
        """The N task vectors of `key` as one N × shape tensor in the compute dtype (one allocation)."""
        base = self.theta0(key)
        thetas = [self.specialist(i, key) for i in range(self.n)]
        dtype = self.dtype_for(base, *thetas)
        taus = torch.stack([t.to(dtype) for t in thetas])
        taus -= base.to(dtype)
        return taus


def fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names and tensors (keys sorted), reading one tensor at a time."""
    h = hashlib.sha256()
    for key in sorted(state.keys()):  # noqa: SIM118 -- lazy inputs promise keys() only
        hash_update(h, key, state[key])
    return h.hexdigest()
