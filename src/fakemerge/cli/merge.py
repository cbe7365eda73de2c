"""`fakemerge merge`: specialists (or a recipe, or a merged file + new specialists) → one merged detector.

    fakemerge merge --method r2m --base BASE FS.safetensors FR.safetensors -o merged.safetensors \
        --set alpha=0.6
    fakemerge merge recipe.yaml [-o OUT]          # fakemerge's or mergekit's spelling (merging/recipe.py)
    fakemerge merge --add EFS.safetensors --from merged.safetensors -o merged2.safetensors
"""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from fakemerge.cli import ui
from fakemerge.merging import METHODS


def merge_command(
    inputs: list[str] = typer.Argument(None, help="Specialist .safetensors files, or one recipe .yaml."),
    method: str = typer.Option(None, "--method", "-m", help=" | ".join(METHODS)),
    base: str = typer.Option(None, "--base", help="Base model: fakemerge file, HF directory or HF id."),
    out: Path = typer.Option(None, "--out", "-o", help="Output .safetensors file."),
    set_: list[str] = typer.Option(None, "--set", help="Method parameter key=value (repeatable)."),
    head: str = typer.Option(None, "--head", help="Head merge: average (default) | norm_matched."),
    report: Path = typer.Option(None, "--report", help="Write report.json and plots into this directory."),
    add: list[str] = typer.Option(None, "--add", help="New specialist(s) to add (with --from or a recipe)."),
    from_: Path = typer.Option(None, "--from", help="Merged file whose stored recipe is rebuilt with --add."),
    force: bool = typer.Option(False, "--force", help="Merge despite a base-hash or recipe-hash mismatch."),
    dtype: str = typer.Option(None, "--dtype", help="Output dtype: float32 | float16 | bfloat16 | float64 "
                              "(default: the base's)."),
    device: str = typer.Option(None, "--device", help="Where the arithmetic runs: cpu (default) | cuda | auto."),
) -> None:
    """Merge specialists fine-tuned from one base into one detector (streamed: low memory)."""
    from fakemerge.config import parse_assignments
    from fakemerge.merging.engine import merge_files
    from fakemerge.merging.recipe import recipe_from_args

    params = parse_assignments(list(set_ or []), "--set")
    recipe = recipe_from_args(list(inputs or []), method, base, list(add or []), from_, params, head, out, dtype,
                              device)
    for note in recipe.notes:
        ui.err.print(f"note: {note}", highlight=False)
    start = time.perf_counter()
    with ui.bars() as progress:
        result = merge_files(recipe, report_dir=report, force=force, progress=progress)
    seconds = time.perf_counter() - start
    meta = result.meta
    shown = ", ".join(f"{k}={v}" for k, v in meta.recipe["parameters"].items()) or "none"
    ui.out.print(f"[green]merged[/green] {len(recipe.models)} specialists with {meta.method} ({shown}) "
                      f"→ {result.out} in {seconds:.1f} s; families: {', '.join(meta.families) or '-'}",
                      highlight=False)
    legend = ", ".join(f"τ{i + 1} = {Path(m).stem}" for i, m in enumerate(recipe.models))
    ui.out.print(f"applied: {meta.recipe['formula']}  ({legend})", highlight=False)
    table = Table(title="task vectors")
    names = [Path(m).stem for m in recipe.models]
    table.add_column("specialist")
    table.add_column("‖τ‖", justify="right")
    for n in names:
        table.add_column(f"cos {n}", justify="right")
    for n, norm, row in zip(names, result.norms, result.cosine, strict=True):
        table.add_row(n, f"{norm:.4g}", *(f"{c:.3f}" for c in row))
    ui.out.print(table)
    for warning in result.warnings:
        ui.err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    if report is not None:
        plots = len(result.report_files) - 1
        ui.out.print(f"report: {report}/report.json (+ {plots} plots)", highlight=False)


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the root app."""
    app.command("merge")(merge_command)
