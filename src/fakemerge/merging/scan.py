"""The content hashes of a merge's inputs, taken from the tensors as the merge reads them: no second read.

Each input's hash is `tensors_sha256` of the file (keys sorted, a specialist's `head.*` first), so it is fed
in sorted key order: the engine hands the merge its base in that order, and a tensor the merge skips (an
integer buffer of a specialist) is read for the hash alone when a later key arrives or at `finish`.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from fakemerge.io.safetensors import hash_update


class SortedState(Mapping[str, torch.Tensor]):
    """A tensor mapping seen in sorted key order (a lazy file mapping keeps its header-only `spec`)."""

    def __init__(self, state: Mapping[str, torch.Tensor]):
        self.state, self._keys = state, sorted(state.keys())  # noqa: SIM118 -- lazy inputs promise keys() only
        if hasattr(state, "spec"):
            self.spec = state.spec

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.state[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class Scan:
    """Hashes input j (0: the base, 1…N: the specialists) from the tensors the merge reads (`record`, an
    `on_read` hook of the merge stream); `on_complete(hashes)` runs once every input is hashed.

    Each input is hashed on its own thread (sha256 releases the GIL), so hashing N + 1 files runs beside the
    reading and the arithmetic instead of after them; at most BEHIND tensors per input wait to be hashed.
    """

    BEHIND = 2

    def __init__(self, states: Sequence[Mapping[str, torch.Tensor]],
                 heads: Sequence[Mapping[str, torch.Tensor] | None],
                 on_complete: Callable[[list[str]], None] = lambda hashes: None):
        self.states = list(states)
        self.order = sorted(self.states[0].keys())  # noqa: SIM118
        self.position = {k: i for i, k in enumerate(self.order)}
        self.hashers = [hashlib.sha256() for _ in self.states]
        self.done = [0] * len(self.states)  # per input: how many keys (in sorted order) are read for hashing
        self.on_complete = on_complete
        self._hashes: list[str] | None = None
        self._threads = [ThreadPoolExecutor(1, thread_name_prefix=f"merge-hash{j}") for j in range(len(states))]
        self._pending: list[deque[Future]] = [deque() for _ in self.states]
        for h, head in zip(self.hashers, heads, strict=True):
            for key in sorted(head or {}):
                hash_update(h, key, head[key])

    def head_fingerprints(self) -> list[str]:
        """Per specialist, the sha256 of its head alone (read already): a content fingerprint before any pass."""
        return [h.copy().hexdigest() for h in self.hashers[1:]]

    def record(self, j: int, key: str, tensor: torch.Tensor) -> None:
        i = self.position[key]
        if i < self.done[j] or self._hashes is not None:
            return  # hashed in an earlier pass
        while self.done[j] < i:  # keys the merge did not ask for: read them for the hash alone
            skipped = self.order[self.done[j]]
            self._hash(j, skipped, self.states[j][skipped])
        self._hash(j, key, tensor)
        if all(d == len(self.order) for d in self.done):
            self._complete()

    def _hash(self, j: int, key: str, tensor: torch.Tensor) -> None:
        pending = self._pending[j]
        while len(pending) >= self.BEHIND:
            pending.popleft().result()
        pending.append(self._threads[j].submit(hash_update, self.hashers[j], key, tensor))
        self.done[j] += 1

    def finish(self) -> list[str]:
        """Every input's hash (reading what no pass has read yet)."""
        if self._hashes is None:
            last = self.order[-1] if self.order else None
            for j, state in enumerate(self.states):
                if last is not None and self.done[j] < len(self.order):
                    self.record(j, last, state[last])
            if self._hashes is None:
                self._complete()
        return self._hashes

    def _complete(self) -> None:
        for pending in self._pending:
            while pending:
                pending.popleft().result()
        self.close()
        self._hashes = [h.hexdigest() for h in self.hashers]
        self.on_complete(self._hashes)

    def close(self) -> None:
        """Stop the hashing threads (a merge that failed half-way never completes the hashes)."""
        for thread in self._threads:
            thread.shutdown(wait=True, cancel_futures=True)
