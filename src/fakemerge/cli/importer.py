"""`fakemerge import`: the field's CLIP detector (DeepfakeBench, DF40, Effort .pth; HF-named safetensors) →
a fakemerge .safetensors that records its preprocessing (and, with --base, its base's hash)."""

from __future__ import annotations

from pathlib import Path

import typer

from fakemerge.cli import ui


def import_command(
    src: Path = typer.Argument(..., help="Checkpoint (.pth of DeepfakeBench, DF40 or Effort) or a safetensors "
                               "file of HF-named tensors (vision_model.* + head.*)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .safetensors file."),
    base: str = typer.Option(None, "--base", help="The base the checkpoint was fine-tuned from (fakemerge "
                             "file, HF directory or id): records its hash so the result can be merged."),
    family: list[str] = typer.Option(None, "--family", help="Forgery family it detects, e.g. FS "
                                     "(repeatable)."),
    fmt: str = typer.Option("auto", "--format", help="auto | deepfakebench | effort | effort-ufd | hf "
                            "(auto reads it from the keys; a given one must agree)."),
    preprocessing: str = typer.Option(None, "--preprocessing", help="fakemerge | deepfakebench | effort | "
                                      "effort-ufd: override how inputs are prepared (default: the "
                                      "checkpoint's origin)."),
) -> None:
    """Import a fine-tuned CLIP detector (pickles read with torch.load(weights_only=True))."""
    from fakemerge.models.loading import import_model
    from fakemerge.models.preprocessing import Preprocessing

    result = import_model(src, out, base=base, families=list(family or []), fmt=fmt, preprocessing=preprocessing)
    meta = result.meta
    prep = Preprocessing.from_dict(meta.preprocessing, str(out))
    ui.out.print(f"[green]imported[/green] {src} ({result.format}) → {out}: "
                 f"{meta.backbone_config['num_hidden_layers']} layers, hidden "
                 f"{meta.backbone_config['hidden_size']}, families {', '.join(meta.families) or '-'}; "
                 f"preprocessing {prep.describe()} ({meta.recipe['preprocessing_origin']})", highlight=False)
    for note in result.notes:
        ui.err.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    if result.dropped:
        more = " …" if len(result.dropped) > 5 else ""
        ui.err.print(f"[yellow]note:[/yellow] ignored {len(result.dropped)} tensor(s) outside "
                     f"backbone/head: {', '.join(result.dropped[:5])}{more}", highlight=False)
    if meta.base_hash is None:
        ui.err.print("[yellow]note:[/yellow] no --base given: the file records no base hash, so "
                     "merging it needs --force", highlight=False)


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the root app."""
    app.command("import")(import_command)
