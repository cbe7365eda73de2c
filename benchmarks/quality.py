"""Quality benchmark: the ForgeryLab demo at a given scale -> docs/results.md (+ heatmap PNG).

    python benchmarks/quality.py --scale full --out runs/full --doc docs/results.md

Every number in the document comes from this one run. Merge settings (R²M's open choices) are ranked on
the validation split; the test split is only reported.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from rich.console import Console
from transformers.utils import logging as hf_logging

from fakemerge.demo import ABLATION_FAMILY, FMSD_ABLATION, run_demo
from fakemerge.evaluation.report import results_markdown
from fakemerge.merging import method_defaults
from fakemerge.models.detector import read_meta

console = Console()


def mean_seen(rows: list[dict], model: str) -> float:
    vals = [r["auc"] for r in rows if r["model"] == model and r["seen"]]
    return sum(vals) / len(vals) if vals else float("nan")


def select_on_val(val_rows: list[dict], prefix: str) -> tuple[str, dict[str, float]]:
    """The variant whose name starts with `prefix` with the best mean seen-family AUC on validation."""
    scores = {m: mean_seen(val_rows, m) for m in dict.fromkeys(r["model"] for r in val_rows)
              if m.startswith(prefix) and "(" not in m}
    return max(scores, key=scores.get), scores


def diagnostics_section(model_path: Path) -> str:
    meta = read_meta(model_path)
    extra = meta.extra
    names = [Path(m["model"]).stem for m in meta.recipe["models"]]
    lines = ["| task | ‖τ‖ | " + " | ".join(f"cos {n}" for n in names) + " |",
             "|" + "---|" * (len(names) + 2)]
    for n, norm, row in zip(names, extra["task_norms"], extra["task_cosine"], strict=True):
        lines.append(f"| {n} | {norm:.3f} | " + " | ".join(f"{c:.3f}" for c in row) + " |")
    diag = extra.get("diagnostics", {})
    keys = ("r2m_eigenvalues", "r2m_core_norm", "r2m_residual_norm", "r2m_eta", "r2m_norm_weights")
    scalars = {k: diag[k] for k in keys if k in diag}
    energy = diag.get("r2m_core_energy")
    if isinstance(energy, dict) and energy:
        vals = list(energy.values())
        scalars["r2m_core_energy (mean over tensors)"] = sum(vals) / len(vals)
    lines += ["", "R²M diagnostics: " + json.dumps(scalars, default=lambda x: round(x, 4))]
    if extra.get("warnings"):
        lines += ["", "Warnings: " + "; ".join(extra["warnings"])]
    return "\n".join(lines)


def _section(title: str, rows: list[dict], note: str = "") -> list[str]:
    return [f"## {title}", "", note, "", results_markdown(rows)] if rows else []


def _findings(rows: list[dict], out: Path) -> list[str]:
    """Computed, not written by hand: where R²M ranks and the diagnostics that explain it."""
    kinds = {r["model"]: r["kind"] for r in rows}
    full_merges = [m for m, k in kinds.items() if k == "merged" and "(" not in m
                   and not m.startswith(("effort-", "fmsd-"))]
    ranked = sorted(full_merges, key=lambda m: -mean_seen(rows, m))
    extra = read_meta(out / "models" / "merged-r2m.safetensors").extra
    cos = extra["task_cosine"]
    off = [c for i, row in enumerate(cos) for j, c in enumerate(row) if i < j]
    energy = extra.get("diagnostics", {}).get("r2m_core_energy", {})
    mean_energy = sum(energy.values()) / len(energy) if energy else float("nan")
    return ["## Findings (computed from the tables)", "",
            f"- Best merge of the full fine-tuned specialists: **{ranked[0]}** "
            f"({mean_seen(rows, ranked[0]):.3f} mean seen AUC); R²M with default options ranks "
            f"{ranked.index('r2m') + 1} of {len(ranked)} ({mean_seen(rows, 'r2m'):.3f}); plain averaging "
            f"{mean_seen(rows, 'average'):.3f}; joint training {mean_seen(rows, 'joint'):.3f}.",
            f"- The specialists' task vectors are nearly orthogonal (pairwise cosine {min(off):.2f}–{max(off):.2f})"
            f" and R²M's rank-1 real core holds on average {mean_energy:.0%} of a tensor's task-vector "
            "energy: there is little shared 'Real' direction for the core to capture, and R²M lands next to "
            "plain averaging. The paper's premise (a dominant shared Real component) is not what this "
            "benchmark's specialists show; see the diagnostics below.",
            f"- Best AUC of any model on an unseen family: {max(r['auc'] for r in rows if not r['seen']):.3f}: "
            "merging does not create generalisation the specialists lack.", ""]


def build_doc(out: Path, doc: Path, scale: str, seconds: float) -> str:
    rows = json.loads((out / "results.json").read_text())
    val_rows = json.loads((out / "results_val.json").read_text())
    timings = json.loads((out / "timings.json").read_text())
    kinds = {r["model"]: r["kind"] for r in rows}
    ablation = {f"{name}-{ABLATION_FAMILY}" for name, _ in FMSD_ABLATION}

    def pick(pred):
        return [r for r in rows if pred(r["model"], kinds[r["model"]])]

    def merged_of(prefix):
        return pick(lambda m, k: k == "merged" and "(FS,FR,EFS)" not in m and m.startswith(prefix)
                    and (prefix or not m.startswith(("effort-", "fmsd-"))))

    parts = [
        "# ForgeryLab results",
        "",
        f"Generated by `python benchmarks/quality.py --scale {scale}` in {seconds / 60:.1f} min "
        "on this machine (2 CPU cores). Seed 0, one run: differences below ~0.02 AUC are within noise "
        "(≥ 400 + 400 test images per family at full scale). Models are selected on the validation "
        "split; only test numbers are shown unless stated. † = unseen family (never trained on).",
        "",
        f"Stage timings (s): {json.dumps({k: v for k, v in timings.items() if k != 'base'})}",
        "",
        "Tiny base quality (from its pretraining report): "
        + json.dumps({k: timings.get("base", {}).get(k) for k in ("probe_pretrained", "probe_random_init",
                                                                  "train_seconds", "probe_protocol")}),
        "",
    ]
    parts += _section("Cross-family generalisation of single models (specialists and joint training)",
                      pick(lambda m, k: k in ("specialist", "joint", "base") and m not in ablation),
                      "Rows: training method and family (`FS` = full fine-tuning, `effort-FS`, `fmsd-FS`); "
                      "columns: test family.")
    for prefix, label in (("", "full fine-tuned"), ("effort-", "Effort"), ("fmsd-", "FMSD")):
        merged = merged_of(prefix)
        if not merged:
            continue
        names = dict.fromkeys(r["model"] for r in merged)
        ranked = sorted(((mean_seen(rows, m), m) for m in names), reverse=True)
        parts += _section(f"Merged detectors from the four {label} specialists", merged)
        parts += ["Ranking by mean seen-family test AUC: " + ", ".join(f"{m} {v:.3f}" for v, m in ranked) + ".",
                  ""]
    parts += _findings(rows, out)
    best, val_scores = select_on_val(val_rows, "r2m")
    parts += ["## R²M options chosen on validation", "",
              "Mean seen-family AUC on the **validation** split per R²M variant (full fine-tuned specialists): "
              + ", ".join(f"{m} {v:.3f}" for m, v in sorted(val_scores.items(), key=lambda kv: -kv[1]))
              + f". Selected: **{best}** (its test mean seen AUC: {mean_seen(rows, best):.3f}).",
              "",
              "Rows named `r2m` used the library defaults in force for this run: "
              + json.dumps(read_meta(out / "models" / "merged-r2m.safetensors").recipe["parameters"])
              + f"; the current defaults are {json.dumps(method_defaults('r2m'))}.", ""]
    parts += _section("Composability: merge FS, FR, EFS, then `--add` FE",
                      pick(lambda m, k: "(FS,FR,EFS)" in m or m in ("r2m", "effort-r2m", "fmsd-r2m")),
                      "`r2m(FS,FR,EFS)+FE` is rebuilt from the stored recipe of `r2m(FS,FR,EFS)` plus the FE "
                      "specialist; it must equal `r2m` on the four specialists.")
    ablated = [f"fmsd-{ABLATION_FAMILY}", *sorted(ablation)]
    val_auc = {m: read_meta(out / "models" / f"{m}.safetensors").extra["val"]["auc"] for m in ablated
               if (out / "models" / f"{m}.safetensors").exists()}
    parts += _section(f"FMSD ablation (trained on {ABLATION_FAMILY})",
                      pick(lambda m, k: m in ablation or m == f"fmsd-{ABLATION_FAMILY}"),
                      "Validation AUC on the training family (what FMSD's defaults are chosen on): "
                      + ", ".join(f"{m} {v:.4f}" for m, v in sorted(val_auc.items(), key=lambda kv: -kv[1]))
                      + ".")
    parts += ["## Merge diagnostics (R²M, default options, full fine-tuned specialists)", "",
              diagnostics_section(out / "models" / "merged-r2m.safetensors"), ""]
    for prefix in ("effort-", "fmsd-"):
        path = out / "models" / f"merged-{prefix}r2m.safetensors"
        if path.exists():
            parts += [f"### {prefix.rstrip('-')} specialists", "", diagnostics_section(path), ""]
    heat = doc.parent / "results_auc_heatmap.png"
    shutil.copy(out / "auc_heatmap.png", heat)
    parts += [f"![AUC heatmap]({heat.name})", ""]
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="full", choices=["small", "full"])
    ap.add_argument("--out", type=Path, default=Path("runs/full"))
    ap.add_argument("--doc", type=Path, default=Path("docs/results.md"))
    ap.add_argument("--reuse", action="store_true", help="Only rebuild the document from an existing run.")
    args = ap.parse_args()
    hf_logging.disable_progress_bar()
    t0 = time.perf_counter()
    if not args.reuse:
        run_demo(args.out, scale=args.scale, log=console.print)
    seconds = json.loads((args.out / "timings.json").read_text())["total"] if args.reuse else \
        time.perf_counter() - t0
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    from fakemerge.io import write_text

    write_text(args.doc, build_doc(args.out, args.doc, args.scale, seconds))
    console.print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
