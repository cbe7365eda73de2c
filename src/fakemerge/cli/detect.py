"""`fakemerge detect MODEL INPUT...`: P(fake) for images, folders and videos; exit 1 if any input failed."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fakemerge.cli import ui
from fakemerge.errors import PartialFailure


def detect_command(
    model: Path = typer.Argument(..., help="A fakemerge model file (.safetensors)."),
    inputs: list[Path] = typer.Argument(..., help="Images, videos or folders (searched recursively)."),
    frames: int = typer.Option(8, "--frames", help="Frames sampled per video (evenly spaced)."),
    agg: str = typer.Option("mean", "--agg", help="Frame→video aggregation: mean | max | topk."),
    topk: int = typer.Option(3, "--topk", help="k for --agg topk."),
    face: str = typer.Option("none", "--face", help="Face backend: none | dlib."),
    no_face: str = typer.Option("whole", "--no-face", help="When no face is found: whole | skip | error."),
    batch_size: int = typer.Option(64, "--batch-size"),
    json_out: Path = typer.Option(None, "--json", help="Write all results (per frame too) to this JSON."),
    heatmaps: Path = typer.Option(None, "--heatmaps", help="Write a Grad-CAM overlay PNG per input here."),
) -> None:
    """Detect deepfakes: a table of input, frames, P(fake) and verdict."""
    from fakemerge.inference import detect
    from fakemerge.io import write_json

    with ui.bars() as progress:
        results = list(detect(model, [str(p) for p in inputs], frames=frames, agg=agg, k=topk, face=face,
                              no_face=no_face, batch_size=batch_size, heatmap_dir=heatmaps,
                              progress=progress))
    table = Table(title=f"{model.name} ({agg} over frames)")
    table.add_column("input", overflow="fold")
    table.add_column("frames", justify="right")
    table.add_column("P(fake)", justify="right")
    table.add_column("verdict", overflow="fold")
    for r in results:
        if r.error:
            table.add_row(r.input, "-", "-", f"[red]error[/red]: {r.error}")
        else:
            colour = "red" if r.verdict == "fake" else "green"
            table.add_row(r.input, str(r.frames), f"{r.score:.4f}", f"[{colour}]{r.verdict}[/{colour}]")
    ui.out.print(table)
    notes = sum(len(r.notes) for r in results)
    if notes:
        ui.out.print(f"[yellow]{notes} frame(s) had no face[/yellow] (policy --no-face {no_face}; "
                          "details in --json)", highlight=False)
    if json_out is not None:
        write_json(json_out, [r.to_dict() for r in results])
    failed = [r for r in results if r.error]
    if failed:
        raise PartialFailure(f"{len(failed)} of {len(results)} input(s) failed; first: {failed[0].error}")


def register(app: typer.Typer) -> None:
    app.command("detect")(detect_command)
