"""Per-key access to a base and its specialists' task vectors, for merge methods that stream.

Inputs are touched only through `keys()` and `__getitem__`, so they may be lazy mappings that read one
tensor from disk per access; nothing here keeps a whole model. Keys may be spelled with or without the
`vision_model.` prefix in each input independently; results use the base's spelling.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch

from fakemerge.errors import InputError
from fakemerge.keys import bare
from fakemerge.progress import Progress, silent


class TaskStream:
    """The base θ0 and task vectors τi = θi − θ0 of N specialists, one key at a time (read-only).

    `stacked(key)` returns the N task vectors of one tensor as one N × shape tensor in the compute dtype
    (float32, or float64 when an input is float64). `each(stage, keys)` walks keys reporting progress, so
    every pass over the stream (the driver's and a method's own) shows as a stage.
    """

    def __init__(self, base: Mapping[str, torch.Tensor], specialists: Sequence[Mapping[str, torch.Tensor]],
                 progress: Progress = silent):
        if len(specialists) < 1:
            raise InputError("specialists: at least one specialist is needed to merge (got 0)")
        self.base = base
        self.specialists = list(specialists)
        self.progress = progress
        self.keys = list(base.keys())
        names = [bare(k) for k in self.keys]
        if len(set(names)) != len(names):
            raise InputError("base: the same tensor appears with and without the 'vision_model.' prefix")
        self._spelling: list[dict[str, str]] = []
        for i, spec in enumerate(self.specialists):
            own = {bare(k): k for k in spec.keys()}  # noqa: SIM118 -- lazy inputs promise keys() only
            missing, extra = set(names) - set(own), set(own) - set(names)
            if missing or extra:
                raise InputError(f"specialist {i}: its tensors do not match the base's: "
                                 f"missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}")
            self._spelling.append(own)
        self.shapes: dict[str, torch.Size] = {}  # of every key read so far

    @property
    def n(self) -> int:
        return len(self.specialists)

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
            raise InputError(f"specialist {i}: tensor {bare(key)} has shape {tuple(t.shape)}, "
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
