"""Work shared by the processes of `accelerate launch` (a single process without it), results in input order.

The items are cut into blocks of `chunk` consecutive items, dealt round-robin: block b goes to process
b mod N. At each step every process works through one block and hands its results to the main process,
which gets the step's N blocks in rank order — consecutive blocks, so simply concatenated they are the input
order. The main process thus writes the same output, in the same order, as one process would, streamed block
by block (no process ever holds every result); a block may give any number of results per item (detect's
face tracks). Used by `evaluate` (a block = a data-loader batch) and `detect` over many inputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Shards:
    rank: int
    world: int
    device: torch.device  # this process's device: cuda:<local rank> under a multi-GPU launch

    @classmethod
    def current(cls) -> Shards:
        """This process's place: accelerate's state when launched (it starts the process group), else 0 of 1."""
        from accelerate.state import PartialState
        from accelerate.utils import parse_flag_from_env

        state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # as Accelerator() reads it
        return cls(state.process_index, state.num_processes, state.device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def blocks(self, n: int, chunk: int) -> list[range]:
        """This process's blocks of n items: b = rank, rank + N, ...; each `chunk` long but the very last."""
        return [range(b * chunk, min(n, (b + 1) * chunk)) for b in range(self.rank, math.ceil(n / chunk), self.world)]

    def steps(self, n: int, chunk: int) -> int:
        """The collective steps every process takes: its most blocks."""
        return math.ceil(math.ceil(n / chunk) / self.world)

    def gather(self, results: Iterable[list[T]], n: int, chunk: int) -> Iterator[list[T]]:
        """Run this process's `results` (one list per block of `blocks(n, chunk)`, in order) and yield, per
        step, every process's results of that step in input order — on the main process; the others yield
        empty lists. Every process must call it with the same n and chunk and run it to the end (each step is
        a collective exchange)."""
        mine = iter(results)
        for _ in range(self.steps(n, chunk)):
            part = next(mine, [])
            if self.world == 1:
                yield part
                continue
            from accelerate.utils import gather_object

            parts = gather_object([part])  # one list per process, in rank order: consecutive blocks
            yield [x for p in parts for x in p] if self.is_main else []
