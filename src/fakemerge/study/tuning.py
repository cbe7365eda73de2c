"""Merges of one group of specialists: each method at its defaults, or tuned on validation with the same
budget for every method (evaluation/merge_spaces.py), then calibrated on validation.

Candidates are merged into a scratch file, scored on the validation split (the mean of the seen families'
frame AUCs, each family against all reals) and deleted; the `ValLedger` keeps each score and predictions
CSV keyed by the candidate's weights hash, so a resumed run re-merges (seconds) but never re-evaluates, and
a change in the merge code (new weights) is evaluated afresh. The selected setting is merged again into
`models/`, and its threshold is chosen from the same validation predictions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from fakemerge.evaluation.calibration import (
    DEFAULT_RULE,
    RULES,
    choose_threshold,
    held_out_balanced_accuracy,
    predictions_sha256,
    write_calibration,
)
from fakemerge.evaluation.merge_spaces import BUDGET, MERGE_SPACES, R2M_CHOICES
from fakemerge.evaluation.search import SearchResult, adaptive_search
from fakemerge.io import file_sha256, write_json
from fakemerge.progress import Progress, silent, within
from fakemerge.study.entries import ModelEntry, prefix

Log = Callable[[str], None]


def merge_to(out: Path, method: str, base: str, specialists: list[Path], params: dict,
             progress: Progress = silent) -> dict:
    """The one place the study merges files; returns the full parameters the merge used."""
    from fakemerge.merging.engine import merge_files
    from fakemerge.merging.recipe import Recipe

    recipe = Recipe(method, base, [str(p) for p in specialists], dict(params))
    return merge_files(recipe, out, progress=progress).meta.recipe["parameters"]


def add_to(merged: Path, new: list[Path], out: Path) -> None:
    from fakemerge.merging.engine import add_specialists

    add_specialists(merged, new, out)


def evaluate_split(models: list[Path], data: Path, split: str, out_dirs: list[Path], names: list[str], *,
                   families: list[str] | None = None, roc: bool = False, progress: Progress = silent) -> list[dict]:
    """The one place the study runs the evaluation: every model in one shared pass over `split`."""
    from fakemerge.config import EvalOptions
    from fakemerge.evaluation.runner import evaluate_many

    options = EvalOptions(split=split, families=families, roc=roc, models_per_pass=len(models))
    return evaluate_many(models, data, out_dirs, names=names, options=options, progress=progress)


def method_names() -> list[str]:
    """The merge methods the study runs: every method of the merging registry, in its order."""
    from fakemerge.merging import METHODS

    return list(METHODS)


def seeded(method: str, seed: int) -> dict:
    """A method with a `seed` parameter (DARE's drops, randomized SVDs) gets the run's seed."""
    from fakemerge.merging import method_defaults

    return {"seed": seed} if "seed" in method_defaults(method) else {}


class ValLedger:
    """Validation results of merged models keyed by the content hash of their weights (persisted)."""

    def __init__(self, folder: Path, data: Path, families: list[str]):
        self.folder, self.data, self.families = folder, data, list(families)
        self.path = folder / "ledger.json"
        key = {"data": file_sha256(data), "families": self.families}
        saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.items: dict[str, dict] = saved.get("items", {}) if saved.get("key") == key else {}
        self.key = key

    def score(self, models: list[Path], progress: Progress = silent) -> list[dict]:
        """{"score", "auc": {family: AUC}, "csv", "weights_sha256"} per model; unseen weights are evaluated
        in one shared pass."""
        from fakemerge.io.safetensors import LazyState, tensors_sha256

        hashes = [tensors_sha256(LazyState(m)) for m in models]
        todo = [(m, h) for m, h in zip(models, hashes, strict=True) if h not in self.items]
        todo = list({h: (m, h) for m, h in todo}.values())
        if todo:
            dirs = [self.folder / h[:16] for _, h in todo]
            reports = evaluate_split([m for m, _ in todo], self.data, "val", dirs, [m.stem for m, _ in todo],
                                     families=self.families, progress=progress)
            for (_, h), d, report in zip(todo, dirs, reports, strict=True):
                auc = {f: report["families"][f]["auc"] for f in self.families}
                score = sum(auc.values()) / len(auc)
                self.items[h] = {"score": score if math.isfinite(score) else None, "auc": auc,
                                 "csv": str((d / "predictions.csv").relative_to(self.folder))}
            write_json(self.path, {"key": self.key, "items": self.items})
        return [{**self.items[h], "csv": self.folder / self.items[h]["csv"], "weights_sha256": h} for h in hashes]


def _tune(method: str, base: str, specialists: list[Path], scratch: Path, ledger: ValLedger, budget: int,
          extra: dict, progress: Progress) -> SearchResult:
    def evaluate(settings: list[dict]) -> list[float]:
        paths = [scratch / f"{method}-{i}.safetensors" for i in range(len(settings))]
        for path, setting in zip(paths, settings, strict=True):
            merge_to(path, method, base, specialists, {**setting, **extra})
        results = ledger.score(paths, progress)
        for path in paths:
            path.unlink()
        return [math.nan if r["score"] is None else r["score"] for r in results]

    return adaptive_search(MERGE_SPACES[method], evaluate, budget)


def build_merges(base: str, specialists: list[Path], group: str, models: Path, ledger: ValLedger, *,
                 budget: int, seed: int, chosen: dict | None = None, progress: Progress = silent,
                 log: Log = lambda s: None) -> tuple[list[ModelEntry], dict]:
    """Every method's merge of `specialists` (main entries: tuned when `budget`, else at the defaults; with
    tuning also a `-default` entry), then R²M's merge-then-add experiment at R²M's main setting.
    `chosen`: another run's tuning log for this group: each method takes the setting that run chose on its
    validation split (no search here; this run's validation score of it is recorded).
    Returns the entries and the tuning log (per method: budget, evaluations, trials, choice)."""
    families = tuple(dict.fromkeys(f for s in specialists for f in _families(s)))
    p = prefix(group)
    entries, tuning = [], {}
    for method in method_names():
        extra = seeded(method, seed)
        params = {}
        selection = None
        if budget and chosen is not None:
            prior = chosen[method]
            params = prior["best"]
            selection = {"budget": prior["budget"], "used": 0, "val_score": None, "open_edges": prior["open_edges"],
                         "source": prior["source"], "settings_from_seed": prior["seed"]}
        elif budget:
            log(f"  tuning {p}{method} on validation (budget {budget})")
            result = _tune(method, base, specialists, models / "scratch", ledger, budget, extra,
                           within(progress, f"tune {p}{method}"))
            params = result.best
            selection = {"budget": budget, "used": result.used, "val_score": result.best_score,
                         "open_edges": result.open_edges, "source": MERGE_SPACES[method].source, "seed": seed}
            tuning[method] = {**selection, "best": result.best,
                              "trials": [{"setting": t.setting, "score": t.score, "phase": t.phase}
                                         for t in result.trials]}
        path = models / f"merged-{p}{method}.safetensors"
        full = merge_to(path, method, base, specialists, {**params, **extra}, within(progress, f"merge {method}"))
        if selection is not None and "settings_from_seed" in selection:  # this run's validation score of it
            selection["val_score"] = ledger.score([path])[0]["score"]
            tuning[method] = {**selection, "best": params, "trials": []}
        entries.append(ModelEntry(f"{p}{method}", path, "merged", method, families, group, "main", full,
                                  selection))
        if budget and MERGE_SPACES[method].axes:  # a parameter-free method's default is its main entry
            path = models / f"merged-{p}{method}-default.safetensors"
            full = merge_to(path, method, base, specialists, extra)
            entries.append(ModelEntry(f"{p}{method}-default", path, "merged", method, families, group,
                                      "default", full))
    r2m = next(e for e in entries if e.method == "r2m" and e.role == "main")
    if budget:
        entries += _r2m_choices(r2m, base, specialists, models, ledger, extra=seeded("r2m", seed))
    three = [s for s in specialists if "FE" not in _families(s)]
    added = [s for s in specialists if "FE" in _families(s)]
    first = models / f"merged-{p}r2m-3fam.safetensors"
    merge_to(first, "r2m", base, three, r2m.params)
    plus = models / f"merged-{p}r2m-3fam+FE.safetensors"
    add_to(first, added, plus)
    three_fams = tuple(f for f in families if f != "FE")
    entries += [ModelEntry(f"{p}r2m(FS,FR,EFS)", first, "merged", "r2m", three_fams, group, "composable",
                           r2m.params),
                ModelEntry(f"{p}r2m(FS,FR,EFS)+FE", plus, "merged", "r2m", families, group, "composable",
                           r2m.params)]
    return entries, tuning


def _r2m_choices(r2m: ModelEntry, base: str, specialists: list[Path], models: Path, ledger: ValLedger,
                 extra: dict) -> list[ModelEntry]:
    """R²M at its selected setting with one open choice changed (a choice it already made is left out)."""
    out = []
    for label, change in R2M_CHOICES.items():
        setting = {**r2m.params, **change}
        if setting == r2m.params:
            continue
        path = models / f"merged-{r2m.name}-{label}.safetensors"
        full = merge_to(path, "r2m", base, specialists, {**setting, **extra})
        out.append(ModelEntry(f"{r2m.name}-{label}", path, "merged", "r2m", r2m.trained_on, r2m.group, "option",
                              full, {"val_score": ledger.score([path])[0]["score"], "change": change}))
    return out


def _families(path: Path) -> list[str]:
    from fakemerge.models.detector import read_meta

    return read_meta(path).families


def calibrate_merged(entries: list[ModelEntry], ledger: ValLedger, progress: Progress = silent) -> dict:
    """Write each merged model's threshold (DEFAULT_RULE, chosen on the validation predictions the ledger
    holds) into its file, and compare the rules by their cross-fitted held-out balanced accuracy.
    Returns {model name: {"threshold", "rules": {rule: held-out balanced accuracy}}}."""
    from fakemerge.evaluation.runner import read_predictions

    merged = [e for e in entries if e.kind == "merged"]
    results = ledger.score([e.path for e in merged], progress)
    out = {}
    for entry, result in zip(merged, results, strict=True):
        pred = read_predictions(result["csv"])
        cal = choose_threshold(pred["label"], pred["score"], DEFAULT_RULE)
        write_calibration(entry.path, cal, {
            "split": "val", "data": str(ledger.data), "families": ledger.families,
            "data_sha256": predictions_sha256(pred["path"].tolist(), pred["label"].tolist())})
        rules = {rule: held_out_balanced_accuracy(pred["label"], pred["score"], pred["video"].tolist(), rule)
                 for rule in RULES}
        out[entry.name] = {"threshold": cal.threshold, "val_balanced_accuracy": cal.balanced_accuracy,
                           "rules": rules}
    return out


__all__ = ["BUDGET", "ValLedger", "build_merges", "calibrate_merged", "method_names"]
