"""`fakemerge` command line: thin — parses, calls the library, prints through `cli.ui`.

Exit codes: 0 ok, 1 some inputs failed (each reported), 2 usage/config error. Errors are one line;
`--debug` shows the traceback.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import os
import sys

import typer

from fakemerge.cli.ui import err as console
from fakemerge.errors import FakemergeError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Composable deepfake detection: specialists, training-free merging, evaluation, detection.")
_state = {"debug": False, "fast_exit": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _state["debug"] = debug


# command → the module that registers it, in the order `--help` lists them
COMMANDS = {"lab": "lab", "faces": "faces", "train": "train", "merge": "merge", "import": "importer",
            "export": "export", "info": "export", "calibrate": "calibrate", "eval": "evaluate", "detect": "detect",
            "serve": "serve", "demo": "demo"}
_registered: set[str] = set()


def _register(argv: list[str]) -> None:
    """Register the named command's module only (each pulls in its own library, ~0.3 s for all of them);
    every module when no known command is named, so `--help` and a misspelt command list them all."""
    named = next((a for a in argv if not a.startswith("-")), None)
    wanted = [COMMANDS[named]] if named in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for name in wanted:
        if name not in _registered:
            importlib.import_module(f"fakemerge.cli.{name}").register(app)
            _registered.add(name)


def main(argv: list[str] | None = None) -> None:
    # our own bars say what is happening; transformers and the hub read this when (and only if) they are
    # imported, so a command that needs neither does not pay their import (~0.5 s)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # the interpreter's last garbage collection walks every object torch made (~0.4 s at each exit); by then
    # every output is written and closed, so it is skipped (runs after other atexit handlers: LIFO)
    if not _state["fast_exit"]:
        atexit.register(gc.freeze)
        _state["fast_exit"] = True
    _register(sys.argv[1:] if argv is None else list(argv))
    try:
        app(args=argv, standalone_mode=False)
    except FakemergeError as e:
        if _state["debug"]:
            raise
        console.print(f"[red]error:[/red] {e}", highlight=False)
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        console.print("[red]aborted[/red]")
        sys.exit(130)
    except Exception as e:  # click usage errors carry their own exit code
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if _state["debug"]:
            raise
        console.print(f"[red]error:[/red] {type(e).__name__}: {e} (run with --debug for the traceback)",
                      highlight=False)
        sys.exit(2)
