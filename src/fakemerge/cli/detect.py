"""`fakemerge detect MODEL INPUT...`: P(fake) per image, video or frame folder as a table, JSON lines or CSV.

Every option is validated before the model is loaded (usage error, exit 2); exit 1 exactly when some input
failed (each failure is a result with `error`); results go to stdout (bars and messages to stderr) or, with
`-o FILE`, to a file written atomically. JSON: one `DetectResult.to_dict()` object per input per line.
Under `accelerate launch [--num_processes N] -m fakemerge.cli detect ...` the inputs are shared out over the
processes (`fakemerge.sharding`); the main process writes every result, in input order.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fakemerge.cli import ui
from fakemerge.errors import InputError, PartialFailure

FORMATS = ("table", "json", "csv")
CSV_COLUMNS = ("input", "face", "kind", "format", "frames", "score", "verdict", "threshold", "calibrated", "error",
               "notes")
NOTES_SHOWN = 10


def detect_command(
    model: Path = typer.Argument(..., help="A fakemerge model file (.safetensors)."),
    inputs: list[Path] = typer.Argument(..., help="Images, videos or folders (searched recursively)."),
    frames: int = typer.Option(8, "--frames", help="Frames sampled per video (evenly spaced)."),
    agg: str = typer.Option("mean", "--agg", help="Frame→video aggregation: mean | max | topk."),
    topk: int = typer.Option(3, "--topk", help="k for --agg topk."),
    face: str = typer.Option("none", "--face", help="Face backend: none | dlib."),
    no_face: str = typer.Option("whole", "--no-face", help="When no face is found: whole | skip | error."),
    min_face_score: float = typer.Option(0.2, "--min-face-score", help="Detector score a face needs."),
    all_faces: bool = typer.Option(False, "--all-faces", help="One result per face (track), not the largest."),
    margin: float = typer.Option(1.3, "--margin", help="Context around the aligned face (1 to 3)."),
    face_size: int = typer.Option(256, "--face-size", help="Aligned face crop size before the model's resize."),
    batch_size: int = typer.Option(64, "--batch-size", help="Frames per forward pass."),
    folder_as_video: bool = typer.Option(False, "--folder-as-video",
                                         help="A folder of frames is one video (DeepfakeBench / DF40 layout)."),
    max_pixels: int = typer.Option(None, "--max-pixels", help="Pixel limit checked before decoding (40 MP)."),
    workers: int = typer.Option(2, "--workers", help="Decoding threads (0: decode in the main thread)."),
    device: str = typer.Option(None, "--device", help="torch device (default: cuda if available, else cpu)."),
    heatmaps: Path = typer.Option(None, "--heatmaps", help="Write a Grad-CAM overlay PNG per result here."),
    fmt: str = typer.Option("table", "--format", help="table | json (one object per line) | csv."),
    output: str = typer.Option("-", "--output", "-o", help="Write the results to this file ('-': stdout)."),
) -> None:
    """Detect deepfakes in images, videos and folders."""
    from fakemerge.inference import DetectOptions, detect
    from fakemerge.sharding import Shards

    given = dict(frames=frames, agg=agg, k=topk, face=face, no_face=no_face, min_face_score=min_face_score,
                 all_faces=all_faces, margin=margin, face_size=face_size, batch_size=batch_size,
                 folder_as_video=folder_as_video, workers=workers, device=device, heatmap_dir=heatmaps)
    if max_pixels is not None:
        given["max_pixels"] = max_pixels
    options = DetectOptions(**given)
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if output != "-" and Path(output).is_dir():
        raise InputError(f"--output {output}: is a folder; give a file name")
    shards = Shards.current()
    if not shards.is_main:  # a launched helper process: scores its share, the main process writes
        for _ in detect(model, inputs, options, shards=shards):
            pass
        return
    results = []
    with ui.bars() as progress, _sink(output) as out:
        writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore") if fmt == "csv" else None
        if writer:
            writer.writeheader()
        for r in detect(model, inputs, options, progress=progress, shards=shards):
            results.append(r)
            if fmt == "json":
                out.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
            elif writer:
                writer.writerow({**r.to_dict(), "notes": " | ".join(r.notes)})
            out.flush()
        if fmt == "table":
            _table(out, model, results, options.agg, output == "-")
    _summary(results)
    failed = [r for r in results if r.error]
    if failed:
        raise PartialFailure(f"{len(failed)} of {len(results)} input(s) failed; first: {failed[0].error}")


@contextmanager
def _sink(output: str):
    """stdout, or a file that appears (atomically) only once every result is in it."""
    if output == "-":
        yield sys.stdout
        return
    from fakemerge.io import atomic_path

    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        yield f


def _table(out, model: Path, results: list, agg: str, terminal: bool) -> None:
    table = Table(title=f"{model.name} ({agg} over frames)")
    for name, justify in (("input", "left"), ("frames", "right"), ("P(fake)", "right"), ("verdict", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    for r in results:
        name = r.input if r.face is None else f"{r.input} [face {r.face}]"
        if r.error:
            table.add_row(escape(name), "-", "-", f"[red]error[/red]: {escape(r.error)}")
        else:
            colour = "red" if r.verdict == "fake" else "green"
            table.add_row(escape(name), str(r.frames), f"{r.score:.4f}", f"[{colour}]{r.verdict}[/{colour}]")
    if terminal:
        ui.out.print(table)
    else:
        text = io.StringIO()
        Console(file=text, width=160, color_system=None).print(table)
        out.write(text.getvalue())


def _summary(results: list) -> None:
    """Notes and the calibration status on stderr (stdout stays the results)."""
    notes = [n for r in results for n in r.notes]
    for note in notes[:NOTES_SHOWN]:
        ui.err.print(f"[yellow]note[/yellow]: {escape(note)}", highlight=False)
    if len(notes) > NOTES_SHOWN:
        ui.err.print(f"... and {len(notes) - NOTES_SHOWN} more note(s) (all of them in --format json)")
    scored = [r for r in results if r.verdict]
    if scored and not scored[0].calibrated:
        ui.err.print("[yellow]uncalibrated model[/yellow]: verdicts use P(fake) >= 0.5", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("detect")(detect_command)
