"""The study behind docs/results.md at a tiny scale: merges tuned on validation with one budget, resumed
runs that neither retrain nor re-evaluate, the ablation entries, and the document built from the run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from fakemerge import demo
from fakemerge.evaluation import merge_spaces
from fakemerge.evaluation.search import Axis, Space
from fakemerge.lab import generate as gen
from fakemerge.lab import pretrain as pt
from fakemerge.study import ablation, tuning
from fakemerge.study.entries import load_entries

ROOT = Path(__file__).resolve().parents[1]
SMALL_SPACES = {
    "average": Space(source="none"),
    "task_arithmetic": Space((Axis("scaling", (0.2, 0.4), lo=0.0, lo_open=True),), source="test grid"),
    "r2m": Space((Axis("alpha", (0.6, 0.8), lo=0.0), Axis("eta", ("script", "relative"), options=True)),
                 source="test grid"),
}


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setitem(gen.SCALES, "tiny", gen.Scale((4, 2, 3), real_videos=1, fake_videos=1, frames=2))
    mp.setitem(pt.SETTINGS, "tiny", {"identities": 4, "per_identity": 4, "epochs": 1, "lr": 1e-3, "batch": 8})
    real_images = pt.real_images
    mp.setattr(pt, "real_images", lambda n, per, seed, size: real_images(min(n, 4), min(per, 4), seed, size))
    mp.setitem(demo.SCALES, "tiny", demo.DemoScale(epochs=1, batch_size=8, tune_budget=3, ablation=True))
    mp.setattr(merge_spaces, "MERGE_SPACES", SMALL_SPACES)
    mp.setattr(tuning, "MERGE_SPACES", SMALL_SPACES)
    mp.setattr(tuning, "method_names", lambda: list(SMALL_SPACES))
    mp.setattr(ablation, "variants", lambda seed: [VARIANT])
    from fakemerge.evaluation import plots

    mp.setattr(plots, "roc_plot", lambda *a, **k: None)  # ROC figures are tested elsewhere; here they cost time
    out = tmp_path_factory.mktemp("study")
    result = demo.run_demo(out / "seed0", scale="tiny", seed=0, data=out / "data", cache=out / "cache")
    yield out, result, mp
    mp.undo()


VARIANT = ablation.Variant("adam_l2", "full", settings={"optimizer": "adam", "weight_decay": 5e-4,
                                                        "schedule": "constant", "lr": 2e-4}, question="optimizer")


def test_every_method_is_tuned_with_the_same_budget_and_reported(tiny_study):
    out, result, _ = tiny_study
    run = out / "seed0"
    log = json.loads((run / "tuning.json").read_text())
    assert set(log) == {"full"} and set(log["full"]) == set(SMALL_SPACES)
    assert log["full"]["average"]["used"] == 1  # no parameter: one evaluation
    for method in ("task_arithmetic", "r2m"):
        entry = log["full"][method]
        assert entry["budget"] == 3 and entry["used"] == 3
        scores = [t["score"] for t in entry["trials"]]
        best = entry["trials"][scores.index(max(scores))]["setting"]
        assert entry["best"] == best
    entries = {e.name: e for e in result.entries}
    ta = entries["task_arithmetic"]
    assert ta.role == "main" and ta.params["scaling"] == log["full"]["task_arithmetic"]["best"]["scaling"]
    assert ta.selection["budget"] == 3 and ta.selection["source"] == "test grid"
    assert entries["task_arithmetic-default"].role == "default"
    assert entries["task_arithmetic-default"].params["scaling"] == 0.3  # the library default
    # the composable experiment uses R²M's selected setting
    assert entries["r2m(FS,FR,EFS)+FE"].params == entries["r2m"].params
    assert entries["adam_l2-FS"].role == "ablation" and ablation.reference(VARIANT) == "FS"
    from fakemerge.models.detector import read_meta

    recipe = read_meta(entries["adam_l2-FS"].path).recipe
    assert (recipe["optimizer"], recipe["weight_decay"], recipe["schedule"], recipe["lr"]) == ("adam", 5e-4,
                                                                                               "constant", 2e-4)
    assert [e.name for e in load_entries(run / "models.json")] == [e.name for e in result.entries]
    # R²M's open choices: each changed alone at the selected setting, scored on validation beside it
    choices = {n: e for n, e in entries.items() if e.role == "option"}
    assert choices and all(e.method == "r2m" for e in choices.values())
    for e in choices.values():
        assert e.params == {**entries["r2m"].params, **e.selection["change"]} != entries["r2m"].params
        assert 0 <= e.selection["val_score"] <= 1


def test_a_resumed_run_neither_retrains_nor_reevaluates_validation(tiny_study, monkeypatch):
    out, first, _ = tiny_study
    from fakemerge.evaluation import runner
    from fakemerge.training import trainer

    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("an unchanged model was retrained"))
    splits = []
    real = runner.evaluate_many
    monkeypatch.setattr(runner, "evaluate_many", lambda *a, **k: splits.append(k["options"].split) or real(*a, **k))
    again = demo.run_demo(out / "seed0", scale="tiny", seed=0, data=out / "data", cache=out / "cache")
    assert set(splits) == {"test"}  # every validation score came from the ledger
    assert again.rows == first.rows


def test_results_document_is_built_from_the_run(tiny_study):
    out, _, _ = tiny_study
    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    text = quality.build_doc(out, out / "docs" / "results.md", "tiny", [0])
    for heading in ("## The paper's claims, tested", "### Settings chosen on validation (full fine-tuned)",
                    "## Calibrated verdicts", "## Ablations", "## Composability", "## Detect step",
                    "### R²M's open choices (full fine-tuned specialists"):
        assert heading in text
    assert "one seed gives no interval" in text and "not resolved** (one seed" in text
    assert "Claim 3" in text and "bit-identical weights" in text and "| adam_l2-FS | optimizer |" in text
    assert (out / "docs" / "results_auc_heatmap.png").is_file()


def test_training_is_reused_only_while_settings_data_base_and_code_are_unchanged(tiny_base, tiny_data, tmp_path,
                                                                                   monkeypatch):
    from fakemerge.config import TrainConfig
    from fakemerge.study import cache
    from fakemerge.training import trainer

    calls = []
    real = trainer.train
    monkeypatch.setattr(trainer, "train", lambda config, progress: calls.append(config.lr) or real(config, progress))
    config = TrainConfig(base=str(tiny_base), data=str(tiny_data), families=["FS"], out=str(tmp_path / "m.safetensors"),
                         method="linear", epochs=1, batch_size=8, num_workers=0, lr=1e-2)
    assert cache.train_cached(config) and not cache.train_cached(config)  # trained, then reused
    assert cache.train_cached(config.model_copy(update={"lr": 2e-2}))  # a setting changed
    monkeypatch.setattr(cache, "_code_hash", lambda: "other code")
    assert cache.train_cached(config.model_copy(update={"lr": 2e-2}))  # the trainer's code changed
    assert calls == [1e-2, 2e-2, 2e-2]


def test_a_seed_can_merge_at_the_settings_another_seed_chose(tiny_study, monkeypatch):
    out, first, _ = tiny_study
    monkeypatch.setattr(tuning, "adaptive_search", lambda *a, **k: pytest.fail("searched again"))
    second = demo.run_demo(out / "seed1", scale="tiny", seed=1, data=out / "data", cache=out / "cache",
                           ablation=False, settings_from=out / "seed0")
    chosen = json.loads((out / "seed0" / "tuning.json").read_text())["full"]
    entries = {e.name: e for e in second.entries}
    for method in ("task_arithmetic", "r2m"):
        e = entries[method]
        assert {k: v for k, v in e.params.items() if k in chosen[method]["best"]} == chosen[method]["best"]
        assert e.selection["used"] == 0 and e.selection["settings_from_seed"] == 0
        assert 0 <= e.selection["val_score"] <= 1
    assert "task_arithmetic-default" in entries and not any(e.role == "ablation" for e in entries.values())
