"""`fakemerge train`: fine-tune a specialist (one family) or a joint model (several) from a base.

Settings come in layers, later wins: defaults < `--config train.yaml` < flags < `--set key=value`.
Runs unchanged under `accelerate launch [--num_processes N] -m fakemerge.cli train ...`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from fakemerge.cli import dataflags, ui
from fakemerge.config import TrainConfig, build, parse_assignments
from fakemerge.io import read_mapping

_METHOD_FLAGS = ("rank", "subspaces", "layer_ratio", "score", "lambda_orth", "lambda_spec")


def train_command(
    base: str = typer.Option(None, "--base", help="Base model: HF id, HF directory or fakemerge file."),
    data: list[str] = typer.Option(None, "--data", help="Dataset: DeepfakeBench/DF40 JSON, CSV manifest or "
                                   "folder (repeatable: trains on their union)."),
    families: str = typer.Option(None, "--families", help="Fake families to train on, e.g. FS or FS,FR."),
    out: Path = typer.Option(None, "--out", "-o", help="Output model file (.safetensors)."),
    method: str = typer.Option(None, "--method", help="full | linear | a registered subspace method."),
    root: str = typer.Option(None, "--root", help="Data root (default: the dataset file's folder)."),
    compression: str = dataflags.COMPRESSION,
    frames_per_video: int = dataflags.FRAMES_PER_VIDEO,
    family_map: str = dataflags.FAMILY_MAP,
    path_map: list[str] = dataflags.PATH_MAP,
    allow_split_overlap: bool = dataflags.ALLOW_SPLIT_OVERLAP,
    epochs: int = typer.Option(None, "--epochs", help="Epochs (default 3)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Batch size per process (default 32)."),
    lr: float = typer.Option(None, "--lr",
                             help="Learning rate (default by method: full 3e-4, linear 1e-3, effort/fmsd 2e-4)."),
    optimizer: str = typer.Option(None, "--optimizer", help="adamw (default) | adam (Effort's recipe: "
                                  "--optimizer adam --weight-decay 5e-4 --set schedule=constant --lr 2e-4)."),
    weight_decay: float = typer.Option(None, "--weight-decay",
                                       help="Weight decay (default 0; decoupled for adamw, L2 for adam)."),
    seed: int = typer.Option(None, "--seed", help="Random seed (default 0)."),
    num_workers: int = typer.Option(None, "--num-workers",
                                    help="Data loader worker processes (default: 0 on CPU, 2 on GPU)."),
    mixed_precision: str = typer.Option(None, "--mixed-precision",
                                        help="no | bf16 | fp16 (GPU) (default: accelerate launch's, else no)."),
    grad_accum: int = typer.Option(None, "--grad-accum", help="Batches per optimizer step (default 1)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT.ckpt/ after the last full epoch."),
    config: Path = typer.Option(None, "--config", help="YAML file of settings (TrainConfig fields)."),
    sets: list[str] = typer.Option(None, "--set", help="Override any setting: key=value (repeatable)."),
    opts: list[str] = typer.Option(None, "--opt", help="Method option key=value (repeatable)."),
    rank: int = typer.Option(None, "--rank", help="Subspace methods: rank per artifact subspace."),
    subspaces: int = typer.Option(None, "--subspaces", help="Subspace methods: artifact subspaces (K)."),
    layer_ratio: float = typer.Option(None, "--layer-ratio", help="Subspace methods: fraction of layers."),
    score: str = typer.Option(None, "--score", help="Subspace methods: layer score."),
    lambda_orth: float = typer.Option(None, "--lambda-orth", help="Subspace methods: orthogonality weight."),
    lambda_spec: float = typer.Option(None, "--lambda-spec", help="Subspace methods: spectral weight."),
) -> None:
    """Fine-tune a detector on the reals plus the fakes of FAMILIES; keeps the best epoch on validation."""
    import transformers

    from fakemerge.training.trainer import train

    transformers.utils.logging.disable_progress_bar()
    local = locals()
    flags = {k: local[k] for k in ("base", "families", "method", "root", "epochs", "batch_size", "lr",
                                   "optimizer", "weight_decay", "seed", "num_workers", "compression",
                                   "frames_per_video", "family_map", "mixed_precision", "grad_accum")
             if local[k] is not None}
    flags.update({k: list(local[k]) for k in ("data", "path_map") if local[k]})
    if allow_split_overlap:
        flags["allow_split_overlap"] = True
    if out is not None:
        flags["out"] = str(out)
    if resume:
        flags["resume"] = True
    method_options = {k: local[k] for k in _METHOD_FLAGS if local[k] is not None}
    method_options.update(parse_assignments(opts or [], "--opt"))
    if method_options:
        flags["method_options"] = method_options
    file_settings = read_mapping(config) if config is not None else {}
    cfg = build(TrainConfig, file_settings, flags, parse_assignments(sets or [], "--set"),
                str(config) if config is not None else "train settings")

    with ui.bars() as progress:
        result = train(cfg, progress=progress)
    if result.is_main_process:
        val = ", ".join(f"{k} {v:.4f}" for k, v in result.val.items()) or "no validation"
        ui.err.print(f"wrote {result.out} (epoch {result.selected_epoch} selected: val {val}; "
                      f"{result.trainable_params:,} of {result.total_params:,} parameters trained)")
        if result.skipped:
            ui.err.print(f"[yellow]{len(result.skipped)} image(s) skipped[/yellow] (missing or unreadable)")



def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
