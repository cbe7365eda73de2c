"""The only code that prints: the consoles and the rich progress bars that draw the library's progress.

Results go to stdout (`out`), messages, warnings, errors and bars to stderr (`err`), so
`fakemerge detect ... --format json > results.jsonl` stays machine-readable.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fakemerge.progress import Progress as ProgressFn

# Logs written to a file keep whole model names and table rows.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)


def _shown(info: dict) -> str:
    """Numeric info next to the bar (`epoch 2  loss 0.6931`); the rest is for programs, not people."""
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool))


@contextlib.contextmanager
def bars(console: Console = err) -> Iterator[ProgressFn]:
    """A `fakemerge.progress.Progress` that draws one transient bar per stage (added on its first report,
    removed when done reaches total) and prints each `note` above the bars. Nothing is drawn before the
    first report, so a command that fails early prints its one error line and nothing else."""
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[info]}"), console=console, transient=True)
    tasks: dict[str, int] = {}

    def report(stage: str, done: int, total: int | None, /, **info: object) -> None:
        if not bar.live.is_started:
            bar.start()
        note = info.pop("note", None)
        if note:
            bar.console.print(str(note), markup=False, highlight=False)
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total, info="")
        bar.update(tasks[stage], completed=done, total=total, info=_shown(info))
        if total is not None and done >= total:
            bar.remove_task(tasks.pop(stage))

    try:
        yield report
    finally:
        if bar.live.is_started:
            bar.stop()
