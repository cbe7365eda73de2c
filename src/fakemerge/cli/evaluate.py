"""`fakemerge eval MODEL... --data DATA --out DIR`: metrics per family, reports, ROC, robustness and heatmap PNGs.

Settings come in layers, later wins: defaults < `--config eval.yaml` (EvalOptions fields) < flags. Runs
unchanged under `accelerate launch [--num_processes N] -m fakemerge.cli eval ...`: the images are shared out,
the main process gathers the scores and writes the one report (the others print and write nothing).
"""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import ValidationError
from rich.table import Table

from fakemerge.cli import dataflags, ui
from fakemerge.errors import InputError


def split_list(values: list[str] | None) -> list[str] | None:
    """`--families FS,FR` and `--families FS --families FR` both give ["FS", "FR"]."""
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def report_table(report: dict) -> Table:
    from fakemerge.evaluation.report import fmt, frame_columns

    columns = frame_columns(report)
    table = Table(title=f"{report['model']} — {Path(report['data']).name} {report['split']} "
                        f"(video: {report['video_agg']})")
    table.add_column("family")
    for _, title in columns:
        table.add_column(title, justify="right")
    table.add_column("reals/fakes", justify="right")
    for fam, m in [*report["families"].items(), ("overall", report["overall"])]:
        table.add_row(fam, *(fmt(m.get(k), 3) for k, _ in columns), f"{m['n_real']}/{m['n_fake']}",
                      style="bold" if fam == "overall" else None)
    return table


def robustness_table(report: dict) -> Table:
    from fakemerge.evaluation.report import fmt

    families = list(report["families"])
    table = Table(title=f"{report['model']} — {Path(report['data']).name}: AUC under perturbations "
                        f"(seed {report['perturbation_seed']})")
    for name in ("perturbation", "level", "AUC", "Δ AUC", *families, "video AUC"):
        table.add_column(name, justify="left" if name == "perturbation" else "right")
    clean = report["overall"]["auc"]
    table.add_row("clean", "", fmt(clean, 3), "", *(fmt(report["families"][f]["auc"], 3) for f in families),
                  fmt(report["overall"]["video_auc"], 3), style="bold")
    for e in report["robustness"]:
        auc = e["overall"]["auc"]
        drop = None if auc is None or clean is None else auc - clean
        table.add_row(e["perturbation"], str(e["level"] or ""), fmt(auc, 3), fmt(drop, 3),
                      *(fmt(e["families"].get(f, {}).get("auc"), 3) for f in families),
                      fmt(e["overall"]["video_auc"], 3))
    return table


