"""The embedded end-to-end run: ForgeryLab -> tiny base -> specialists -> merges -> calibration ->
evaluation -> detection.

Every number in `results.json` is produced by this one function. What varies with `seed`: the specialists'
and the joint model's training (head initialisation, shuffling) and the merges' own randomness (DARE's
drops); the data and the base come from `data_seed` (default: `seed`), so several training seeds can share
one dataset and one base. Merge settings are chosen on the validation split (`tune_budget` evaluations per
method, the same for all, at full scale; the library defaults otherwise), every merged model is calibrated
on validation, and the test split is only ever reported.

Run folder: data/ (unless shared), models/ (+ OUT.train.json stamps: an unchanged model is reused, so an
interrupted run resumes), eval/val/ (validation predictions, kept by weights hash), eval/test/<model>/,
results.json (rows), models.json (what each row is: `ModelEntry`), tuning.json, calibration.json,
timings.json, results.md, auc_heatmap.png.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fakemerge.io import write_json
from fakemerge.progress import Progress, silent, within
from fakemerge.study.entries import ModelEntry, prefix, save_entries

Log = Callable[[str], None]


@dataclass
class DemoScale:
    """How much work each stage does; `small` is the README demo, `full` builds docs/results.md."""

    epochs: int
    batch_size: int
    lr: float | None = None  # full fine-tuning; None: the trainer's default (3e-4)
    # Effort/FMSD on the tiny ViT: 1e-2, chosen on FR's validation split (val AUC after 4 epochs: effort
    # 0.62 / 0.62 / 0.64 and fmsd 0.59 / 0.63 / 0.82 at 2e-4 / 2e-3 / 1e-2); the paper's 2e-4 suits ViT-L.
    subspace_lr: float = 1e-2
    specialist_methods: tuple[str, ...] = ("full",)  # one specialist per seen family for each
    tune_budget: int = 0  # validation evaluations per merge method (0: every method at its defaults)
    tune_groups: tuple[str, ...] | None = None  # the specialist groups whose merges are tuned (None: all)
    ablation: bool = False  # the FMSD and optimizer ablations of study/ablation.py


def _full_budget() -> int:
    from fakemerge.evaluation.merge_spaces import BUDGET

    return BUDGET


SCALES = {
    # Small: batch 32 for 3 epochs, chosen on validation (FE/FR val AUC 0.935/0.926; batch 64 for 4 epochs
    # 0.902/0.918 in 20 % more time; batch 64 for 3 epochs missed the premise; batch 16 learns slower).
    "small": DemoScale(epochs=3, batch_size=32),
    # Full: every merge of the full fine-tuned specialists tuned with one budget; the Effort and FMSD groups'
    # merges all at their defaults (budget 0 for every method alike), which keeps a seed near half an hour.
    "full": DemoScale(epochs=3, batch_size=64, specialist_methods=("full", "effort", "fmsd"),
                      tune_budget=_full_budget(), tune_groups=("full",), ablation=True),
}


@dataclass
class DemoResult:
    rows: list[dict]
    entries: list[ModelEntry]
    timings: dict[str, float]
    paths: dict[str, str]
    detections: list[dict]


class _Timer:
    def __init__(self, log: Log):
        self.log, self.timings = log, {}

    @contextlib.contextmanager
    def stage(self, name: str):
        self.log(f"{name} ...")
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 2)
        self.log(f"  {name}: {self.timings[name]:.1f} s")


def run_demo(out: str | Path, *, scale: str = "small", seed: int = 0, data_seed: int | None = None,
             data: str | Path | None = None, cache: str | Path | None = None, ablation: bool | None = None,
             settings_from: str | Path | None = None, log: Log = lambda s: None,
             progress: Progress = silent) -> DemoResult:
    """The whole flow at `scale`; `log` gets one plain line per stage, `progress` every step's progress
    (stages named `<step>: <stage>`). `data` / `cache`: where the dataset / the base live (default under
    OUT; share them between seeds). `ablation`: run the ablations (None: as the scale says). `settings_from`:
    a run folder whose validation-chosen merge settings are used instead of searching again."""
    from fakemerge.evaluation.report import write_results
    from fakemerge.lab.families import SEEN_FAMILIES
    from fakemerge.lab.generate import generate
    from fakemerge.lab.pretrain import pretrain
    from fakemerge.study.tuning import ValLedger, build_merges, calibrate_merged

    out = Path(out)
    cfg = SCALES[scale]
    data_seed = seed if data_seed is None else data_seed
    timer = _Timer(log)
    cache = Path(cache) if cache else out / "cache"
    t_start = time.perf_counter()

    with timer.stage("generate ForgeryLab"):
        dataset = generate(Path(data) if data else out / "data", size=64, seed=data_seed, scale=scale,
                           progress=progress)
    with timer.stage("pretrain tiny base (cached)"):
        base_dir = cache / f"base-{scale}-s{data_seed}"
        base_report = pretrain(base_dir, seed=data_seed, scale=scale, progress=progress)
        base = str(base_dir)

    models = out / "models"
    entries: list[ModelEntry] = []
    with timer.stage("train specialists + joint (reused when unchanged)"):
        for method in cfg.specialist_methods:
            for family in SEEN_FAMILIES:
                name = f"{prefix(method)}{family}"
                path = models / f"{name}.safetensors"
                _train(base, dataset, [family], path, cfg, seed, within(progress, name), method)
                entries.append(ModelEntry(name, path, "specialist", method, (family,), method))
        path = models / "joint.safetensors"
        _train(base, dataset, list(SEEN_FAMILIES), path, cfg, seed, within(progress, "joint"), "full")
        entries.append(ModelEntry("joint", path, "joint", "full", tuple(SEEN_FAMILIES), "full"))
    if cfg.ablation if ablation is None else ablation:
        with timer.stage("FMSD and optimizer ablations"):
            entries += _ablations(base, dataset, models, cfg, seed, progress)

    ledger = ValLedger(out / "eval" / "val", dataset, list(SEEN_FAMILIES))
    tuning: dict[str, dict] = {}
    chosen = _chosen_settings(Path(settings_from)) if settings_from else {}
    for method in cfg.specialist_methods:
        specialists = [e.path for e in entries if e.kind == "specialist" and e.group == method
                       and e.role == "main"]
        budget = cfg.tune_budget if cfg.tune_groups is None or method in cfg.tune_groups else 0
        what = ("settings chosen on validation of " + str(settings_from) if budget and settings_from else
                "tuned on validation" if budget else "at their defaults")
        with timer.stage(f"merge {prefix(method) or 'full-'}specialists ({what}) + composable re-merge"):
            merged, tuning[method] = build_merges(base, specialists, method, models, ledger,
                                                  budget=budget, seed=seed, chosen=chosen.get(method),
                                                  progress=progress, log=log)
            entries += merged
    with timer.stage("calibrate every merged model on validation"):
        calibration = calibrate_merged(entries, ledger, within(progress, "calibrate"))

    with timer.stage("evaluate every model on every family (test)"):
        rows = _evaluate(entries, dataset, "test", out, within(progress, f"test images x {len(entries)} models"))
    with timer.stage("detect (merged r2m, calibrated, on test frames)"):
        detections = _detect_examples(entries, dataset)

    timer.timings["total"] = round(time.perf_counter() - t_start, 2)
    save_entries(out / "models.json", entries, out)
    write_json(out / "tuning.json", tuning)
    write_json(out / "calibration.json", calibration)
    write_json(out / "detections.json", detections)
    write_json(out / "timings.json", {"scale": scale, "seed": seed, "data_seed": data_seed, "base": base_report,
                                      **timer.timings})
    paths = write_results(rows, out)
    return DemoResult(rows=rows, entries=entries, timings=timer.timings, detections=detections,
                      paths={k: str(paths[k]) for k in ("results", "table", "heatmap")})


def _train(base: str, data: Path, families: list[str], out: Path, cfg: DemoScale, seed: int, progress: Progress,
           method: str = "full", options: dict | None = None, settings: dict | None = None) -> None:
    from fakemerge.config import TrainConfig
    from fakemerge.study.cache import train_cached

    lr = cfg.lr if method == "full" else cfg.subspace_lr
    config = TrainConfig(**{"base": base, "data": str(data), "families": families, "method": method,
                            "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": lr, "seed": seed,
                            "out": str(out), "method_options": options or {}, **(settings or {})})
    train_cached(config, progress=progress)


def _ablations(base: str, data: Path, models: Path, cfg: DemoScale, seed: int,
               progress: Progress) -> list[ModelEntry]:
    from fakemerge.study.ablation import ABLATION_FAMILY, variants

    entries = []
    for v in variants(seed):
        name = f"{v.name}-{ABLATION_FAMILY}"
        path = models / f"{name}.safetensors"
        _train(base, data, [ABLATION_FAMILY], path, cfg, seed, within(progress, name), v.method, v.options,
               v.settings)
        entries.append(ModelEntry(name, path, "specialist", v.method, (ABLATION_FAMILY,), v.method, "ablation",
                                  {**v.options, **v.settings}))
    return entries


def _evaluate(entries: list[ModelEntry], data: Path, split: str, out: Path, progress: Progress) -> list[dict]:
    """Rows for every entry, in order; ROC plots only for the rows the demo shows (main, composable)."""
    from fakemerge.evaluation.runner import family_rows
    from fakemerge.lab.families import SEEN_FAMILIES
    from fakemerge.study.tuning import evaluate_split

    reports = {}
    for roc in (True, False):
        part = [e for e in entries if (e.role in ("main", "composable")) == roc]
        if part:
            done = evaluate_split([e.path for e in part], data, split, [out / "eval" / split / e.name for e in part],
                                  [e.name for e in part], roc=roc, progress=progress)
            reports.update({e.name: r for e, r in zip(part, done, strict=True)})
    rows = []
    for e in entries:
        rows += family_rows(reports[e.name], e.name, e.kind, e.method, list(e.trained_on), SEEN_FAMILIES)
    return rows


def _chosen_settings(run: Path) -> dict:
    """A finished run's tuning log, each method's record marked with that run's seed."""
    seed = json.loads((run / "timings.json").read_text())["seed"]
    tuning = json.loads((run / "tuning.json").read_text())
    return {group: {m: {"seed": seed, **rec} for m, rec in methods.items()} for group, methods in tuning.items()}


