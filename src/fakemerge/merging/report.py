"""Merge report: task-vector statistics, the outlier warning, report.json and plots.

Outlier rule (a poisoned or broken specialist), applied when at least 3 specialists are merged (with two,
neither can be told to be the odd one):
- norm: ‖τi‖ > 3 × the median norm, or < the median / 3;
- direction: the cosine between τi and the sum of the other task vectors is more than 0.25 below the
  median of those cosines (specialists of one base and one set of reals share a direction; one that
  points elsewhere was trained on something else, or broken).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from fakemerge.io import save_figure, write_json

NORM_FACTOR = 3.0
COSINE_GAP = 0.25


def cosine_to_others(gram: torch.Tensor) -> torch.Tensor:
    """cos(τi, Σ_{j≠i} τj) for every i, from the Gram matrix alone."""
    n = gram.shape[0]
    total = gram.sum()
    row = gram.sum(1)
    dot = row - gram.diagonal()  # <τi, Σ_{j≠i} τj>
    others_sq = total - 2 * row + gram.diagonal()  # ‖Σ_{j≠i} τj‖²
    norms = gram.diagonal().clamp_min(0).sqrt()
    denom = (norms * others_sq.clamp_min(0).sqrt()).clamp_min(1e-30)
    return dot / denom if n > 1 else torch.ones(n, dtype=gram.dtype)


def outlier_warnings(names: Sequence[str], gram: torch.Tensor) -> list[str]:
    """One message per specialist whose task vector is an outlier in norm or direction (rule above)."""
    if len(names) < 3:
        return []
    norms = gram.diagonal().clamp_min(0).sqrt()
    med = norms.median().item()
    cos = cosine_to_others(gram)
    med_cos = cos.median().item()
    warnings = []
    for name, n, c in zip(names, norms.tolist(), cos.tolist(), strict=True):
        if n > NORM_FACTOR * med or n < med / NORM_FACTOR:
            warnings.append(f"{name}: task-vector norm {n:.4g} is far from the median {med:.4g} "
                            f"(> {NORM_FACTOR:g}× apart): a broken or poisoned specialist?")
        if c < med_cos - COSINE_GAP:
            warnings.append(f"{name}: task vector points away from the others (cosine {c:.3f} vs median "
                            f"{med_cos:.3f}): a specialist from other data or a poisoned one?")
    return warnings


def jsonable(value):
    """Diagnostics as plain JSON values (tensors → lists, tuples → lists, keys → strings)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)


def _per_layer(diagnostics: dict) -> dict[str, dict[str, list[float]]]:
    """Diagnostics entries that are per-tensor series: {name: {tensor: number or [number per task]}}."""
    series = {}
    for name, value in diagnostics.items():
        if isinstance(value, dict) and len(value) > 1:
            rows = {k: v if isinstance(v, list) else [v] for k, v in value.items()}
            if all(r and all(isinstance(x, int | float) for x in r) for r in rows.values()):
                series[name] = rows
    return series


def write_merge_report(directory: str | os.PathLike, result, names: Sequence[str]) -> list[Path]:
    """report.json + PNG plots for a `MergeResult`; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    labels = [Path(n).stem for n in names]
    meta = result.meta
    report = {"out": str(result.out), "method": meta.method, "parameters": meta.recipe.get("parameters"),
              "head": meta.recipe.get("head"), "base": meta.base_id, "base_hash": meta.base_hash,
              "models": meta.recipe.get("models"), "task_norms": dict(zip(labels, result.norms, strict=True)),
              "task_cosine": result.cosine, "warnings": result.warnings, "diagnostics": result.diagnostics}
    files = [directory / "report.json"]
    write_json(files[0], report)

    def save(fig, name: str) -> None:
        fig.tight_layout()
        save_figure(fig, directory / name, dpi=100)
        files.append(directory / name)

    n = len(labels)
    fig, ax = plt.subplots(figsize=(2 + 0.7 * n, 1.5 + 0.6 * n))
    im = ax.imshow(result.cosine, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    for i in range(n):
        for j in range(n):
            c = result.cosine[i][j]
            ax.text(j, i, f"{c:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if abs(c) > 0.6 else "black")
    fig.colorbar(im, ax=ax)
    ax.set_title("task-vector cosine similarity")
    save(fig, "task_cosine.png")

    weights = result.diagnostics.get("r2m_norm_weights")
    bars = {"task_norms.png": ("‖τi‖ (backbone)", result.norms)}
    if isinstance(weights, list) and len(weights) == n:
        bars["norm_matching_weights.png"] = ("R²M norm-matching weight m̄ / mᵢ", weights)
    for file, (title, values) in bars.items():
        fig, ax = plt.subplots(figsize=(2 + 0.6 * n, 3))
        ax.bar(labels, values)
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=45)
        save(fig, file)

    for name, rows in _per_layer(result.diagnostics).items():
        fig, ax = plt.subplots(figsize=(8, 3))
        width = max(len(r) for r in rows.values())
        for j in range(width):
            ax.plot([r[j] if j < len(r) else float("nan") for r in rows.values()], marker=".",
                    label=labels[j] if width == n else None)
        ax.set_title(name.replace("_", " ") + " per tensor")
        ax.set_xlabel("tensor (merge order)")
        if width == n:
            ax.legend(fontsize=7)
        save(fig, f"{name}.png")
    return files
