"""`fakemerge demo`: the whole flow on the embedded ForgeryLab benchmark, one command."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fakemerge.cli import ui


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Output directory."),
    scale: str = typer.Option("small", help="small (README demo) or full (results docs)."),
    seed: int = typer.Option(0, help="Seed for training (and, unless --data-seed, for data and base)."),
    data_seed: int = typer.Option(None, "--data-seed", help="Seed for ForgeryLab and the base (default --seed)."),
    cache: Path = typer.Option(None, help="Where the pretrained tiny base is cached (default OUT/cache)."),
) -> None:
    """ForgeryLab -> base (cached) -> specialists + joint -> merges -> calibration -> evaluation -> detection."""
    from fakemerge.demo import SCALES, run_demo
    from fakemerge.errors import InputError

    if scale not in SCALES:
        raise InputError(f"--scale {scale}: expected one of {', '.join(SCALES)}")
    with ui.bars(ui.out) as progress:
        result = run_demo(out, scale=scale, seed=seed, data_seed=data_seed, cache=cache, log=_log,
                          progress=progress)
    shown = {e.name for e in result.entries if e.role in ("main", "composable")}
    tuned = SCALES[scale].tune_budget
    ui.out.print(_table([r for r in result.rows if r["model"] in shown],
                        "merges tuned on validation" if tuned else "merge methods at their defaults"))
    for d in result.detections:
        if d.get("error"):
            ui.out.print(f"detect {d['input']}: error: {d['error']}", markup=False, highlight=False)
            continue
        rule = "calibrated" if d["calibrated"] else "uncalibrated"
        ui.out.print(f"detect {d['input']} ({d['truth']}, {d['family']}): P(fake)={d['score']:.3f} -> "
                     f"{d['verdict'].upper()} (threshold {d['threshold']:.3f}, {rule}; at 0.5: "
                     f"{d['verdict_at_0_5']})", markup=False, highlight=False)
    ui.out.print(f"total {result.timings['total']:.0f} s; results: {result.paths['results']}, "
                 f"table: {result.paths['table']}, heatmap: {result.paths['heatmap']}")


def _log(line: str) -> None:
    ui.out.print(line, markup=False, highlight=False)


def _table(rows: list[dict], what: str) -> Table:
    from fakemerge.demo import pivot_auc

    families, seen, by_model = pivot_auc(rows)
    table = Table(title=f"AUC on the test split ({what}; columns: fake family; * = unseen)")
    table.add_column("model")
    table.add_column("kind")
    for f in families:
        table.add_column(f if seen[f] else f + "*", justify="right")
    for model, d in by_model.items():
        table.add_row(model, d["kind"], *(f"{d[f]:.3f}" if f in d else "" for f in families))
    return table


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
