"""Plots (matplotlib, Agg backend, written atomically): ROC curves, the model × family AUC heatmap, and AUC
under perturbations."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from fakemerge.io import save_figure  # noqa: E402


def roc_plot(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], path: str | os.PathLike,
             title: str = "ROC") -> None:
    """One ROC curve per name from (labels, scores); curves with a single class are left out."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (labels, scores) in curves.items():
        labels = np.asarray(labels)
        if 0 < labels.sum() < len(labels):
            fpr, tpr, _ = roc_curve(labels, np.asarray(scores, np.float64))
            ax.plot(fpr, tpr, label=name, lw=1.5)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax.set(xlabel="false positive rate (reals called fake)", ylabel="true positive rate (fakes caught)",
           xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path)


def auc_heatmap(rows: Sequence[Mapping], path: str | os.PathLike, metric: str = "auc",
                title: str | None = None) -> None:
    """Model × family heatmap of `metric` from results rows; unseen families are marked with †."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    families = list(dict.fromkeys(r["family"] for r in rows))
    seen = {r["family"]: r.get("seen", True) for r in rows}
    grid = np.full((len(models), len(families)), np.nan)
    for r in rows:
        v = r.get(metric)
        grid[models.index(r["model"]), families.index(r["family"])] = np.nan if v is None else v
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(families), 0.8 + 0.45 * len(models)))
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="RdYlGn", vmin=0.5, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(families)), [f + ("" if seen[f] else "†") for f in families], rotation=30,
                  ha="right")
    ax.set_yticks(range(len(models)), models)
    for i in range(len(models)):
        for j in range(len(families)):
            v = grid[i, j]
            ax.text(j, i, "n/a" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label=metric.upper())
    ax.set_title(title or f"{metric.upper()} per model and family († unseen)")
    save_figure(fig, path)


def robustness_plot(report: dict, path: str | os.PathLike) -> None:
    """AUC against severity, one panel per perturbation family (severities in the order evaluated): the
    overall AUC in bold, each forgery family thin, the clean AUCs dashed."""
    entries = report["robustness"]
    kinds = list(dict.fromkeys(e["family"] for e in entries))
    families = list(report["families"])
    cols = min(4, len(kinds))
    rows = math.ceil(len(kinds) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False, sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, kind in zip(axes.flat, kinds, strict=False):
        mine = [e for e in entries if e["family"] == kind]
        x = range(len(mine))
        series = [("overall", [e["overall"]["auc"] for e in mine], report["overall"]["auc"])]
        series += [(f, [e["families"].get(f, {}).get("auc") for e in mine], report["families"][f]["auc"])
                   for f in families]
        for j, (label, values, clean) in enumerate(series):
            colour = colours[j % len(colours)]
            ax.plot(x, [np.nan if v is None else v for v in values], marker="o", lw=2.2 if j == 0 else 1.0,
                    color=colour, label=label)
            if clean is not None and math.isfinite(clean):
                ax.axhline(clean, color=colour, ls="--", lw=0.7)
        ax.set_xticks(list(x), [f"{e['severity']:g}" for e in mine])
        ax.set(title=kind, xlabel="severity", ylim=(0.0, 1.02))
    for ax in axes.flat[len(kinds):]:
        ax.set_visible(False)
    axes[0, 0].set_ylabel("AUC")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{report.get('model', 'model')}: AUC under perturbations (dashed: clean)")
    fig.tight_layout()
    save_figure(fig, path)
