"""Bounded work: a fixed number of inference threads and a bounded number of admitted requests.

A request takes a slot before its body is read and gives it back only when its job is really over — a
job that outlives its request's time limit (a thread cannot be interrupted) keeps its slot until it ends,
so the number of uploads on disk and decodes in memory never exceeds the bound. No free slot: 429 with
Retry-After estimated from recent job times; draining (shutdown): 503. The event loop only waits on
futures, so `/health` is answered while every worker is busy.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from fakemerge.serving.errors import ApiError


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


class Slot:
    """One admitted request; `release` is idempotent and may run on any thread."""

    def __init__(self, pool: WorkerPool):
        self._pool, self._released = pool, False
        self.admitted = time.monotonic()

    def release(self) -> None:
        with self._pool._lock:
            if not self._released:
                self._released = True
                self._pool._admitted -= 1


class WorkerPool:
    def __init__(self, workers: int, queue: int):
        self.workers, self.capacity = workers, workers + queue
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="fakemerge-infer")
        self._lock = threading.Lock()
        self._admitted = self._running = 0
        self._job_s = 1.0  # moving average of job durations, for Retry-After
        self.draining = False
        self.completed = self.refused = 0

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"workers": self.workers, "capacity": self.capacity, "admitted": self._admitted,
                    "running": self._running, "completed": self.completed, "refused_busy": self.refused,
                    "draining": self.draining}

    def retry_after(self) -> str:
        with self._lock:
            waves = max(1, math.ceil(self._admitted / self.workers))
            return str(min(60, max(1, math.ceil(self._job_s * waves))))

    def admit(self) -> Slot:
        """A slot, or ApiError 429 (full) / 503 (draining) right away — never a wait."""
        if self.draining:
            raise ApiError(503, "shutting_down", "the server is shutting down; retry on another instance",
                           {"Retry-After": "5"})
        with self._lock:
            full = self._admitted >= self.capacity
            if full:
                self.refused += 1
            else:
                self._admitted += 1
        if full:
            raise ApiError(429, "busy", f"all {self.capacity} request slots are taken; retry later",
                           {"Retry-After": self.retry_after()})
        return Slot(self)

    def submit(self, slot: Slot, job: Callable[[], Any], cleanup: Callable[[], None]) -> Future:
        """Run `job` on a worker; `cleanup` then the slot's release run when it ends or is cancelled."""
        def timed() -> Any:
            with self._lock:
                self._running += 1
            t0 = time.monotonic()
            try:
                return job()
            finally:
                with self._lock:
                    self._running -= 1
                    self.completed += 1
                    self._job_s = 0.8 * self._job_s + 0.2 * (time.monotonic() - t0)

        def done(_: Future) -> None:
            try:
                cleanup()
            finally:
                slot.release()

        future = self._executor.submit(timed)
        future.add_done_callback(done)
        return future

    async def result(self, future: Future, timeout: float, gone: asyncio.Future | None = None) -> Any:
        """The job's result; ApiError 503 when `timeout` passes first, ClientGone when `gone` (the client's
        disconnect) completes first. A job that has not started by then is cancelled."""
        job = asyncio.wrap_future(future)
        job.add_done_callback(lambda f: f.cancelled() or f.exception())  # answered or not: never "unretrieved"
        waiting = {job} if gone is None else {job, gone}
        finished, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if job in finished:
            return job.result()
        started = not future.cancel()
        if gone is not None and gone in finished:
            raise ClientGone()
        where = "while it was being analysed" if started else "while it waited for a worker"
        raise ApiError(503, "timeout", f"the request ran past the server's time limit {where}",
                       {"Retry-After": self.retry_after()})

    def drain(self) -> None:
        """Refuse new requests (503); admitted ones still finish."""
        self.draining = True

    def close(self) -> None:
        """Cancel jobs that never started (their cleanups run), wait for running ones."""
        self.draining = True
        self._executor.shutdown(wait=True, cancel_futures=True)
