"""`fakemerge import`: a DeepfakeBench / DF40 / Effort CLIP checkpoint (.pth) → fakemerge .safetensors."""

from __future__ import annotations

from pathlib import Path

import typer

from fakemerge.cli import ui


def import_command(
    src: Path = typer.Argument(..., help="Checkpoint .pth (DeepfakeBench, DF40 or Effort)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .safetensors file."),
    base: str = typer.Option(None, "--base", help="The base the checkpoint was fine-tuned from (fakemerge "
                             "file, HF directory or id): records its hash so the result can be merged."),
    family: list[str] = typer.Option(None, "--family", help="Forgery family it detects, e.g. FS "
                                     "(repeatable)."),
    fmt: str = typer.Option("auto", "--format", help="auto | deepfakebench | effort."),
) -> None:
    """Import a fine-tuned CLIP detector checkpoint (loaded with torch.load(weights_only=True))."""
    from fakemerge.models.checkpoints import import_checkpoint

    result = import_checkpoint(src, out, base=base, families=list(family or []), fmt=fmt)
    meta = result.meta
    ui.out.print(f"[green]imported[/green] {src} ({result.format}) → {out}: "
                      f"{meta.backbone_config['num_hidden_layers']} layers, hidden "
                      f"{meta.backbone_config['hidden_size']}, families {', '.join(meta.families) or '-'}",
                      highlight=False)
    if result.dropped:
        more = " …" if len(result.dropped) > 5 else ""
        ui.err.print(f"[yellow]note:[/yellow] ignored {len(result.dropped)} tensor(s) outside "
                          f"backbone/head: {', '.join(result.dropped[:5])}{more}",
                          highlight=False)
    if meta.base_hash is None:
        ui.err.print("[yellow]note:[/yellow] no --base given: the file records no base hash, so "
                          "merging it needs --force (and heads = hidden/64 was assumed)", highlight=False)


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the root app."""
    app.command("import")(import_command)
