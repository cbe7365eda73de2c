"""`fakemerge lab generate|pretrain`: the embedded ForgeryLab benchmark and its tiny pretrained base."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fakemerge.cli import ui
from fakemerge.errors import InputError

lab = typer.Typer(no_args_is_help=True, help="ForgeryLab: procedural forgery benchmark and tiny base.")


@lab.command("generate")
def generate_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Output directory."),
    size: int = typer.Option(64, help="Image size in pixels (32-256)."),
    seed: int = typer.Option(0, help="Seed: same seed, identical bytes."),
    scale: str = typer.Option("small", help="small | full (see fakemerge.lab.generate.SCALES)."),
) -> None:
    """Render reals, the seen families FS/FR/EFS/FE and the unseen ones; JSON + PNGs + contact sheets."""
    from fakemerge.lab.generate import generate

    try:
        with ui.bars() as progress:
            js = generate(out, size=size, seed=seed, scale=scale, progress=progress)
    except ValueError as e:
        raise InputError(str(e)) from None
    ui.out.print(f"dataset: {js}; contact sheets: {out / 'contact'}")


@lab.command("pretrain")
def pretrain_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Output HF directory (config.json + model.safetensors)."),
    seed: int = typer.Option(0, help="Seed."),
    scale: str = typer.Option("small", help="small | full (training budget)."),
) -> None:
    """Pretrain the tiny CLIP vision tower on real images only (identity + camera pretext tasks)."""
    from fakemerge.lab.pretrain import SETTINGS, pretrain

    if scale not in SETTINGS:
        raise InputError(f"--scale {scale}: expected one of {', '.join(SETTINGS)}")
    with ui.bars() as progress:
        report = pretrain(out, seed=seed, scale=scale, progress=progress)
    ui.out.print(f"base: {out} (probe accuracy pretrained {json.dumps(report['probe_pretrained'])} vs "
                  f"random init {json.dumps(report['probe_random_init'])})")


def register(app: typer.Typer) -> None:
    app.add_typer(lab, name="lab")
