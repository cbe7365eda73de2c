"""The embedded end-to-end run: ForgeryLab -> tiny base -> specialists -> merges -> evaluation -> detection.

Every number in `results.json` is produced by this one function from a fixed seed. Merge settings that
the specs leave open are compared on the validation split; the test split is only ever reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fakemerge.io import write_json, write_text

Log = Callable[[str], None]

# Merges the demo builds from the seen-family specialists: (name, method, params). The first r2m row uses
# the library's defaults; the others are the open choices of specs/r2m.md.
MERGES: list[tuple[str, str, dict]] = [
    ("average", "average", {}),
    ("task_arithmetic", "task_arithmetic", {}),
    ("ties", "ties", {}),
    ("dare", "dare", {}),
    ("tsv", "tsv", {}),
    ("iso_c", "iso_c", {}),
    ("iso_cts", "iso_cts", {}),
    ("cart", "cart", {}),
    ("r2m", "r2m", {}),
    ("r2m[center]", "r2m", {"center": True}),
    ("r2m[eta=relative]", "r2m", {"eta": "relative"}),
    ("r2m[residual=orthogonal]", "r2m", {"residual": "orthogonal"}),
    ("r2m[block_norm=balanced]", "r2m", {"block_norm": "balanced"}),
]


@dataclass
class DemoScale:
    """How much work each stage does; `small` is the README demo, `full` builds docs/results.md."""

    epochs: int
    batch_size: int
    lr: float
    merges: list[str] = field(default_factory=list)  # names from MERGES; empty = all


SCALES = {
    "small": DemoScale(epochs=3, batch_size=64, lr=3e-4),
    "full": DemoScale(epochs=4, batch_size=64, lr=3e-4),
}


@dataclass
class DemoResult:
    rows: list[dict]
    timings: dict[str, float]
    paths: dict[str, str]
    detections: list[dict]


class _Timer:
    def __init__(self, log: Log):
        self.log, self.timings = log, {}

    def stage(self, name: str):
        timer = self

        class _Stage:
            def __enter__(self):
                timer.log(f"[bold]{name}[/bold] ...")
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                dt = time.perf_counter() - self.t0
                timer.timings[name] = round(dt, 2)
                if exc[0] is None:
                    timer.log(f"  {name}: {dt:.1f} s")

        return _Stage()


def run_demo(out: str | Path, *, scale: str = "small", seed: int = 0, cache: str | Path | None = None,
             log: Log = lambda s: None, progress=None) -> DemoResult:
    from fakemerge.evaluation.plots import auc_heatmap
    from fakemerge.evaluation.report import results_markdown
    from fakemerge.evaluation.runner import evaluate, family_rows
    from fakemerge.lab.families import SEEN_FAMILIES
    from fakemerge.lab.generate import generate
    from fakemerge.lab.pretrain import pretrain

    out = Path(out)
    cfg = SCALES[scale]
    timer = _Timer(log)
    cache = Path(cache) if cache else out / "cache"
    t_start = time.perf_counter()

    with timer.stage("generate ForgeryLab"):
        data = generate(out / "data", size=64, seed=seed, scale=scale, progress=progress)
    with timer.stage("pretrain tiny base (cached)"):
        base_report = pretrain(cache / f"base-{scale}-s{seed}", seed=seed, scale=scale, progress=progress)
        base = str(cache / f"base-{scale}-s{seed}")

    models: list[tuple[str, Path, str, str | None, list[str]]] = []  # name, path, kind, method, trained_on
    with timer.stage("train specialists + joint"):
        for fams, kind in [([f], "specialist") for f in SEEN_FAMILIES] + [(list(SEEN_FAMILIES), "joint")]:
            name = fams[0] if kind == "specialist" else "joint"
            path = out / "models" / f"{name}.safetensors"
            _train(base, data, fams, path, cfg, seed, progress)
            models.append((name, path, kind, "full", fams))

    merged = _merge_all(base, [m[1] for m in models if m[2] == "specialist"], out / "models", cfg, timer,
                        progress)
    models += [(name, path, "merged", method, list(SEEN_FAMILIES)) for name, path, method in merged]

    rows, val_rows = [], []
    with timer.stage("evaluate every model on every family"):
        for name, path, kind, method, trained_on in models:
            for split, sink in (("test", rows), ("val", val_rows)):
                report = evaluate(path, data, split=split, out_dir=out / "eval" / split / name)
                sink += family_rows(report, name, kind, method, trained_on, SEEN_FAMILIES)

    with timer.stage("detect (merged r2m on test frames)"):
        detections = _detect_examples(out, data, progress)

    timer.timings["total"] = round(time.perf_counter() - t_start, 2)
    write_json(out / "results.json", rows)
    write_json(out / "results_val.json", val_rows)
    write_json(out / "timings.json", {"scale": scale, "seed": seed, "base": base_report, **timer.timings})
    auc_heatmap(rows, out / "auc_heatmap.png")
    write_text(out / "results.md", results_markdown(rows))
    return DemoResult(rows=rows, timings=timer.timings, detections=detections,
                      paths={"results": str(out / "results.json"), "heatmap": str(out / "auc_heatmap.png"),
                             "table": str(out / "results.md")})


def _train(base: str, data: Path, families: list[str], out: Path, cfg: DemoScale, seed: int,
           progress) -> None:
    from fakemerge.config import TrainConfig
    from fakemerge.training.trainer import train

    config = TrainConfig(base=base, data=str(data), families=families, method="full", epochs=cfg.epochs,
                         batch_size=cfg.batch_size, lr=cfg.lr, seed=seed, out=str(out))
    train(config, progress=progress)


def _merge_all(base: str, specialists: list[Path], out_dir: Path, cfg: DemoScale, timer: _Timer,
               progress) -> list[tuple[str, Path, str]]:
    from fakemerge.merging.engine import merge_files

    done = []
    with timer.stage("merge specialists (every method)"):
        for name, method, params in MERGES:
            if cfg.merges and name not in cfg.merges:
                continue
            path = out_dir / f"merged-{name}.safetensors"
            merge_files(method, base, specialists, path, params=params)
            done.append((name, path, method))
    with timer.stage("composable re-merge (FS,FR,EFS then --add FE)"):
        from fakemerge.merging.engine import add_specialists

        three = [p for p in specialists if p.stem != "FE"]
        first = out_dir / "merged-r2m-3fam.safetensors"
        merge_files("r2m", base, three, first, params={})
        added = out_dir / "merged-r2m-3fam+FE.safetensors"
        add_specialists(first, [p for p in specialists if p.stem == "FE"], added)
        done += [("r2m(FS,FR,EFS)", first, "r2m"), ("r2m(FS,FR,EFS)+FE", added, "r2m")]
    return done


def _detect_examples(out: Path, data: Path, progress) -> list[dict]:
    from fakemerge.data.formats import load_records
    from fakemerge.inference import detect

    root, records = load_records(data)
    picks = {}
    for r in records:
        if r.split == "test" and r.family not in picks:
            picks[r.family] = root / r.path
    model = out / "models" / "merged-r2m.safetensors"
    return [res.to_dict() for res in detect(model, [str(p) for p in picks.values()])]


def pivot_auc(rows: list[dict]) -> tuple[list[str], dict[str, bool], dict[str, dict]]:
    """Results rows -> (families in order, family -> seen, model -> {"kind", family: auc})."""
    families = list(dict.fromkeys(r["family"] for r in rows))
    seen = {r["family"]: r["seen"] for r in rows}
    by_model: dict[str, dict] = {}
    for r in rows:
        by_model.setdefault(r["model"], {"kind": r["kind"]})[r["family"]] = r["auc"]
    return families, seen, by_model
