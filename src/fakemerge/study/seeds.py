"""The runs of one study (one folder per seed, as `run_demo` writes it) read back, and tables of
mean ± std over seeds per cell."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fakemerge.evaluation.report import fmt
from fakemerge.evaluation.stats import Summary, mean_std, summarize
from fakemerge.study.entries import ModelEntry, load_entries


@dataclass
class Run:
    """One seed's run folder."""

    folder: Path
    seed: int
    rows: list[dict]
    entries: dict[str, ModelEntry]
    tuning: dict
    calibration: dict
    timings: dict
    detections: list

    def value(self, model: str, family: str, metric: str = "auc") -> float | None:
        for r in self.rows:
            if r["model"] == model and r["family"] == family:
                return r.get(metric)
        return None

    def families(self, seen: bool | None = None) -> list[str]:
        fams = dict.fromkeys((r["family"], r["seen"]) for r in self.rows)
        return [f for f, s in fams if seen is None or s == seen]

    def mean(self, model: str, seen: bool | None = True, metric: str = "auc") -> float | None:
        """Mean of `metric` over the seen (True), unseen (False) or all (None) families."""
        vals = [self.value(model, f, metric) for f in self.families(seen)]
        vals = [v for v in vals if v is not None and math.isfinite(v)]
        return sum(vals) / len(vals) if vals else None

    def predictions(self, model: str) -> dict[str, np.ndarray]:
        from fakemerge.evaluation.runner import read_predictions

        return read_predictions(self.folder / "eval" / "test" / model / "predictions.csv")

    def names(self, pred: Callable[[ModelEntry], bool]) -> list[str]:
        return [n for n, e in self.entries.items() if pred(e)]


def load_run(folder: str | Path) -> Run:
    folder = Path(folder)

    def read(name: str):
        path = folder / name
        return json.loads(path.read_text()) if path.is_file() else {}

    timings = read("timings.json")
    return Run(folder, int(timings.get("seed", 0)), read("results.json") or [],
               {e.name: e for e in load_entries(folder / "models.json")}, read("tuning.json"),
               read("calibration.json"), timings, read("detections.json") or [])


def across(runs: Sequence[Run], fn: Callable[[Run], float | None]) -> Summary:
    """`fn` per run, summarised over the runs (runs where it is undefined are left out)."""
    return summarize([v for v in (fn(r) for r in runs) if v is not None])


def cell(s: Summary) -> str:
    return mean_std(s) if s.n else "n/a"


def auc_table(runs: Sequence[Run], models: Sequence[str], metric: str = "auc") -> str:
    """Model × family table of `metric`, each cell mean ± std over the runs, with seen/unseen/all means
    (each mean is taken per run first, then summarised)."""
    families = runs[0].families()
    seen = {r["family"]: r["seen"] for r in runs[0].rows}
    header = ["model", *[f if seen[f] else f + "†" for f in families], "mean seen", "mean unseen", "mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in models:
        cells = [cell(across(runs, lambda r, f=f, m=m: r.value(m, f, metric))) for f in families]
        means = [cell(across(runs, lambda r, s=s, m=m: r.mean(m, s, metric))) for s in (True, False, None)]
        lines.append("| " + " | ".join([m, *cells, *means]) + " |")
    n = len(runs)
    lines += ["", f"{metric.upper()} per test family, mean ± std over {n} seed{'s' if n > 1 else ''}; "
              "† = unseen family (never trained on)."]
    return "\n".join(lines)


def fmt_setting(setting: dict, defaults: dict) -> str:
    """A merge setting, showing only what differs from the method's defaults (seed left out)."""
    shown = {k: v for k, v in setting.items() if k != "seed" and defaults.get(k) != v}
    return ", ".join(f"{k}={fmt(v, 3) if isinstance(v, float) else v}" for k, v in shown.items()) or "defaults"