def eval_command(
    models: list[Path] = typer.Argument(..., help="One or more fakemerge model files (.safetensors)."),
    data: list[str] = typer.Option(..., "--data", help="DeepfakeBench/DF40 JSON, folder tree or CSV manifest "
                                   "(repeatable: each dataset reported on its own)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory for reports and plots."),
    split: str = typer.Option(None, help="Split to evaluate (default test)."),
    families: list[str] = typer.Option(None, "--families", help="Fake families to include (comma list)."),
    seen: list[str] = typer.Option(None, "--seen", help="Families counted as seen (default: those the "
                                   "models were trained on)."),
    video_agg: str = typer.Option(None, "--video-agg", help="Frame→video aggregation: mean (default) | max | topk."),
    topk: int = typer.Option(None, "--topk", help="k for --video-agg topk (default 3)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Images per batch and process (default 128)."),
    root: Path = typer.Option(None, "--root", help="Data root (default: the JSON's directory)."),
    compression: str = dataflags.COMPRESSION,
    frames_per_video: int = dataflags.FRAMES_PER_VIDEO,
    family_map: str = dataflags.FAMILY_MAP,
    path_map: list[str] = dataflags.PATH_MAP,
    allow_split_overlap: bool = dataflags.ALLOW_SPLIT_OVERLAP,
    models_per_pass: int = typer.Option(None, "--models-per-pass",
                                        help="Models sharing one pass over the data (all are held in memory; "
                                             "default 8)."),
    perturb: list[str] = typer.Option(None, "--perturb",
                                      help="Robustness: also score under perturbations, e.g. "
                                           "jpeg:50,blur:1.5,noise:0.05,resize:0.5; a bare family (blur) is "
                                           "its 5 severities, `all` every family's (jpeg blur noise resize "
                                           "saturation contrast brightness block)."),
    seed: int = typer.Option(None, "--seed", help="Seed of the random perturbations (default 0)."),
    device: str = typer.Option(None, "--device", help="cpu | cuda | cuda:N (default: the process's GPU, else cpu)."),
    num_workers: int = typer.Option(None, "--num-workers",
                                    help="Decoding worker processes (default: 0 on CPU, up to 8 on GPU)."),
    no_roc: bool = typer.Option(False, "--no-roc", help="Skip the ROC plots."),
    config: Path = typer.Option(None, "--config", help="YAML file of evaluation settings (EvalOptions fields)."),
) -> None:
    """Evaluate model(s): frame AUC/AP/EER/ACC and video AUC per family; report.json, report.md, roc.png."""
    from fakemerge.config import EvalOptions, build, first_error
    from fakemerge.data.options import DataOptions
    from fakemerge.evaluation.report import results_text, write_results
    from fakemerge.evaluation.runner import evaluate_many, family_rows, robustness_rows
    from fakemerge.io import read_mapping
    from fakemerge.models.detector import read_meta

    local = locals()
    flags = {k: local[k] for k in ("split", "video_agg", "batch_size", "models_per_pass", "seed", "device",
                                   "num_workers") if local[k] is not None}
    flags.update({k: v for k, v in (("families", split_list(families)), ("perturbations", split_list(perturb)),
                                    ("k", topk)) if v is not None})
    if no_roc:
        flags["roc"] = False
    options = build(EvalOptions, read_mapping(config) if config is not None else {}, flags,
                    str(config) if config is not None else "eval options")
    try:
        data_options = DataOptions(data=data, root=str(root) if root else None, compression=compression,
                                   frames_per_video=frames_per_video, family_map=family_map,
                                   path_map=list(path_map or []), allow_split_overlap=allow_split_overlap)
    except ValidationError as e:
        where, msg = first_error(e, "data options")
        raise InputError(f"--{where.replace('_', '-')}: {msg}") from None
    metas = [read_meta(m) for m in models]
    names = [m.stem for m in models]
    if len(set(names)) != len(names):
        raise InputError(f"{', '.join(map(str, models))}: model file names must differ "
                         "(they name the outputs)")
    seen_families = split_list(seen) or sorted({f for meta in metas for f in meta.families})
    out_dirs = [out] if len(models) == 1 else [out / name for name in names]
    with ui.bars() as progress:
        reports = evaluate_many(models, data_options, out_dirs, names=names, options=options, progress=progress)
    if not reports:  # a process of `accelerate launch` other than the main one
        return
    rows, robustness = [], []
    shown: set[str] = set()
    for i, report in enumerate(reports):  # dataset-major
        meta, name = metas[i % len(models)], names[i % len(models)]
        for warning in report["data_warnings"]:
            if warning not in shown:
                shown.add(warning)
                ui.err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
        ui.out.print(report_table(report))
        if report.get("robustness"):
            ui.out.print(robustness_table(report))
        if report["skipped"]:
            ui.out.print(f"[yellow]skipped {len(report['skipped'])} unreadable image(s)[/yellow]: "
                         f"{report['skipped'][0]}", highlight=False)
        rows += [{"dataset": report["data"], **row}
                 for row in family_rows(report, name, meta.kind, meta.method, meta.families, seen_families)]
        robustness += robustness_rows(report, name)
    write_results(rows, out, robustness)
    if len(models) > 1 or len(data) > 1:
        ui.out.print(results_text(rows), highlight=False)
    ui.out.print(f"wrote reports to {out}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
