"""The tables and computed sentences of docs/results.md besides the claims: merges per group with the
setting each method chose on validation, calibration, ablations, merge diagnostics, unseen families."""

from __future__ import annotations

import math
from collections.abc import Sequence

from fakemerge.evaluation.calibration import DEFAULT_RULE, RULES
from fakemerge.evaluation.stats import compare, direction, interval, mean_std, paired, summarize
from fakemerge.study.claims import main_merges, ranked
from fakemerge.study.entries import prefix
from fakemerge.study.seeds import Run, across, auc_table, cell, fmt_setting

LABELS = {"full": "full fine-tuned", "effort": "Effort", "fmsd": "FMSD"}
DOMINANT = 0.5  # the top eigenvalue's share of the task Gram above which a shared direction "dominates"


def singles(runs: Sequence[Run]) -> list[str]:
    names = runs[0].names(lambda e: e.kind in ("specialist", "joint") and e.role == "main")
    return ["## Single models: specialists and joint training", "",
            "Rows: training method and family (`FS` = full fine-tuning, `effort-FS`, `fmsd-FS`); columns: test "
            "family.", "", auc_table(runs, names), ""]


def merges(runs: Sequence[Run], group: str) -> list[str]:
    from fakemerge.merging import method_defaults

    names = main_merges(runs[0], group)
    defaults = {n: f"{n}-default" for n in names if f"{n}-default" in runs[0].entries}
    tuned = bool(defaults)
    order = ranked(runs, names)
    reused = sorted({r.seed for r in runs for n in names
                     if (r.entries[n].selection or {}).get("settings_from_seed") is not None})
    searched = [r.seed for r in runs if r.seed not in reused]
    shared = (f" Seed{'s' if len(searched) > 1 else ''} {', '.join(map(str, searched))} searched; seed"
              f"{'s' if len(reused) > 1 else ''} {', '.join(map(str, reused))} merged at the settings seed "
              f"{searched[0]} chose (0 evaluations of their own; their validation score of that setting is "
              "shown)." if reused and searched else "")
    out = [f"## Merges of the four {LABELS[group]} specialists", "",
           ("Each method at the setting it chose on the validation split (mean seen-family AUC) within the "
            "same budget of validation evaluations; test AUC below." + shared if tuned else
            "Each method at the library defaults (no merge of this group is tuned: the same budget, 0, for every "
            "method)."), "",
           auc_table(runs, [n for n, _ in order]), "",
           "Ranking by seed-mean test AUC over the seen families: "
           + ", ".join(f"{n} {mean_std(s)}" for n, s in order) + ".", ""]
    if not tuned:
        return out
    head = ["method", "evaluations (budget)", "chosen on validation (per seed)", "val AUC", "test AUC tuned",
            "test AUC at defaults", "tuned − defaults", "edge still rising"]
    out += [f"### Settings chosen on validation ({LABELS[group]})", "",
            "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n, _ in order:
        method = runs[0].entries[n].method
        sel = [r.entries[n].selection or {} for r in runs]
        used = "/".join(str(s.get("used", "?")) for s in sel)
        chosen = "; ".join(fmt_setting(r.entries[n].params, method_defaults(method)) for r in runs)
        val = summarize([s.get("val_score") for s in sel if s.get("val_score") is not None])
        ref = defaults.get(n, n)  # a parameter-free method is its own default
        diff = paired([r.mean(n) for r in runs], [r.mean(ref) for r in runs])
        edges = sorted({e for s in sel for e in s.get("open_edges", [])})
        out.append(f"| {n} | {used} ({sel[0].get('budget', '?')}) | {chosen} | {cell(val)} | "
                   f"{cell(across(runs, lambda r, n=n: r.mean(n)))} | "
                   f"{cell(across(runs, lambda r, ref=ref: r.mean(ref)))} | "
                   f"{interval(diff) if ref != n else '— (no parameters)'} | {', '.join(edges) or 'none'} |")
    open_methods = [n for n, _ in order if any(e for r in runs for e in (r.entries[n].selection or {})
                                               .get("open_edges", []))]
    gains = [n for n, _ in order if n in defaults and direction(
        paired([r.mean(n) for r in runs], [r.mean(defaults[n]) for r in runs])) == "above"]
    spaces = "; ".join(f"{runs[0].entries[n].method}: {runs[0].entries[n].selection['source']}" for n, _ in order
                       if runs[0].entries[n].selection)
    out += ["", f"Search spaces: {spaces}.", "",
            f"Tuning raised test AUC above the defaults (interval above 0) for: {', '.join(gains) or 'no method'}. "
            + (f"The best setting was still at an extendable edge of the grid when the budget ran out for: "
               f"{', '.join(open_methods)} — their optimum may lie further out."
               if open_methods else "Every method's best setting lies inside what its search explored."), ""]
    return out


def composable(runs: Sequence[Run]) -> list[str]:
    names = runs[0].names(lambda e: e.role == "composable")
    mains = [f"{prefix(runs[0].entries[n].group)}r2m" for n in names]
    order = list(dict.fromkeys(x for pair in zip(mains, names, strict=True) for x in pair))
    return ["## Composability: merge FS, FR, EFS, then `--add` FE", "",
            "`r2m(FS,FR,EFS)+FE` is rebuilt from the stored recipe of `r2m(FS,FR,EFS)` plus the FE specialist, "
            "at R²M's selected setting; it should equal `r2m` on the four specialists.", "",
            auc_table(runs, order), ""]


def calibration(runs: Sequence[Run]) -> list[str]:
    merged = runs[0].names(lambda e: e.kind == "merged" and e.role == "main")
    if not merged or not runs[0].calibration:
        return []
    acc = across(runs, lambda r: _avg([r.mean(n, True, "acc") for n in merged]))
    cal = across(runs, lambda r: _avg([r.mean(n, True, "acc_calibrated") for n in merged]))
    diff = paired([_avg([r.mean(n, True, "acc_calibrated") for n in merged]) for r in runs],
                  [_avg([r.mean(n, True, "acc") for n in merged]) for r in runs])
    rules = {rule: across(runs, lambda r, rule=rule: _avg([r.calibration[n]["rules"][rule] for n in merged
                                                           if n in r.calibration])) for rule in RULES}
    best = max(rules, key=lambda k: rules[k].mean if rules[k].n else -math.inf)
    vs_best = paired([_avg([r.calibration[n]["rules"][DEFAULT_RULE] for n in merged]) for r in runs],
                     [_avg([r.calibration[n]["rules"][best] for n in merged]) for r in runs])
    if not any(v.n for v in rules.values()):
        rule_sentence = "the rules could not be compared (a half of the validation videos lacked reals or fakes)."
    elif best == DEFAULT_RULE:
        rule_sentence = f"the default rule `{DEFAULT_RULE}` is the best of the four here."
    else:
        rule_sentence = (f"`{best}` does better here than the default `{DEFAULT_RULE}` ({DEFAULT_RULE} − {best} "
                         f"= {interval(vs_best)}); the default is not what this run would choose.")
    return ["## Calibrated verdicts", "",
            f"Every merged model's threshold was chosen on the validation split (rule `{DEFAULT_RULE}`, stored in "
            "its file; the weights are untouched). Test accuracy over the seen families, mean of the "
            f"{len(merged)} main merges: at P(fake) ≥ 0.5 {mean_std(acc)}, at the calibrated threshold "
            f"{mean_std(cal)}; {compare('calibrated ACC', 'ACC at 0.5', diff, 'test accuracy')}", "",
            "Rules compared on validation only (threshold fitted on one half of the validation videos, balanced "
            "accuracy on the other half, both ways): "
            + ", ".join(f"`{k}` {mean_std(v)}" for k, v in rules.items()) + f"; {rule_sentence}", ""]


def r2m_choices(runs: Sequence[Run], group: str) -> list[str]:
    """R²M's open choices, each changed alone at the selected setting: validation and test against it."""
    main = f"{prefix(group)}r2m"
    names = runs[0].names(lambda e: e.role == "option" and e.group == group)
    if not names:
        return []
    head = ["variant", "change", "val score", "Δ val vs selected", "test mean seen", "Δ test seen",
            "test mean unseen", "Δ test unseen"]
    out = [f"### R²M's open choices ({LABELS[group]} specialists, each changed alone at the selected setting)", "",
           "Measured beside the tuned merge, outside the tuning budget (validation score: mean seen-family AUC).",
           "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def val(r: Run, n: str):
        return (r.entries[n].selection or {}).get("val_score") if n in r.entries else None

    moved = []
    for n in names:
        change = ", ".join(f"{k}={v}" for k, v in (runs[0].entries[n].selection or {}).get("change", {}).items())
        d_val = paired([val(r, n) for r in runs], [val(r, main) for r in runs])
        d_seen = paired([r.mean(n) for r in runs], [r.mean(main) for r in runs])
        d_unseen = paired([r.mean(n, False) for r in runs], [r.mean(main, False) for r in runs])
        if direction(d_val) in ("above", "below"):
            moved.append(f"{n} {direction(d_val)}")
        out.append(f"| {n} | {change} | {cell(across(runs, lambda r, n=n: val(r, n)))} | {interval(d_val)} | "
                   f"{cell(across(runs, lambda r, n=n: r.mean(n)))} | {interval(d_seen)} | "
                   f"{cell(across(runs, lambda r, n=n: r.mean(n, False)))} | {interval(d_unseen)} |")
    out += ["", ("Choices whose validation interval excludes the selected setting: " + (", ".join(moved) or "none")
                 + "." if len(runs) > 1 else "One seed: no interval separates a choice from the selected setting."),
            ""]
    return out


def _avg(values: list) -> float | None:
    ok = [v for v in values if v is not None and math.isfinite(v)]
    return sum(ok) / len(ok) if ok else None


def ablation(runs: Sequence[Run]) -> list[str]:
    from fakemerge.models.detector import read_meta
    from fakemerge.study.ablation import ABLATION_FAMILY, reference, variants

    names = runs[0].names(lambda e: e.role == "ablation")
    if not names:
        return []
    runs = [r for r in runs if all(n in r.entries for n in names)]  # the seeds that trained the ablations
    questions = {f"{v.name}-{ABLATION_FAMILY}": v for v in variants(runs[0].seed)}
    refs = {n: reference(questions[n]) for n in names}

    def val_auc(r: Run, n: str):
        return read_meta(r.entries[n].path).extra.get("val", {}).get("auc")

    def spectrum(r: Run, n: str):
        return (read_meta(r.entries[n].path).extra.get("spectrum") or {}).get("tail_energy_ratio")

    head = ["variant", "question", "val AUC (own family)", "Δ val vs default", f"test AUC {ABLATION_FAMILY}",
            "Δ test vs default", "mean unseen test AUC", "tail energy ratio"]
    seeds = ", ".join(str(r.seed) for r in runs)
    plural = "s" if len(runs) > 1 else ""
    out = [f"## Ablations (trained on {ABLATION_FAMILY}; defaults compared on validation; seed{plural} {seeds})", "",
           "Each variant changes one thing of its method's default (e.g. `fmsd-FS`, `effort-FS`): FMSD's layer "
           "selection at an equal number of layers and the same head warm-up (on batches that are not the "
           "scored ones), K, d, the loss weights (the spectral loss is normalised by the tail's own energy), and "
           "Effort's optimizer. Tail energy ratio: Σ‖s_k‖² / Σ‖s_k⁽⁰⁾‖² of the trained artifact subspaces "
           "(what λ_spec holds).", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    better, worse = [], []
    for n in [*dict.fromkeys(refs.values()), *names]:
        ref = refs.get(n, n)
        v_val = across(runs, lambda r, n=n: val_auc(r, n))
        d_val = paired([val_auc(r, n) for r in runs], [val_auc(r, ref) for r in runs])
        d_test = paired([r.value(n, ABLATION_FAMILY) for r in runs], [r.value(ref, ABLATION_FAMILY) for r in runs])
        if n != ref:
            (better if direction(d_val) == "above" else worse if direction(d_val) == "below" else []).append(n)
        out.append(f"| {n} | {questions[n].question if n in questions else 'default'} | {cell(v_val)} | "
                   f"{interval(d_val) if n != ref else '—'} | "
                   f"{cell(across(runs, lambda r, n=n: r.value(n, ABLATION_FAMILY)))} | "
                   f"{interval(d_test) if n != ref else '—'} | {cell(across(runs, lambda r, n=n: r.mean(n, False)))} | "
                   f"{cell(across(runs, lambda r, n=n: spectrum(r, n)))} |")
    labels = {f"fmsd-spec0-{ABLATION_FAMILY}": "λ_spec 0", f"fmsd-{ABLATION_FAMILY}": "λ_spec 0.1 (default)",
              f"fmsd-spec1-{ABLATION_FAMILY}": "λ_spec 1"}
    spec = {labels[k]: across(runs, lambda r, k=k: spectrum(r, k)) for k in labels if k in runs[0].entries}
    out += ["", ("Variants above their default on validation (interval above 0): " + (", ".join(better) or "none")
                 + "; below it: " + (", ".join(worse) or "none") + "."
                 if len(runs) > 1 else "One seed: no interval separates a variant from its default on validation.")]
    if len(spec) == 3:
        vals = [s.mean for s in spec.values()]
        trend = ("moves towards 1 as λ_spec grows" if abs(vals[2] - 1) < abs(vals[0] - 1) else
                 "does not move towards 1 as λ_spec grows")
        out += ["", "λ_spec's effect on what it regularises: the tail energy ratio is "
                + ", ".join(f"{k} {mean_std(s)}" for k, s in spec.items()) + f"; it {trend}."]
    return [*out, ""]


def diagnostics(runs: Sequence[Run], group: str) -> list[str]:
    from fakemerge.models.detector import read_meta

    name = f"{prefix(group)}r2m"
    metas = [read_meta(r.entries[name].path).extra for r in runs if name in r.entries]
    if not metas:
        return []
    off = summarize([max(c for i, row in enumerate(m["task_cosine"]) for j, c in enumerate(row) if i < j)
                     for m in metas])
    share = summarize([m["diagnostics"]["r2m_eigenvalues"][0] / sum(m["diagnostics"]["r2m_eigenvalues"])
                       for m in metas])
    energy = summarize([sum(m["diagnostics"]["r2m_core_energy"].values()) / len(m["diagnostics"]["r2m_core_energy"])
                        for m in metas if m["diagnostics"].get("r2m_core_energy")])
    n = len(metas[0]["task_cosine"])
    dominant = share.mean >= DOMINANT
    return [f"### Merge diagnostics: {LABELS[group]} specialists (R²M, selected setting)", "",
            f"Largest pairwise task-vector cosine {mean_std(off)}; the top eigenvalue of the {n}×{n} task Gram holds "
            f"{mean_std(share)} of its trace ({1 / n:.2f} for {n} orthogonal task vectors of equal norm, 1 for "
            f"identical ones); R²M's rank-1 core holds on average {mean_std(energy)} of a tensor's task-vector "
            "energy. " + ("A shared direction dominates the task vectors (top eigenvalue share ≥ 0.5), as the "
                          "paper's premise of a shared Real component assumes." if dominant else
                          "No shared direction dominates (top eigenvalue share < 0.5): the paper's premise of a "
                          "dominant shared Real component is not what these specialists show."), ""]


def unseen(runs: Sequence[Run]) -> list[str]:
    singles_ = runs[0].names(lambda e: e.kind == "specialist" and e.role == "main")
    merged = runs[0].names(lambda e: e.kind == "merged" and e.role == "main")
    best_any = across(runs, lambda r: max((r.mean(n, False) or 0) for n in r.entries if r.mean(n, False) is not None))
    best_merge = ranked(runs, merged)[0][0]
    diff = paired([r.mean(best_merge, False) for r in runs],
                  [max(r.mean(n, False) or 0 for n in singles_) for r in runs])
    return ["## Unseen families", "",
            f"Best mean unseen-family AUC of any model: {mean_std(best_any)} per seed. The best merge on the seen "
            f"families ({best_merge}) against the best single specialist on the unseen families: "
            f"{compare(best_merge, 'the best specialist', diff, 'mean unseen AUC')}", ""]


def detections(runs: Sequence[Run]) -> list[str]:
    """The demo's detect step (first seed): one test frame per family through the calibrated R²M merge."""
    shown = [d for d in runs[0].detections if not d.get("error")]
    if not shown:
        return []
    lines = [f"## Detect step (seed {runs[0].seed}: one test frame per family, merged R²M, calibrated on validation)",
             "", "| frame | truth | P(fake) | threshold | verdict | verdict at 0.5 |", "|---|---|---|---|---|---|"]
    lines += [f"| {d['family']} | {d['truth']} | {d['score']:.3f} | {d['threshold']:.3f} | {d['verdict']} | "
              f"{d['verdict_at_0_5']} |" for d in shown]
    right = sum(d["verdict"] == d["truth"] for d in shown)
    right_half = sum(d["verdict_at_0_5"] == d["truth"] for d in shown)
    return [*lines, "", f"{right} of {len(shown)} verdicts right at the calibrated threshold, {right_half} at 0.5.", ""]
