"""Reports: JSON (NaN written as null, so every JSON reader accepts it) and markdown tables; `write_report`
for one model's evaluation, `write_results` for the model × family results of several."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from fakemerge.io import write_json, write_text

FRAME_COLUMNS = (("auc", "AUC"), ("ap", "AP"), ("eer", "EER"), ("acc", "ACC"), ("acc_real", "ACC real"),
                 ("acc_fake", "ACC fake"), ("video_auc", "video AUC"))


def clean(obj):
    """The same structure with NaN / inf floats replaced by None (valid JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def fmt(x, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


CALIBRATED_COLUMNS = (("acc_calibrated", "ACC@thr"), ("acc_real_calibrated", "ACC@thr real"),
                      ("acc_fake_calibrated", "ACC@thr fake"))


def frame_columns(report: dict) -> tuple[tuple[str, str], ...]:
    """The metric columns of a report: ACC at the calibrated threshold too when the model has one."""
    if report.get("threshold") is None:
        return FRAME_COLUMNS
    return FRAME_COLUMNS[:6] + CALIBRATED_COLUMNS + FRAME_COLUMNS[6:]


def threshold_note(report: dict) -> str:
    t = report.get("threshold")
    if t is None:
        return "Uncalibrated model: ACC at the conventional threshold 0.5 only."
    return f"ACC at 0.5 and at the model's calibrated threshold {t:.4g} (ACC@thr)."


def report_markdown(report: dict) -> str:
    """Family × metric table of one model's report (overall row last), then its robustness table if any."""
    columns = frame_columns(report)
    head = "| family | " + " | ".join(t for _, t in columns) + " | reals | fakes | videos |"
    title = f"# {report.get('model', 'model')} on {report.get('data', '?')} ({report.get('split', '?')})"
    lines = [title, "",
             f"Video scores: {report.get('video_agg', 'mean')} of frame scores. Each fake family is scored "
             "against all reals of the split. EER is interpolated where FPR and FNR cross (DeepfakeBench takes "
             "the nearest ROC point); a video is its frames' full folder path (DeepfakeBench groups frames by "
             f"the folder's basename). {threshold_note(report)}", "", head, "|" + "---|" * (len(columns) + 4)]
    blocks = [*report["families"].items(), ("**overall**", report["overall"])]
    for fam, m in blocks:
        cells = " | ".join(fmt(m.get(key)) for key, _ in columns)
        lines.append(f"| {fam} | {cells} | {m['n_real']} | {m['n_fake']} | {m.get('n_videos', '')} |")
    for pair, o in (report.get("split_overlap") or {}).items():
        lines += ["", f"**Split overlap** (allowed by --allow-split-overlap): {pair} share {o['videos']} video(s) and "
                  f"{o['frames']} frame(s)."]
    for warning in report.get("data_warnings") or []:
        lines += ["", f"Data warning: {warning}"]
    if report.get("skipped"):
        lines += ["", f"Skipped {len(report['skipped'])} unreadable image(s); first: {report['skipped'][0]}"]
    if report.get("robustness"):
        lines += ["", robustness_markdown(report)]
    return "\n".join(lines) + "\n"


def robustness_markdown(report: dict) -> str:
    """Perturbation × (overall AUC, its drop from clean, AUC per family, video AUC) of one report."""
    families = list(report["families"])
    head = ["perturbation", "level", "AUC", "Δ AUC", *(f"AUC {f}" for f in families), "video AUC"]
    lines = [f"## Robustness (seed {report.get('perturbation_seed')}; Δ = perturbed − clean)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    clean_auc = report["overall"]["auc"]
    lines.append("| " + " | ".join(["clean", "", fmt(clean_auc), "", *(fmt(report["families"][f]["auc"])
                                                                         for f in families),
                                     fmt(report["overall"].get("video_auc"))]) + " |")
    for entry in report["robustness"]:
        auc = entry["overall"]["auc"]
        drop = auc - clean_auc if auc is not None and clean_auc is not None else None
        cells = [entry["perturbation"], str(entry["level"] or ""), fmt(auc), fmt(drop),
                 *(fmt(entry["families"].get(f, {}).get("auc")) for f in families),
                 fmt(entry["overall"].get("video_auc"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str | os.PathLike) -> None:
    out = Path(out_dir)
    write_json(out / "report.json", clean(report))
    write_text(out / "report.md", report_markdown(report))


def write_results(rows: Sequence[dict], out_dir: str | os.PathLike, robustness: Sequence[dict] = ()) -> dict:
    """The results files of several models, under one set of names: results.json (the rows), results.md
    (model × family AUC with seen / unseen means; a section per dataset when rows carry several `dataset`s)
    and auc_heatmap.png (auc_heatmap_<dataset stem>.png per dataset); with robustness rows
    (`runner.robustness_rows`), robustness.json, robustness.md and robustness_heatmap.png. Returns the paths."""
    from fakemerge.evaluation.plots import auc_heatmap

    out = Path(out_dir)
    paths = {"results": out / "results.json", "table": out / "results.md"}
    write_json(paths["results"], clean(list(rows)))
    write_text(paths["table"], results_text(rows))
    by_dataset = _by_dataset(rows)
    for source, part in by_dataset.items():
        name = "auc_heatmap.png" if len(by_dataset) == 1 else f"auc_heatmap_{Path(source).stem}.png"
        paths[f"heatmap {source}" if len(by_dataset) > 1 else "heatmap"] = out / name
        auc_heatmap(part, out / name, title=None if len(by_dataset) == 1 else f"AUC on {Path(source).name}")
    overall = [r for r in robustness if r["family"] == "overall"]
    if overall:
        paths.update(robustness=out / "robustness.json", robustness_table=out / "robustness.md",
                     robustness_heatmap=out / "robustness_heatmap.png")
        write_json(paths["robustness"], clean(list(robustness)))
        several = len(_by_dataset(overall)) > 1
        table = [{"model": f"{r['model']} — {Path(r['dataset']).stem}" if several else r["model"],
                  "family": r["perturbation"], "auc": r["auc"]} for r in overall]
        write_text(paths["robustness_table"], results_markdown(table, seen_means=False))
        auc_heatmap(table, paths["robustness_heatmap"], title="AUC under each perturbation")
    return {k: str(v) for k, v in paths.items()}


def results_text(rows: Sequence[dict]) -> str:
    """results_markdown of the rows, a section per dataset when they come from several."""
    by_dataset = _by_dataset(rows)
    if len(by_dataset) == 1:
        return results_markdown(rows)
    return "\n".join(f"## {source}\n\n" + results_markdown(part) for source, part in by_dataset.items())


def _by_dataset(rows: Sequence[dict]) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(r.get("dataset"), []).append(r)
    return out


def results_markdown(rows: Sequence[dict], metric: str = "auc", seen_means: bool = True) -> str:
    """Model × family table of one metric from results rows, with seen / unseen / all means (only the mean of
    all columns when not `seen_means`)."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    families = list(dict.fromkeys(r["family"] for r in rows))
    seen = {r["family"]: r.get("seen", True) for r in rows}
    value = {(r["model"], r["family"]): r.get(metric) for r in rows}
    names = [f"{f}{'' if seen[f] else '†'}" for f in families]
    picks = [lambda f: seen[f], lambda f: not seen[f], lambda f: True] if seen_means else [lambda f: True]
    header = ["model", *names, *(["mean seen", "mean unseen"] if seen_means else []), "mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in models:
        vals = [value.get((m, f)) for f in families]
        means = [_mean([v for f, v in zip(families, vals, strict=True) if pick(f)]) for pick in picks]
        lines.append("| " + " | ".join([m, *(fmt(v, 3) for v in vals), *(fmt(v, 3) for v in means)]) + " |")
    note = "per family; † = unseen family (never trained on)" if seen_means else "per column"
    return "\n".join(lines) + f"\n\n{metric.upper()} {note}.\n"


def _mean(values: list) -> float | None:
    ok = [v for v in values if v is not None and math.isfinite(v)]
    return sum(ok) / len(ok) if ok else None
