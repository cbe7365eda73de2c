"""One progress protocol for every long job: `progress(stage, done, total, **info)`.

Training, merging, evaluation, detection, face preprocessing and the lab all report through a callable of
this shape and never print; `fakemerge.cli.ui` draws it (one bar per stage). `total` may be None while
unknown. `info["note"]` is a line worth showing the user (a skipped file, a resume, an epoch summary);
any other info (e.g. `loss`) may be shown next to the bar.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, stage: str, done: int, total: int | None, /, **info: object) -> None: ...


def silent(stage: str, done: int, total: int | None, /, **info: object) -> None:
    """The Progress that reports nothing (the default everywhere)."""


def within(progress: Progress, prefix: str) -> Progress:
    """`progress` with every stage named `prefix: stage` (a job made of named sub-jobs, as the demo)."""

    def report(stage: str, done: int, total: int | None, /, **info: object) -> None:
        progress(f"{prefix}: {stage}", done, total, **info)

    return report
