"""`fakemerge faces INPUT... -o OUT --label real|fake`: aligned face crops + DeepfakeBench-style JSON."""

from __future__ import annotations

from pathlib import Path

import typer

from fakemerge.cli import ui
from fakemerge.errors import PartialFailure


def faces_command(
    inputs: list[Path] = typer.Argument(..., help="Videos, images or folders (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (crops + <dataset>.json)."),
    label: str = typer.Option(..., "--label", help="real | fake (one label per run; run again to add)."),
    family: str = typer.Option(None, "--family", help="Forgery family of fake inputs (e.g. FS)."),
    dataset: str = typer.Option("Faces", "--dataset", help="Dataset name (JSON file and label groups)."),
    split: str = typer.Option("test", "--split", help="Split these inputs go into."),
    face: str = typer.Option("dlib", "--face", help="Face backend: dlib | none."),
    frames: int = typer.Option(32, "--frames", help="Frames sampled per video (evenly spaced)."),
    size: int = typer.Option(256, "--size", help="Crop size in pixels."),
    margin: float = typer.Option(1.3, "--margin", help="Context around the aligned face."),
    no_face: str = typer.Option("skip", "--no-face", help="When no face is found: skip | whole | error."),
) -> None:
    """Preprocess videos/images into aligned face crops and a dataset JSON that `train`/`eval` read."""
    from fakemerge.data.faces import preprocess
    from fakemerge.io import write_json

    with ui.bars() as progress:
        json_path, statuses = preprocess(inputs, out, label=label, family=family, dataset=dataset,
                                         split=split, backend=face, frames=frames, size=size,
                                         margin=margin, no_face=no_face, progress=progress)
    write_json(out / "faces_report.json", statuses)
    no_face_frames = sum(st in ("skipped", "whole") for s in statuses for st in s["face_status"])
    kept = sum(s["frames"] for s in statuses)
    ui.out.print(f"{kept} crops from {len(statuses)} input(s) -> {json_path}; {no_face_frames} frame(s) "
                      f"without a face (--no-face {no_face}); details in {out / 'faces_report.json'}",
                      highlight=False)
    failed = [s for s in statuses if s["error"]]
    for s in failed:
        ui.out.print(f"[red]failed[/red]: {s['error']}", highlight=False)
    if failed:
        raise PartialFailure(f"{len(failed)} of {len(statuses)} input(s) failed")


def register(app: typer.Typer) -> None:
    app.command("faces")(faces_command)