def _detect_examples(entries: list[ModelEntry], data: Path) -> list[dict]:
    """One test frame per family through `detect` with the main full-fine-tuned R²M merge; each result also
    says what the uncalibrated 0.5 rule would have answered."""
    from fakemerge.data.formats import load_records
    from fakemerge.inference import UNCALIBRATED_THRESHOLD, detect

    root, records = load_records(data)
    picks = {}
    for r in records:
        if r.split == "test" and r.family not in picks:
            picks[r.family] = (root / r.path, r.label)
    model = next(e.path for e in entries if e.method == "r2m" and e.group == "full" and e.role == "main")
    results = detect(model, [str(p) for p, _ in picks.values()])
    out = []
    for (family, (_, label)), res in zip(picks.items(), results, strict=True):
        d = res.to_dict()
        at_half = None if res.score is None else ("fake" if res.score >= UNCALIBRATED_THRESHOLD else "real")
        d.update(family=family, truth="fake" if label else "real", verdict_at_0_5=at_half)
        out.append(d)
    return out


def pivot_auc(rows: list[dict]) -> tuple[list[str], dict[str, bool], dict[str, dict]]:
    """Results rows -> (families in order, family -> seen, model -> {"kind", family: auc})."""
    families = list(dict.fromkeys(r["family"] for r in rows))
    seen = {r["family"]: r["seen"] for r in rows}
    by_model: dict[str, dict] = {}
    for r in rows:
        by_model.setdefault(r["model"], {"kind": r["kind"]})[r["family"]] = r["auc"]
    return families, seen, by_model
