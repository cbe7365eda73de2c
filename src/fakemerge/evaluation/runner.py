"""Run a detector over a dataset split: stream scores to a CSV, then compute the report from the CSV.

Memory stays flat in the dataset size: each batch's scores are written out and forgotten (no features,
no tensors kept); the report is computed from the CSV columns (a few numbers per image).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from fakemerge.data.records import Record, select
from fakemerge.errors import InputError
from fakemerge.evaluation import metrics
from fakemerge.evaluation.plots import roc_plot
from fakemerge.evaluation.report import write_report
from fakemerge.io import atomic_path
from fakemerge.models.detector import Detector, load_detector

Progress = Callable[[int, int], None]  # (images done, images total)
CSV_COLUMNS = ("path", "video", "family", "label", "score")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def predict(detector: Detector, root: str | os.PathLike, records: Sequence[Record], *, batch_size: int = 128,
            csv_path: str | os.PathLike, progress: Progress | None = None, num_workers: int = 0) -> Path:
    """Score every record and stream (path, video, family, label, score) rows to `csv_path`.

    Unreadable images are left out of the CSV and listed in `<csv>.skipped.txt` (one line each), so a
    report can say how many were skipped instead of silently dropping them.
    """
    from fakemerge.data.dataset import ImageDataset, drop_skipped

    dataset = ImageDataset(root, list(records), detector.config.image_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers)
    device = next(detector.parameters()).device
    detector.eval()
    csv_path = Path(csv_path)
    done = 0
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for batch in loader:
            pixels, _, index, bad = drop_skipped(batch)
            dataset.note_skipped(bad)
            if len(index):
                scores = detector.predict_proba(pixels.to(device)).float().cpu().tolist()
                for i, score in zip(index.tolist(), scores, strict=True):
                    r = dataset.records[i]
                    writer.writerow((r.path, r.video, r.family, r.label, f"{score:.6g}"))
            done += len(index) + len(bad)
            if progress is not None:
                progress(done, len(dataset))
    skipped = dataset.skipped
    skipped_path = csv_path.with_name(csv_path.name + ".skipped.txt")
    if skipped:
        with atomic_path(skipped_path) as tmp:
            tmp.write_text("\n".join(skipped) + "\n")
    elif skipped_path.exists():
        skipped_path.unlink()
    return csv_path


def read_predictions(csv_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The CSV's columns as arrays (strings for path/video/family, int labels, float scores)."""
    cols: dict[str, list] = {c: [] for c in CSV_COLUMNS}
    with open(csv_path, newline="") as f:
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


def evaluate(model: str | os.PathLike | Detector, data: str | os.PathLike, *, split: str = "test",
             out_dir: str | os.PathLike, families: list[str] | None = None, video_agg: str = "mean",
             k: int = 3, batch_size: int = 128, root: str | os.PathLike | None = None,
             progress: Progress | None = None, device: str | torch.device | None = None,
             name: str | None = None, roc: bool = True) -> dict:
    """Evaluate one model on one split; writes predictions.csv, report.json, report.md and (`roc`) roc.png.

    Returns the report dict (overall + per-family frame metrics and video AUC, skipped images, settings).
    """
    from fakemerge.data.formats import load_records

    if video_agg not in metrics.AGGREGATIONS:
        raise InputError(f"--video-agg {video_agg}: choose one of {', '.join(metrics.AGGREGATIONS)}")
    if isinstance(model, Detector):
        detector, meta, name = model, None, name or "model"
    else:
        detector, meta = load_detector(model)
        name = name or Path(model).stem
    data_root, records = load_records(data, root=root)
    chosen = select(records, split, families)
    if not chosen:
        which = f" for families {families}" if families else ""
        raise InputError(f"{data}: no images in split {split!r}{which}")
    if families and not any(r.label == 1 for r in chosen):
        raise InputError(f"{data}: no fake images of families {families} in split {split!r}")
    detector = detector.to(torch.device(device) if device else default_device())
    out = Path(out_dir)
    csv_path = predict(detector, data_root, chosen, batch_size=batch_size, csv_path=out / "predictions.csv",
                       progress=progress)
    pred = read_predictions(csv_path)
    report = {
        "model": name,
        "model_meta": None if meta is None else {"kind": meta.kind, "method": meta.method,
                                                 "families": meta.families, "base_id": meta.base_id},
        "data": str(data), "split": split, "video_agg": video_agg, "topk": k if video_agg == "topk" else None,
        "n_images": len(chosen), "n_scored": int(len(pred["label"])),
        "skipped": _read_skipped(csv_path),
        **report_from_predictions(pred, video_agg=video_agg, k=k),
    }
    write_report(report, out)
    if roc:
        curves = {f"{fam} (AUC {_fmt(report['families'][fam]['auc'])})": _family_curve(pred, fam)
                  for fam in report["families"]}
        roc_plot(curves, out / "roc.png", title=f"{name} — {split}")
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
