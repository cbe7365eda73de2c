"""`fakemerge eval MODEL... --data DATA --out DIR`: metrics per family, reports, ROC and heatmap PNGs."""

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
    from fakemerge.evaluation.report import FRAME_COLUMNS, fmt

    table = Table(title=f"{report['model']} — {Path(report['data']).name} {report['split']} "
                        f"(video: {report['video_agg']})")
    table.add_column("family")
    for _, title in FRAME_COLUMNS:
        table.add_column(title, justify="right")
    table.add_column("reals/fakes", justify="right")
    for fam, m in [*report["families"].items(), ("overall", report["overall"])]:
        table.add_row(fam, *(fmt(m.get(k), 3) for k, _ in FRAME_COLUMNS), f"{m['n_real']}/{m['n_fake']}",
                      style="bold" if fam == "overall" else None)
    return table


def eval_command(
    models: list[Path] = typer.Argument(..., help="One or more fakemerge model files (.safetensors)."),
    data: list[str] = typer.Option(..., "--data", help="DeepfakeBench/DF40 JSON, folder tree or CSV manifest "
                                   "(repeatable: each dataset reported on its own)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory for reports and plots."),
    split: str = typer.Option("test", help="Split to evaluate."),
    families: list[str] = typer.Option(None, "--families", help="Fake families to include (comma list)."),
    seen: list[str] = typer.Option(None, "--seen", help="Families counted as seen (default: those the "
                                   "models were trained on)."),
    video_agg: str = typer.Option("mean", "--video-agg", help="Frame→video aggregation: mean | max | topk."),
    topk: int = typer.Option(3, "--topk", help="k for --video-agg topk."),
    batch_size: int = typer.Option(128, "--batch-size"),
    root: Path = typer.Option(None, "--root", help="Data root (default: the JSON's directory)."),
    compression: str = dataflags.COMPRESSION,
    frames_per_video: int = dataflags.FRAMES_PER_VIDEO,
    family_map: str = dataflags.FAMILY_MAP,
    path_map: list[str] = dataflags.PATH_MAP,
    allow_split_overlap: bool = dataflags.ALLOW_SPLIT_OVERLAP,
    models_per_pass: int = typer.Option(8, "--models-per-pass", min=1,
                                        help="Models sharing one pass over the data (all are held in memory)."),
) -> None:
    """Evaluate model(s): frame AUC/AP/EER/ACC and video AUC per family; report.json, report.md, roc.png."""
    from fakemerge.config import first_error
    from fakemerge.data.options import DataOptions
    from fakemerge.evaluation.plots import auc_heatmap
    from fakemerge.evaluation.report import clean, results_markdown
    from fakemerge.evaluation.runner import evaluate_many, family_rows
    from fakemerge.io import write_json, write_text
    from fakemerge.models.detector import read_meta

    metas = [read_meta(m) for m in models]
    names = [m.stem for m in models]
    if len(set(names)) != len(names):
        raise InputError(f"{', '.join(map(str, models))}: model file names must differ "
                         "(they name the outputs)")
    try:
        options = DataOptions(data=data, root=str(root) if root else None, compression=compression,
                              frames_per_video=frames_per_video, family_map=family_map,
                              path_map=list(path_map or []), allow_split_overlap=allow_split_overlap)
    except ValidationError as e:
        where, msg = first_error(e, "data options")
        raise InputError(f"--{where.replace('_', '-')}: {msg}") from None
    seen_families = split_list(seen) or sorted({f for meta in metas for f in meta.families})
    out_dirs = [out] if len(models) == 1 else [out / name for name in names]
    with ui.bars() as progress:
        reports = evaluate_many(models, options, out_dirs=out_dirs, names=names, split=split,
                                families=split_list(families), video_agg=video_agg, k=topk, batch_size=batch_size,
                                progress=progress, models_per_pass=models_per_pass)
    rows = []
    shown: set[str] = set()
    for i, report in enumerate(reports):
        meta, name = metas[i % len(models)], names[i % len(models)]
        for warning in report["data_warnings"]:
            if warning not in shown:
                shown.add(warning)
                ui.err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
        ui.out.print(report_table(report))
        if report["skipped"]:
            ui.out.print(f"[yellow]skipped {len(report['skipped'])} unreadable image(s)[/yellow]: "
                              f"{report['skipped'][0]}", highlight=False)
        rows += [{"dataset": report["data"], **row}
                 for row in family_rows(report, name, meta.kind, meta.method, meta.families, seen_families)]
    write_json(out / "results.json", clean(rows))
    if len(models) > 1 or len(data) > 1:
        sources = list(dict.fromkeys(r["dataset"] for r in rows))
        text = results_markdown(rows) if len(sources) == 1 else "\n".join(
            f"## {source}\n\n" + results_markdown([r for r in rows if r["dataset"] == source]) for source in sources)
        write_text(out / "results.md", text)
        if len(data) == 1:
            auc_heatmap(rows, out / "heatmap.png")
        ui.out.print(text, highlight=False)
    ui.out.print(f"wrote reports to {out}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
