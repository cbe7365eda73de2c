"""Per-key access to a base and its specialists' task vectors, for merge methods that stream.

Inputs are touched only through `keys()` and `__getitem__` (and, if they have it, a header-only `spec(key)`
giving dtype and shape), so they may be lazy mappings that read one tensor from disk per access; nothing
here keeps a whole model. Keys may be spelled with or without the `vision_model.` prefix in each input
independently; results use the base's spelling.

A pass over the stream is `each(stage, keys)`: while the caller works on one key, a background thread reads
the next key's tensors (file reads and the `on_read` hook, e.g. hashing, run beside the arithmetic), and
each key is read once per pass however often it is asked for. `map(stage, keys, fn)` also runs `fn` for
several keys at once, one thread each.

The specialists are put in one canonical order, by a content fingerprint each (the caller's, else a sha256
of their tensors), so that every method sees the same stack whatever order they were given in, and any
order gives the same bytes; what is reported per task goes back to the caller's order.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

import torch

from fakemerge.errors import InputError
from fakemerge.io.safetensors import hash_update
from fakemerge.keys import bare
from fakemerge.progress import Progress, silent

OnRead = Callable[[int, str, torch.Tensor], None]  # (input: 0 base, 1… specialists as given, key, tensor)
R = TypeVar("R")
LOOKAHEAD = 3  # keys in flight per worker in `map`, finished ones included


class TaskStream:
    """The base θ0 and task vectors τi = θi − θ0 of N specialists, one key at a time (read-only).

    `stacked(key)` returns the N task vectors of one tensor as one N × shape tensor in the compute dtype
    (float32, or float64 when an input is float64) on `device`. `each(stage, keys)` walks keys reporting
    progress, so every pass over the stream (the driver's and a method's own) shows as a stage.
    """

    def __init__(self, base: Mapping[str, torch.Tensor], specialists: Sequence[Mapping[str, torch.Tensor]],
                 progress: Progress = silent, fingerprints: Sequence[str] | None = None, *,
                 names: Sequence[str] | None = None, on_read: OnRead | None = None,
                 device: torch.device | str = "cpu"):
        if fingerprints is not None and len(fingerprints) != len(specialists):
            raise ValueError(f"{len(fingerprints)} fingerprints for {len(specialists)} specialists")
        self.base = base
        self.progress = progress
        self.on_read = on_read
        self.device = torch.device(device)
        self.names = list(names) if names is not None else [f"specialist {i}" for i in range(len(specialists))]
        self.keys = list(base.keys())
        bare_names = [bare(k) for k in self.keys]
        if len(set(bare_names)) != len(bare_names):
            raise InputError("base: the same tensor appears with and without the 'vision_model.' prefix")
        for name, spec in zip(self.names, specialists, strict=True):
            own = {bare(k) for k in spec.keys()}  # noqa: SIM118 -- lazy inputs promise keys() only
            missing, extra = set(bare_names) - own, own - set(bare_names)
            if missing or extra:
                raise InputError(f"{name}: its tensors do not match the base's: "
                                 f"missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}")
        given = list(fingerprints) if fingerprints is not None else [fingerprint(s) for s in specialists]
        self.order = sorted(range(len(specialists)), key=lambda i: given[i])  # canonical position → given
        self.specialists = [specialists[i] for i in self.order]
        self.fingerprints = [given[i] for i in self.order]
        self._spelling = [{bare(k): k for k in spec.keys()} for spec in self.specialists]  # noqa: SIM118
        self.shapes: dict[str, torch.Size] = {}  # of every key read so far
        self._float: dict[str, bool] = {}
        self._current: tuple[str, tuple[torch.Tensor, list[torch.Tensor]]] | None = None
        self._taus: tuple[str, torch.Tensor] | None = None
        self._spare: dict[tuple, list[torch.Tensor]] = {}  # stacks `map` has finished with, by shape and dtype
        self._lock = threading.Lock()  # `map`'s workers take and give back stacks

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
        """The keys in order, each one's tensors read (once) while the previous key is worked on."""
        keys = list(keys)
        with ThreadPoolExecutor(1, thread_name_prefix="merge-read") as reader:
            pending: Future | None = reader.submit(self._read, keys[0]) if keys else None
            for done, key in enumerate(keys):
                self._current, self._taus = (key, pending.result()), None
                pending = reader.submit(self._read, keys[done + 1]) if done + 1 < len(keys) else None
                yield key
                self.progress(stage, done + 1, len(keys))
            self._current = self._taus = None

    def map(self, stage: str, keys: Iterable[str],
            fn: Callable[[str, torch.Tensor, torch.Tensor | None], R]) -> Iterator[tuple[str, R]]:
        """`(key, fn(key, θ0, taus))` for each key in order (taus None for a non-float tensor), with `fn` run for
        up to `torch.get_num_threads()` keys at once, each single-threaded: independent SVDs scale across
        cores where one multi-threaded LAPACK call does not. The task vectors are formed in the worker too.
        One key more than there are workers waits to start, so a worker that finished a small key starts the
        next while a large one still runs ahead of it in the output order, and up to LOOKAHEAD × workers
        finished results wait for it (with only one key per worker in flight, the keys' mixed sizes left a
        worker idle for over a third of a TSV-M merge). The results do not depend on the thread count.
        `taus` is reused for a later key once `fn` has returned: `fn` must not return or keep a view of it."""
        workers = torch.get_num_threads()

        def work(key: str, theta0: torch.Tensor, thetas: list[torch.Tensor], single: bool) -> R:
            if single:
                torch.set_num_threads(1)  # OpenMP keeps a thread count per thread: set it in the worker itself
            taus = self._stack_of(theta0, thetas) if theta0.is_floating_point() else None
            try:
                return fn(key, theta0, taus)
            finally:
                self._release(taus)

        if workers <= 1:
            for key in self.each(stage, keys):
                yield key, work(key, *self._tensors(key), False)
            return
        pending: deque[tuple[str, Future]] = deque()

        def ready(final: bool) -> Iterator[tuple[str, R]]:
            """Yield the finished head results; wait while too many keys are in flight (all, when `final`)."""
            while pending:
                if pending[0][1].done():
                    done, future = pending.popleft()
                    yield done, future.result()
                    continue
                unfinished = [f for _, f in pending if not f.done()]
                if not final and len(unfinished) <= workers and len(pending) < LOOKAHEAD * workers:
                    return
                wait(unfinished, return_when=FIRST_COMPLETED)

        with ThreadPoolExecutor(workers, thread_name_prefix="merge-key") as pool, one_thread_each():
            for key in self.each(stage, keys):
                pending.append((key, pool.submit(work, key, *self._tensors(key), True)))
                yield from ready(final=False)
            yield from ready(final=True)

    def _read(self, key: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """θ0 and every θi of one key (specialists in canonical order), shapes checked."""
        base = self.base[key].detach()
        if self.on_read is not None:
            self.on_read(0, key, base)
        thetas = []
        for c, spec in enumerate(self.specialists):
            t = spec[self._spelling[c][bare(key)]].detach()
            if t.shape != base.shape:
                raise InputError(f"{self.names[self.order[c]]}: tensor {bare(key)} has shape {tuple(t.shape)}, "
                                 f"the base has {tuple(base.shape)}")
            if self.on_read is not None:
                self.on_read(self.order[c] + 1, key, t)
            thetas.append(t)
        return base, thetas

    def _tensors(self, key: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self._current is None or self._current[0] != key:
            self._current = (key, self._read(key))
        base, thetas = self._current[1]
        self.shapes[key] = base.shape
        self._float[key] = base.is_floating_point()
        return base, thetas

    def theta0(self, key: str) -> torch.Tensor:
        return self._tensors(key)[0]

    def is_float(self, key: str) -> bool:
        if key not in self._float:
            spec = getattr(self.base, "spec", None)  # a lazy file mapping knows the dtype from its header
            self._float[key] = spec(key)[0].is_floating_point if spec else self.base[key].is_floating_point()
        return self._float[key]

    def float_keys(self) -> list[str]:
        return [k for k in self.keys if self.is_float(k)]

    def dtype_for(self, *tensors: torch.Tensor) -> torch.dtype:
        return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32

    def stacked(self, key: str) -> torch.Tensor:
        """The N task vectors of `key` as one N × shape tensor in the compute dtype on the device (θi − θ0
        written straight into it)."""
        if self._taus is None or self._taus[0] != key:
            self._taus = (key, self._stack(key))
        return self._taus[1]

    def _stack(self, key: str) -> torch.Tensor:
        return self._stack_of(*self._tensors(key))

    def _stack_of(self, base: torch.Tensor, thetas: list[torch.Tensor]) -> torch.Tensor:
        dtype = self.dtype_for(base, *thetas)
        base = base.to(self.device, dtype)
        with self._lock:
            spare = self._spare.get((base.shape, dtype))
            taus = spare.pop() if spare else None
        if taus is None:
            taus = torch.empty((self.n, *base.shape), dtype=dtype, device=self.device)
        for i, t in enumerate(thetas):
            torch.sub(t.to(self.device, dtype), base, out=taus[i])
        return taus

    def _release(self, taus: torch.Tensor | None) -> None:
        """Keep a stack `map` is done with for the next key of its shape: a fresh tensor of tens of MB costs
        more in page faults than filling it."""
        if taus is not None:
            with self._lock:
                self._spare.setdefault((taus.shape[1:], taus.dtype), []).append(taus)

    def check_finite(self, key: str, gram: torch.Tensor, theta0: torch.Tensor, taus: torch.Tensor) -> None:
        """Raise InputError naming the input and tensor when this key's Gram shows a NaN or Inf (a non-finite
        τi comes from θi or, when every τ is non-finite there, from θ0)."""
        if bool(torch.isfinite(gram.diagonal()).all()):
            return
        if not bool(torch.isfinite(theta0).all()):
            raise InputError(f"base: tensor {key} contains NaN or Inf values")
        for c, tau in enumerate(taus):
            if not bool(torch.isfinite(tau).all()):
                raise InputError(f"{self.names[self.order[c]]}: tensor {key} contains NaN or Inf values")


@contextlib.contextmanager
def one_thread_each() -> Iterator[None]:
    """torch's intra-op threads set to 1 while several keys run side by side (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names and tensors (keys sorted), reading one tensor at a time."""
    h = hashlib.sha256()
    for key in sorted(state.keys()):  # noqa: SIM118 -- lazy inputs promise keys() only
        hash_update(h, key, state[key])
    return h.hexdigest()
