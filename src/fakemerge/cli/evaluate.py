"""`fakemerge evaluate` (not implemented yet)."""

import typer


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the root app."""
