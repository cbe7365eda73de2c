"""Reports: JSON (NaN written as null, so every JSON reader accepts it) and markdown tables."""

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


def report_markdown(report: dict) -> str:
    """Family × metric table of one model's report (overall row last)."""
    head = "| family | " + " | ".join(t for _, t in FRAME_COLUMNS) + " | reals | fakes | videos |"
    title = f"# {report.get('model', 'model')} on {report.get('data', '?')} ({report.get('split', '?')})"
    lines = [title, "",
             f"Video scores: {report.get('video_agg', 'mean')} of frame scores. Each fake family is scored "
             "against all reals of the split. EER is interpolated where FPR and FNR cross (DeepfakeBench takes "
             "the nearest ROC point); a video is its frames' full folder path (DeepfakeBench groups frames by "
             "the folder's basename).", "", head, "|" + "---|" * (len(FRAME_COLUMNS) + 4)]
    blocks = [*report["families"].items(), ("**overall**", report["overall"])]
    for fam, m in blocks:
        cells = " | ".join(fmt(m.get(key)) for key, _ in FRAME_COLUMNS)
        lines.append(f"| {fam} | {cells} | {m['n_real']} | {m['n_fake']} | {m.get('n_videos', '')} |")
    for pair, o in (report.get("split_overlap") or {}).items():
        lines += ["", f"**Split overlap** (allowed by --allow-split-overlap): {pair} share {o['videos']} video(s) and "
                  f"{o['frames']} frame(s)."]
    for warning in report.get("data_warnings") or []:
        lines += ["", f"Data warning: {warning}"]
    if report.get("skipped"):
        lines += ["", f"Skipped {len(report['skipped'])} unreadable image(s); first: {report['skipped'][0]}"]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str | os.PathLike) -> None:
    out = Path(out_dir)
    write_json(out / "report.json", clean(report))
    write_text(out / "report.md", report_markdown(report))


def results_markdown(rows: Sequence[dict], metric: str = "auc") -> str:
    """Model × family table of one metric from results rows, with seen / unseen / all means."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    families = list(dict.fromkeys(r["family"] for r in rows))
    seen = {r["family"]: r["seen"] for r in rows}
    value = {(r["model"], r["family"]): r.get(metric) for r in rows}
    names = [f"{f}{'' if seen[f] else '†'}" for f in families]
    header = ["model", *names, "mean seen", "mean unseen", "mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in models:
        vals = [value.get((m, f)) for f in families]
        means = [_mean([v for f, v in zip(families, vals, strict=True) if pick(f)])
                 for pick in (lambda f: seen[f], lambda f: not seen[f], lambda f: True)]
        lines.append("| " + " | ".join([m, *(fmt(v, 3) for v in vals), *(fmt(v, 3) for v in means)]) + " |")
    return "\n".join(lines) + f"\n\n{metric.upper()} per family; † = unseen family (never trained on).\n"


def _mean(values: list) -> float | None:
    ok = [v for v in values if v is not None and math.isfinite(v)]
    return sum(ok) / len(ok) if ok else None
