"""`fakemerge calibrate MODEL... --data DATA --split val`: choose each model's P(fake) threshold on a
validation split and store it (with its provenance) in the model file; the weights are not touched."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fakemerge.cli import ui
from fakemerge.cli.evaluate import split_list


def calibrate_command(
    models: list[Path] = typer.Argument(..., help="Fakemerge model files (.safetensors), rewritten in place."),
    data: str = typer.Option(..., "--data", help="DeepfakeBench JSON, folder tree or CSV manifest."),
    split: str = typer.Option("val", help="Split to choose the threshold on (never the test split)."),
    rule: str = typer.Option(None, "--rule", help="eer (default, chosen on validation) | balanced | accuracy | "
                             "fpr; see fakemerge.evaluation.calibration."),
    target_fpr: float = typer.Option(0.05, "--target-fpr", help="False-positive budget of --rule fpr."),
    families: list[str] = typer.Option(None, "--families", help="Fake families to include (comma list; "
                                       "default: every family of the split)."),
    batch_size: int = typer.Option(128, "--batch-size"),
    root: Path = typer.Option(None, "--root", help="Data root (default: the JSON's directory)."),
) -> None:
    """Calibrate: the threshold by RULE on SPLIT, written into each model; detect, serve and eval use it."""
    from fakemerge.evaluation.calibration import DEFAULT_RULE, calibrate

    if split == "test":
        ui.err.print("[yellow]warning:[/yellow] calibrating on the test split makes its test numbers optimistic",
                     highlight=False)
    with ui.bars() as progress:
        records = calibrate(models, data, split=split, rule=rule or DEFAULT_RULE, target_fpr=target_fpr,
                            families=split_list(families), root=root, batch_size=batch_size, progress=progress)
    for warning in records[0]["data_warnings"] if records else []:
        ui.err.print(f"[yellow]warning[/yellow]: {warning}", highlight=False)
    table = Table(title=f"thresholds chosen on {split} (rule {rule or DEFAULT_RULE})")
    for column in ("model", "threshold", "TPR", "FPR", "balanced acc", "reals/fakes"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for model, r in zip(models, records, strict=True):
        table.add_row(str(model), f"{r['threshold']:.4f}", f"{r['tpr']:.3f}", f"{r['fpr']:.3f}",
                      f"{r['balanced_accuracy']:.3f}", f"{r['n_real']}/{r['n_fake']}")
    ui.out.print(table)


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_command)
