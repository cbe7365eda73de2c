"""Run a detector over a dataset split: stream scores to a CSV, then compute the report from the CSV.

Memory stays flat in the dataset size: each batch's scores are written out and forgotten (no features,
no tensors kept); the report is computed from the CSV columns (a few numbers per image).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fakemerge.data.formats import Dataset
from fakemerge.data.options import DataOptions
from fakemerge.data.options import read as read_data
from fakemerge.data.records import Record, select
from fakemerge.errors import InputError
from fakemerge.evaluation import metrics
from fakemerge.evaluation.plots import roc_plot
from fakemerge.evaluation.report import write_report
from fakemerge.io import atomic_path
from fakemerge.models.detector import Detector, ModelMeta
from fakemerge.models.loading import load_detector
from fakemerge.progress import Progress, silent

CSV_COLUMNS = ("path", "video", "family", "label", "score")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def predict(detectors: Detector | Sequence[Detector], root: str | os.PathLike, records: Sequence[Record], *,
            batch_size: int = 128, csv_path: str | os.PathLike | Sequence[str | os.PathLike],
            progress: Progress = silent, num_workers: int = 0) -> Path | list[Path]:
    """Score every record with each detector and stream (path, video, family, label, score) rows to its CSV.

    Several detectors share one pass over the data (each image is decoded once); give one CSV path per
    detector. Unreadable images are left out of the CSVs and listed in `<csv>.skipped.txt` (one line
    each), so a report can say how many were skipped instead of silently dropping them.
    """
    from fakemerge.data.dataset import ImageDataset, drop_skipped

    single = isinstance(detectors, Detector)
    detectors = [detectors] if single else list(detectors)
    csv_paths = [Path(csv_path)] if single else [Path(p) for p in csv_path]
    if len(csv_paths) != len(detectors):
        raise ValueError(f"{len(detectors)} detectors but {len(csv_paths)} CSV paths")
    preps = {d.preprocessing for d in detectors}
    if len(preps) != 1:
        raise InputError(f"models with different preprocessing ({', '.join(map(str, preps))}) cannot share a pass")
    dataset = ImageDataset(root, list(records), preps.pop())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers)
    for detector in detectors:
        detector.eval()
    done = 0
    with contextlib.ExitStack() as stack:
        writers = []
        for path in csv_paths:
            f = stack.enter_context(open(stack.enter_context(atomic_path(path)), "w", newline="", encoding="utf-8",
                                         errors="surrogateescape"))  # file names that are not UTF-8 round-trip
            writers.append(csv.writer(f))
            writers[-1].writerow(CSV_COLUMNS)
        for batch in loader:
            pixels, _, index, bad = drop_skipped(batch)
            dataset.note_skipped(bad)
            if len(index):
                rows = [dataset.records[i] for i in index.tolist()]
                for detector, writer in zip(detectors, writers, strict=True):
                    device = next(detector.parameters()).device
                    scores = detector.predict_proba(pixels.to(device)).float().cpu().tolist()
                    writer.writerows((r.path, r.video, r.family, r.label, f"{score:.6g}")
                                     for r, score in zip(rows, scores, strict=True))
            done += len(index) + len(bad)
            progress("eval", done, len(dataset))
    for path in csv_paths:
        _write_skipped(path, dataset.skipped)
    return csv_paths[0] if single else csv_paths


def _write_skipped(csv_path: Path, skipped: list[str]) -> None:
    skipped_path = csv_path.with_name(csv_path.name + ".skipped.txt")
    if skipped:
        with atomic_path(skipped_path) as tmp:
            tmp.write_text("\n".join(skipped) + "\n")
    elif skipped_path.exists():
        skipped_path.unlink()


def read_predictions(csv_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The CSV's columns as arrays (strings for path/video/family, int labels, float scores)."""
    cols: dict[str, list] = {c: [] for c in CSV_COLUMNS}
    with open(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        for row in csv.DictReader(f):
            for c in CSV_COLUMNS:
                cols[c].append(row[c])
    out = {c: np.asarray(cols[c], dtype=object) for c in ("path", "video", "family")}
    out["label"] = np.asarray(cols["label"], dtype=np.int64)
    out["score"] = np.asarray(cols["score"], dtype=np.float64)
    return out


def _metrics_block(video: np.ndarray, label: np.ndarray, score: np.ndarray, video_agg: str, k: int) -> dict:
    block = metrics.binary_metrics(label, score)
    _, vy, vs = metrics.video_scores(video, label, score, how=video_agg, k=k)
    block["video_auc"] = metrics.auc(vy, vs)
    block["video_ap"] = metrics.average_precision(vy, vs)
    block["video_eer"] = metrics.eer(vy, vs)
    block["n_videos"] = len(vy)
    return block


def report_from_predictions(pred: dict[str, np.ndarray], *, video_agg: str = "mean", k: int = 3) -> dict:
    """Overall and per-family metrics; each fake family is scored against ALL reals of the split."""
    if len(pred["label"]) == 0:
        raise InputError("no predictions to evaluate (every image was skipped or the split is empty)")
    overall = _metrics_block(pred["video"], pred["label"], pred["score"], video_agg, k)
    real = pred["label"] == 0
    families = {}
    for fam in sorted(set(pred["family"][~real].tolist())):
        rows = real | ((pred["label"] == 1) & (pred["family"] == fam))
        families[fam] = _metrics_block(pred["video"][rows], pred["label"][rows], pred["score"][rows],
                                       video_agg, k)
    return {"overall": overall, "families": families}


def evaluate(model: str | os.PathLike | Detector, data: str | os.PathLike, *, out_dir: str | os.PathLike,
             name: str | None = None, **options) -> dict:
    """Evaluate one model on one split; writes predictions.csv, report.json, report.md and (`roc`) roc.png.

    Returns the report dict (overall + per-family frame metrics and video AUC, skipped images, settings).
    Options are those of `evaluate_many`.
    """
    return evaluate_many([model], data, out_dirs=[out_dir], names=[name], **options)[0]


def evaluate_many(models: Sequence[str | os.PathLike | Detector], data: str | os.PathLike | DataOptions, *,
                  out_dirs: Sequence[str | os.PathLike], names: Sequence[str | None] | None = None,
                  split: str = "test", families: list[str] | None = None, video_agg: str = "mean", k: int = 3,
                  batch_size: int = 128, progress: Progress = silent,
                  device: str | torch.device | None = None, roc: bool = True, models_per_pass: int = 8
                  ) -> list[dict]:
    """Evaluate several models on one split, `models_per_pass` at a time sharing each pass over the data
    (decoding is paid once per pass; memory holds that many models). One report per model, as `evaluate`.

    `data` is a dataset path or a `DataOptions`; with several datasets there is one report per dataset and
    model (dataset-major), written to OUT_DIR/<dataset file stem>/.
    """
    if video_agg not in metrics.AGGREGATIONS:
        raise InputError(f"--video-agg {video_agg}: choose one of {', '.join(metrics.AGGREGATIONS)}")
    names = list(names) if names is not None else [None] * len(models)
    if not len(models) == len(out_dirs) == len(names):
        raise ValueError("models, out_dirs and names must have the same length")
    options = data if isinstance(data, DataOptions) else DataOptions(data=[str(data)])
    datasets, notes = read_data(options, [split])
    stems = [Path(ds.source).stem for ds in datasets]
    if len(set(stems)) != len(stems):
        raise InputError(f"{', '.join(options.data)}: dataset file names must differ (they name the outputs)")
    reports = []
    for ds, stem in zip(datasets, stems, strict=True):
        dirs = out_dirs if len(datasets) == 1 else [Path(d) / stem for d in out_dirs]
        reports += _evaluate_dataset(models, ds, dirs, names, split=split, families=families, video_agg=video_agg,
                                     k=k, batch_size=batch_size, progress=progress, device=device, roc=roc,
                                     models_per_pass=models_per_pass, notes=notes)
    return reports


def _evaluate_dataset(models, ds: Dataset, out_dirs, names, *, split, families, video_agg, k, batch_size, progress,
                      device, roc, models_per_pass, notes) -> list[dict]:
    chosen = select(ds.records, split, families)
    if not chosen:
        which = f" for families {families}" if families else ""
        raise InputError(f"{ds.source}: no images in split {split!r}{which}")
    if families and not any(r.label == 1 for r in chosen):
        raise InputError(f"{ds.source}: no fake images of families {families} in split {split!r}")
    target = torch.device(device) if device else default_device()
    settings = {"data": ds.source, "split": split, "video_agg": video_agg,
                "topk": k if video_agg == "topk" else None, "n_images": len(chosen),
                "data_warnings": [*ds.warnings, *notes], "split_overlap": ds.overlap}
    reports = []
    for start in range(0, len(models), models_per_pass):
        group = range(start, min(start + models_per_pass, len(models)))
        loaded = [_load(models[i], names[i]) for i in group]
        csv_paths = [Path(out_dirs[i]) / "predictions.csv" for i in group]
        predict([d.to(target) for d, _, _ in loaded], ds.root, chosen, batch_size=batch_size,
                csv_path=csv_paths, progress=progress)
        for (_, meta, name), csv_path in zip(loaded, csv_paths, strict=True):
            reports.append(_report(csv_path, name, meta, settings, roc))
    return reports


def _load(model: str | os.PathLike | Detector, name: str | None) -> tuple[Detector, ModelMeta | None, str]:
    if isinstance(model, Detector):
        return model, None, name or "model"
    detector, meta = load_detector(model)
    return detector, meta, name or Path(model).stem


def _report(csv_path: Path, name: str, meta: ModelMeta | None, settings: dict, roc: bool) -> dict:
    """The report of one model's predictions CSV, written beside it (+ its ROC curves when `roc`)."""
    pred = read_predictions(csv_path)
    report = {
        "model": name,
        "model_meta": None if meta is None else {"kind": meta.kind, "method": meta.method,
                                                 "families": meta.families, "base_id": meta.base_id},
        **settings, "n_scored": int(len(pred["label"])), "skipped": _read_skipped(csv_path),
        **report_from_predictions(pred, video_agg=settings["video_agg"], k=settings["topk"] or 3),
    }
    write_report(report, csv_path.parent)
    if roc:
        curves = {f"{fam} (AUC {_fmt(report['families'][fam]['auc'])})": _family_curve(pred, fam)
                  for fam in report["families"]}
        roc_plot(curves, csv_path.parent / "roc.png", title=f"{name} — {settings['split']}")
    return report


def _family_curve(pred: dict[str, np.ndarray], fam: str) -> tuple[np.ndarray, np.ndarray]:
    rows = (pred["label"] == 0) | (pred["family"] == fam)
    return pred["label"][rows], pred["score"][rows]


def _read_skipped(csv_path: Path) -> list[str]:
    path = csv_path.with_name(csv_path.name + ".skipped.txt")
    return path.read_text().splitlines() if path.exists() else []


def _fmt(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.3f}"


def family_rows(report: dict, model_name: str, kind: str, method: str | None, trained_on: list[str],
                seen_families: list[str]) -> list[dict]:
    """One results.json row per fake family of `report` (schema shared by the demo and the benchmarks)."""
    seen = set(seen_families)
    rows = []
    for fam, m in report["families"].items():
        video_auc = m.get("video_auc")
        rows.append({"model": model_name, "kind": kind, "method": method, "trained_on": list(trained_on),
                     "family": fam, "seen": fam in seen, "auc": m["auc"], "ap": m["ap"], "eer": m["eer"],
                     "acc": m["acc"],
                     "video_auc": None if video_auc is None or math.isnan(video_auc) else video_auc})
    return rows
