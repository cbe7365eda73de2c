"""`fakemerge faces INPUT... -o OUT --label real|fake`: aligned face crops + a DeepfakeBench dataset JSON.

Resumable (a re-run skips what is done), parallel over inputs, every option validated before any work;
exit 1 when some input failed (listed at the end), 2 for usage errors.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from fakemerge.cli import ui
from fakemerge.errors import PartialFailure

FAILURES_SHOWN = 20


def faces_command(
    inputs: list[Path] = typer.Argument(..., help="Videos, images or folders (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (crops, <dataset>.json, faces_state.json)."),
    label: str = typer.Option(..., "--label", help="real | fake (one label per run; run again to add)."),
    family: str = typer.Option(None, "--family", help="Forgery family of fake inputs (e.g. FS)."),
    dataset: str = typer.Option("Faces", "--dataset", help="Dataset name (JSON file and label groups)."),
    split: str = typer.Option("test", "--split", help="train | val | test."),
    group: str = typer.Option(None, "--group", help="Label group, e.g. one DeepfakeBench knows (FF-real)."),
    face: str = typer.Option("dlib", "--face", help="Face backend: dlib | none."),
    frames: int = typer.Option(32, "--frames", help="Frames sampled per video (evenly spaced)."),
    size: int = typer.Option(256, "--size", help="Crop size in pixels (16 to 4096)."),
    margin: float = typer.Option(1.3, "--margin", help="Context around the aligned face (1 to 3)."),
    no_face: str = typer.Option("skip", "--no-face", help="When no face is found: skip | whole | error."),
    min_face_score: float = typer.Option(0.2, "--min-face-score", help="Detector score a face needs."),
    folder_as_video: bool = typer.Option(False, "--folder-as-video", help="A folder of frames is one video."),
    max_pixels: int = typer.Option(None, "--max-pixels", help="Pixel limit checked before decoding (40 MP)."),
    workers: int = typer.Option(1, "--workers", help="Parallel worker processes."),
) -> None:
    """Preprocess videos/images into aligned face crops and a dataset JSON that `train`/`eval` read."""
    from fakemerge.data.face_dataset import FacesJob, extract_faces
    from fakemerge.data.faces import CropPolicy
    from fakemerge.data.media import MAX_PIXELS

    policy = CropPolicy(face, size, margin, no_face, min_face_score)
    job = FacesJob(out, label, policy, family=family, dataset=dataset, split=split, group=group, frames=frames,
                   folder_as_video=folder_as_video, max_pixels=max_pixels or MAX_PIXELS, workers=workers)
    with ui.bars() as progress:
        summary = extract_faces(inputs, job, progress)
    crops = sum(e["frames"] for e in summary.done)
    no_face_frames = sum(s in ("skipped", "whole") for e in summary.done for s in e["face_status"])
    ui.out.print(f"{len(summary.done)} input(s) done ({crops} crops), {summary.skipped} already done, "
                 f"{len(summary.failed)} failed -> {escape(str(summary.json_path))}; {no_face_frames} frame(s) "
                 f"without a face (--no-face {no_face}); per input: {escape(str(out / 'faces_state.json'))}",
                 highlight=False)
    if summary.label_dict_lines:
        ui.out.print("DeepfakeBench's label_dict (training/config/train_config.yaml) does not know this label "
                     "group; add:\n" + "\n".join(summary.label_dict_lines), highlight=False, markup=False)
    for entry in summary.failed[:FAILURES_SHOWN]:
        ui.err.print(f"[red]failed[/red]: {escape(entry['error'])}", highlight=False)
    if len(summary.failed) > FAILURES_SHOWN:
        ui.err.print(f"... and {len(summary.failed) - FAILURES_SHOWN} more (all in faces_state.json)")
    if summary.failed:
        raise PartialFailure(f"{len(summary.failed)} of {len(summary.failed) + len(summary.done)} input(s) "
                             "failed")


def register(app: typer.Typer) -> None:
    app.command("faces")(faces_command)
