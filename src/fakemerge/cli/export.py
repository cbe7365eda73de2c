"""`fakemerge export MODEL --hf DIR`: a Hugging Face directory (config, weights, processor config, model card);
`fakemerge info MODEL`: the same model card, printed."""

from __future__ import annotations

from pathlib import Path

import typer

from fakemerge.cli import ui


def export_command(
    model: str = typer.Argument(..., help="A detector: fakemerge file, exported directory or the field's checkpoint."),
    hf: Path = typer.Option(..., "--hf", help="Output directory (Hugging Face layout)."),
    evaluation: Path = typer.Option(None, "--eval", help="An eval report.json (or its folder) for the card."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace HF if it exists."),
) -> None:
    """Export a detector as a Hugging Face directory: CLIPVisionModel.from_pretrained(DIR) loads its backbone."""
    from fakemerge.models.hf_export import export_hf

    out = export_hf(model, hf, evaluation=evaluation, overwrite=overwrite)
    ui.out.print(f"[green]exported[/green] {model} → {out}/ (config.json, model.safetensors, head.safetensors, "
                 "preprocessor_config.json, README.md)", highlight=False)


def info_command(
    model: str = typer.Argument(..., help="Any model path fakemerge loads (file, directory, checkpoint, hub id)."),
    evaluation: Path = typer.Option(None, "--eval", help="An eval report.json (or its folder) to include."),
) -> None:
    """Print the model card: kind, families, base and hash, recipe with hashes, preprocessing."""
    from fakemerge.models.hf_export import model_card
    from fakemerge.models.loading import heads_note, open_source

    source = open_source(model)
    ui.out.print(model_card(source, evaluation), markup=False, highlight=False, soft_wrap=True)
    for note in [*source.notes, *([heads_note(source)] if source.heads_assumed else [])]:
        ui.err.print(f"[yellow]note:[/yellow] {note}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
    app.command("info")(info_command)
