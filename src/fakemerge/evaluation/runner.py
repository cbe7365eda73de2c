"""Run detectors over a dataset split: stream scores to CSVs, then compute the reports from the CSVs.

Memory stays flat in the dataset size: each batch's scores are written out and forgotten (no features, no
tensors kept); a report is computed from its CSV's columns (a few numbers per image). Under
`accelerate launch` the images are shared out over the processes (`fakemerge.sharding`): each scores its
share on its own device, the main process gathers the scores batch by batch and writes the same CSVs and
reports, in the same order, as one process would; the others write nothing. Decoding runs in data-loader
workers ahead of the forward when there are cores to spare (`loader_workers`), and batches reach the GPU
from pinned memory without blocking. With `perturbations`, every model is also scored once per perturbation
(`evaluation.perturbations`) and its report gets AUC per perturbation and severity.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fakemerge.config import EvalOptions
from fakemerge.data.formats import Dataset
from fakemerge.data.options import DataOptions
from fakemerge.data.options import read as read_data
from fakemerge.data.records import Record, select
from fakemerge.errors import InputError
from fakemerge.evaluation import metrics
from fakemerge.evaluation.perturbations import Perturbation, parse
from fakemerge.evaluation.report import fmt, write_report
from fakemerge.io import atomic_path
from fakemerge.models.detector import Detector, ModelMeta
from fakemerge.models.loading import load_detector
from fakemerge.progress import Progress, silent
from fakemerge.sharding import Shards

CSV_COLUMNS = ("path", "video", "family", "label", "score")
DEFAULTS = EvalOptions()


def loader_workers(options: EvalOptions, device: torch.device, processes: int = 1) -> int:
    """Data-loader workers: as set, else none on a CPU (decoding would compete with the forward for the same
    cores, and the in-process decoded-image cache serves repeated passes), else up to 8 per process from the
    cores the processes leave free (a GPU forward outruns one decoding core many times over)."""
    if options.num_workers is not None:
        return options.num_workers
    if device.type == "cpu":
        return 0
    return max(0, min(8, (os.cpu_count() or 1) // processes - 1))


@torch.inference_mode()
def predict(detectors: Detector | Sequence[Detector], root: str | os.PathLike, records: Sequence[Record],
            csv_path: str | os.PathLike | Sequence[str | os.PathLike], *, options: EvalOptions = DEFAULTS,
            perturbation: Perturbation | None = None, progress: Progress = silent, stage: str = "eval",
            shards: Shards | None = None) -> Path | list[Path]:
    """Score every record with each detector and stream (path, video, family, label, score) rows to its CSV.

    Several detectors share one pass over the data (each image is decoded once); give one CSV path per
    detector. Unreadable images are left out of the CSVs and listed in `<csv>.skipped.txt` (one line
    each), so a report can say how many were skipped instead of silently dropping them. Uses
    `options.batch_size` and `num_workers`; `perturbation` changes each decoded image first.
    """
    from fakemerge.data.dataset import SKIPPED_LABEL, ImageDataset

    single = isinstance(detectors, Detector)
    detectors = [detectors] if single else list(detectors)
    csv_paths = [Path(csv_path)] if single else [Path(p) for p in csv_path]
    if len(csv_paths) != len(detectors):
        raise ValueError(f"{len(detectors)} detectors but {len(csv_paths)} CSV paths")
    preps = {d.preprocessing for d in detectors}
    if len(preps) != 1:
        raise InputError(f"models with different preprocessing ({', '.join(map(str, preps))}) cannot share a pass")
    shards = shards or Shards.current()
    perturb = None if perturbation is None else functools.partial(perturbation, seed=options.seed)
    dataset = ImageDataset(root, list(records), preps.pop(), perturb=perturb)
    device = next(detectors[0].parameters()).device
    share = torch.utils.data.Subset(dataset, [i for block in shards.blocks(len(dataset), options.batch_size)
                                              for i in block])  # its batches are its blocks
    workers = loader_workers(options, device, shards.world)
    loader = torch.utils.data.DataLoader(share, batch_size=options.batch_size, shuffle=False, num_workers=workers,
                                         pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)
    for detector in detectors:
        detector.eval()

    def scored_batches():
        """Per batch: (dataset index, [score per detector] or None when unreadable) for each image."""
        for pixels, labels, index in loader:
            good = labels != SKIPPED_LABEL
            x = pixels.to(device, non_blocking=True)  # from pinned memory on a GPU: the CPU goes on at once
            if not good.all():
                x = x[good.to(device)]
            scores = [detector.predict_proba(x).float().cpu().tolist() for detector in detectors] if len(x) else []
            per_image = iter(zip(*scores, strict=True))
            yield [(i, list(next(per_image)) if ok else None) for i, ok in zip(index.tolist(), good.tolist(),
                                                                            strict=True)]

    done = 0
    with contextlib.ExitStack() as stack:
        writers = []
        if shards.is_main:
            for path in csv_paths:
                f = stack.enter_context(open(stack.enter_context(atomic_path(path)), "w", newline="",
                                             encoding="utf-8", errors="surrogateescape"))  # any file name
                writers.append(csv.writer(f))
                writers[-1].writerow(CSV_COLUMNS)
        for results in shards.gather(scored_batches(), len(dataset), options.batch_size):
            dataset.note_skipped([i for i, scores in results if scores is None])
            for k, writer in enumerate(writers):
                writer.writerows(_row(dataset.records[i], scores[k]) for i, scores in results if scores is not None)
            done += len(results)
            if shards.is_main:
                progress(stage, done, len(dataset))
    if shards.is_main:
        for path in csv_paths:
            _write_skipped(path, dataset.skipped)
    return csv_paths[0] if single else csv_paths


def _row(r: Record, score: float) -> tuple:
    return r.path, r.video, r.family, r.label, f"{score:.6g}"


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


def _metrics_block(video: np.ndarray, label: np.ndarray, score: np.ndarray, video_agg: str, k: int,
                   threshold: float | None) -> dict:
    block = metrics.binary_metrics(label, score)
    if threshold is not None:  # the model's calibrated threshold, beside the conventional 0.5
        at = metrics.binary_metrics(label, score, threshold)
        block.update(acc_calibrated=at["acc"], acc_real_calibrated=at["acc_real"],
                     acc_fake_calibrated=at["acc_fake"])
    _, vy, vs = metrics.video_scores(video, label, score, how=video_agg, k=k)
    block["video_auc"] = metrics.auc(vy, vs)
    block["video_ap"] = metrics.average_precision(vy, vs)
    block["video_eer"] = metrics.eer(vy, vs)
    block["n_videos"] = len(vy)
    return block


def report_from_predictions(pred: dict[str, np.ndarray], *, video_agg: str = "mean", k: int = 3,
                            threshold: float | None = None) -> dict:
    """Overall and per-family metrics; each fake family is scored against ALL reals of the split. With a
    calibrated `threshold`, ACC at it too (`acc_calibrated`, ...); `acc` is always at 0.5."""
    if len(pred["label"]) == 0:
        raise InputError("no predictions to evaluate (every image was skipped or the split is empty)")
    overall = _metrics_block(pred["video"], pred["label"], pred["score"], video_agg, k, threshold)
    real = pred["label"] == 0
    families = {}
    for fam in sorted(set(pred["family"][~real].tolist())):
        rows = real | ((pred["label"] == 1) & (pred["family"] == fam))
        families[fam] = _metrics_block(pred["video"][rows], pred["label"][rows], pred["score"][rows],
                                       video_agg, k, threshold)
    return {"overall": overall, "families": families}


def evaluate(model: str | os.PathLike | Detector, data: str | os.PathLike | DataOptions, out_dir: str | os.PathLike,
             *, name: str | None = None, options: EvalOptions = DEFAULTS, progress: Progress = silent) -> dict | None:
    """Evaluate one model on one split; writes predictions.csv, report.json, report.md, roc.png (`roc`) and,
    with perturbations, perturbed/*.csv and robustness.png. Returns the report (of the first dataset when
    `data` names several; None on a process of an `accelerate launch` other than the main one)."""
    reports = evaluate_many([model], data, [out_dir], names=[name], options=options, progress=progress)
    return reports[0] if reports else None


def evaluate_many(models: Sequence[str | os.PathLike | Detector], data: str | os.PathLike | DataOptions,
                  out_dirs: Sequence[str | os.PathLike], *, names: Sequence[str | None] | None = None,
                  options: EvalOptions = DEFAULTS, progress: Progress = silent) -> list[dict]:
    """Evaluate several models on one split, `options.models_per_pass` at a time sharing each pass over the
    data (decoding is paid once per pass; memory holds that many models). One report per model, as
    `evaluate`, returned on the main process ([] on the other processes of a launch).

    `data` is a dataset path or a `DataOptions` (how to read the datasets); with several datasets there is
    one report per dataset and model (dataset-major), written to OUT_DIR/<dataset file stem>/.
    """
    names = list(names) if names is not None else [None] * len(models)
    if not len(models) == len(out_dirs) == len(names):
        raise ValueError("models, out_dirs and names must have the same length")
    data_options = data if isinstance(data, DataOptions) else DataOptions(data=[str(data)])
    datasets, notes = read_data(data_options, [options.split])
    stems = [Path(ds.source).stem for ds in datasets]
    if len(set(stems)) != len(stems):
        raise InputError(f"{', '.join(data_options.data)}: dataset file names must differ (they name the outputs)")
    shards = Shards.current()
    reports = []
    for ds, stem in zip(datasets, stems, strict=True):
        dirs = out_dirs if len(datasets) == 1 else [Path(d) / stem for d in out_dirs]
        reports += _evaluate_dataset(models, ds, dirs, names, options, notes, shards,
                                     progress if shards.is_main else silent)
    return reports


def _evaluate_dataset(models, ds: Dataset, out_dirs, names, options: EvalOptions, notes: list[str],
                      shards: Shards, progress: Progress) -> list[dict]:
    chosen = select(ds.records, options.split, options.families)
    if not chosen:
        which = f" for families {options.families}" if options.families else ""
        raise InputError(f"{ds.source}: no images in split {options.split!r}{which}")
    if options.families and not any(r.label == 1 for r in chosen):
        raise InputError(f"{ds.source}: no fake images of families {options.families} in split {options.split!r}")
    device = _device(options.device, shards)
    conditions: list[Perturbation | None] = [None, *parse(options.perturbations)]
    settings = {"data": ds.source, "split": options.split, "video_agg": options.video_agg,
                "topk": options.k if options.video_agg == "topk" else None, "n_images": len(chosen),
                "data_warnings": [*ds.warnings, *notes], "split_overlap": ds.overlap, "processes": shards.world,
                "perturbation_seed": options.seed if len(conditions) > 1 else None}
    reports = []
    for start in range(0, len(models), options.models_per_pass):
        group = range(start, min(start + options.models_per_pass, len(models)))
        loaded = [_load(models[i], names[i]) for i in group]
        detectors = [d.to(device) for d, _, _ in loaded]
        for condition in conditions:
            stage = "eval" if condition is None else f"eval {condition.name}"
            predict(detectors, ds.root, chosen, [_csv_path(out_dirs[i], condition) for i in group],
                    options=options, perturbation=condition, progress=progress, stage=stage, shards=shards)
        if shards.is_main:
            for (detector, meta, name), i in zip(loaded, group, strict=True):
                reports.append(_report(Path(out_dirs[i]), name, meta, detector.threshold, settings, options,
                                       conditions[1:]))
    return reports


def _device(asked: str | None, shards: Shards) -> torch.device:
    if asked is None:
        return shards.device
    try:
        device = torch.device(asked)
    except RuntimeError:
        raise InputError(f"--device {asked}: not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {asked}: no CUDA device is available")
    if device.type == "cuda" and device.index is None and shards.world > 1:
        return shards.device  # each launched process on its own GPU
    return device


def _csv_path(out_dir: str | os.PathLike, condition: Perturbation | None) -> Path:
    if condition is None:
        return Path(out_dir) / "predictions.csv"
    return Path(out_dir) / "perturbed" / f"{condition.family}_{condition.severity:g}.csv"


def _load(model: str | os.PathLike | Detector, name: str | None) -> tuple[Detector, ModelMeta | None, str]:
    if isinstance(model, Detector):
        return model, None, name or "model"
    detector, meta = load_detector(model)
    return detector, meta, name or Path(model).stem


def _report(out_dir: Path, name: str, meta: ModelMeta | None, threshold: float | None, settings: dict,
            options: EvalOptions, perturbations: list[Perturbation]) -> dict:
    """The report of one model's predictions CSVs, written beside them (+ ROC and robustness plots)."""
    from fakemerge.evaluation.plots import robustness_plot, roc_plot

    csv_path = _csv_path(out_dir, None)
    pred = read_predictions(csv_path)
    k = options.k
    report = {
        "model": name,
        "model_meta": None if meta is None else {"kind": meta.kind, "method": meta.method,
                                                 "families": meta.families, "base_id": meta.base_id},
        "threshold": threshold, **settings, "n_scored": int(len(pred["label"])),
        "skipped": _read_skipped(csv_path),
        **report_from_predictions(pred, video_agg=options.video_agg, k=k, threshold=threshold),
    }
    if perturbations:
        report["robustness"] = []
        for p in perturbations:
            path = _csv_path(out_dir, p)
            blocks = report_from_predictions(read_predictions(path), video_agg=options.video_agg, k=k,
                                             threshold=threshold)
            report["robustness"].append({"perturbation": p.name, "family": p.family, "severity": p.severity,
                                         "level": p.level, "skipped": len(_read_skipped(path)), **blocks})
    write_report(report, out_dir)
    if options.roc:
        curves = {f"{fam} (AUC {fmt(report['families'][fam]['auc'], 3)})": _family_curve(pred, fam)
                  for fam in report["families"]}
        roc_plot(curves, out_dir / "roc.png", title=f"{name} — {options.split}")
    if perturbations:
        robustness_plot(report, out_dir / "robustness.png")
    return report


def _family_curve(pred: dict[str, np.ndarray], fam: str) -> tuple[np.ndarray, np.ndarray]:
    rows = (pred["label"] == 0) | (pred["family"] == fam)
    return pred["label"][rows], pred["score"][rows]


def _read_skipped(csv_path: Path) -> list[str]:
    path = csv_path.with_name(csv_path.name + ".skipped.txt")
    return path.read_text().splitlines() if path.exists() else []


def family_rows(report: dict, model_name: str, kind: str, method: str | None, trained_on: list[str],
                seen_families: list[str]) -> list[dict]:
    """One results.json row per fake family of `report` (schema shared by the demo and the benchmarks);
    `acc_calibrated` is None for an uncalibrated model."""
    seen = set(seen_families)
    rows = []
    for fam, m in report["families"].items():
        rows.append({"model": model_name, "kind": kind, "method": method, "trained_on": list(trained_on),
                     "family": fam, "seen": fam in seen, "auc": m["auc"], "ap": m["ap"], "eer": m["eer"],
                     "acc": m["acc"], "acc_calibrated": m.get("acc_calibrated"),
                     "video_auc": _finite(m.get("video_auc"))})
    return rows


def robustness_rows(report: dict, model_name: str) -> list[dict]:
    """One row per (perturbation, forgery family or "overall") of `report`: AUC and its drop from clean."""
    rows = []
    for entry in report.get("robustness", []):
        for fam, m in [("overall", entry["overall"]), *entry["families"].items()]:
            clean = report["overall"] if fam == "overall" else report["families"].get(fam, {})
            auc, clean_auc = _finite(m["auc"]), _finite(clean.get("auc"))
            rows.append({"dataset": report["data"], "model": model_name, "perturbation": entry["perturbation"],
                         "family": fam, "auc": auc,
                         "clean_auc": clean_auc, "video_auc": _finite(m.get("video_auc")),
                         "auc_drop": None if auc is None or clean_auc is None else clean_auc - auc})
    return rows


def _finite(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)
