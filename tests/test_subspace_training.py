"""effort / fmsd end to end through the trainer: densified files, where and how much they differ from the
base, metadata, options, and resume after a kill (training/subspace_methods.py)."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPVisionModel

from fakemerge.config import TrainConfig
from fakemerge.errors import InputError
from fakemerge.models.backbone import backbone_state
from fakemerge.models.detector import read_meta
from fakemerge.training.trainer import train

ATTN = ("q_proj", "k_proj", "v_proj", "out_proj")


def _config(tiny_base, tiny_data, out, method, **kw):
    settings = dict(base=str(tiny_base), data=str(tiny_data), families=["FS"], out=str(out), method=method,
                    epochs=2, batch_size=8, num_workers=0, seed=0)
    return TrainConfig(**{**settings, **kw})


def _changed_ranks(tiny_base, path) -> dict[str, int]:
    """Rank of (saved − base) for every backbone tensor that differs from the base.

    Densifying stores Ŵ in float32, which adds rounding noise of ~3e-8·‖W‖₂ to every entry's singular
    values (measured); singular values above 1e-6·‖W‖₂ are counted, far above that floor.
    """
    base = backbone_state(CLIPVisionModel.from_pretrained(tiny_base))
    saved = load_file(str(path))
    assert set(saved) == set(base) | {"head.weight", "head.bias"}  # an ordinary checkpoint of the base
    ranks = {}
    for k in base:
        if torch.equal(saved[k], base[k]):
            continue
        w = base[k].double()
        if w.ndim != 2:  # a bias, norm or embedding moved: reported as rank -1, which fails the callers
            ranks[k] = -1
            continue
        tol = 1e-6 * torch.linalg.matrix_norm(w, 2)
        ranks[k] = int(torch.linalg.matrix_rank(saved[k].double() - w, atol=tol))
    return ranks


def test_effort_specialist_differs_only_in_attention_with_rank_at_most_2(tiny_base, tiny_data, tmp_path):
    out = tmp_path / "effort.safetensors"
    result = train(_config(tiny_base, tiny_data, out, "effort", lr=1e-2))
    ranks = _changed_ranks(tiny_base, out)
    expected = {f"vision_model.encoder.layers.{i}.self_attn.{p}.weight" for i in range(2) for p in ATTN}
    assert set(ranks) == expected  # every attention projection trained; nothing else (biases too) moved
    assert all(1 <= r <= 2 for r in ranks.values())
    meta = read_meta(out)
    assert meta.method == "effort"
    assert {n + ".weight" for n in meta.extra["selected_layers"]} == expected
    assert (meta.extra["subspaces"], meta.extra["rank"]) == (1, 1)
    # 8 projections × (32 + 1 + 32) + head (2 × 32 + 2)
    assert result.trainable_params == 8 * 65 + 66


def test_fmsd_specialist_differs_only_in_selected_layers_rank_at_most_2kd(tiny_base, tiny_data, tmp_path):
    out = tmp_path / "fmsd.safetensors"
    options = {"subspaces": 2, "rank": 2, "layer_ratio": 0.5, "probe_batches": 3, "warmup_batches": 1,
               "warmup_steps": 5, "include_mlp": True}
    train(_config(tiny_base, tiny_data, out, "fmsd", method_options=options, lr=1e-2))
    meta = read_meta(out)
    selected = meta.extra["selected_layers"]
    scores = meta.extra["layer_scores"]
    assert len(scores) == 12 and len(selected) == 6 and set(selected) <= set(scores)
    assert min(scores[n] for n in selected) >= max(s for n, s in scores.items() if n not in selected)
    ranks = _changed_ranks(tiny_base, out)
    assert set(ranks) == {n + ".weight" for n in selected}
    assert all(1 <= r <= 2 * 2 * 2 for r in ranks.values())
    assert max(ranks.values()) > 2  # K·d = 4 directions per subspace layer really are used


def test_fmsd_rejects_bad_options(tiny_base, tiny_data, tmp_path):
    for bad, match in (({"rank": 0}, "rank"), ({"bogus": 1}, "bogus"), ({"score": "magic"}, "score"),
                       ({"rescore_every_epoch": True, "score": "random"}, "rescore_every_epoch"),
                       ({"rank": 40}, "rank")):
        with pytest.raises(InputError, match=match):
            train(_config(tiny_base, tiny_data, tmp_path / "x.safetensors", "fmsd",
                          method_options={"warmup_steps": 0, "probe_batches": 2, **bad}))
    with pytest.raises(InputError, match="effort option rank"):
        train(_config(tiny_base, tiny_data, tmp_path / "x.safetensors", "effort", method_options={"rank": 2}))


RESCORE = {"rescore_every_epoch": True, "subspaces": 2, "rank": 2, "probe_batches": 3, "warmup_batches": 1,
           "warmup_steps": 5, "include_mlp": True}


def test_fmsd_rescoring_trains_each_epochs_selection_and_resets_the_rest(tiny_base, tiny_data, tmp_path):
    out = tmp_path / "rescore.safetensors"
    # No validation: the last epoch is kept. Weight decay must not move masked layers either.
    result = train(_config(tiny_base, tiny_data, out, "fmsd", method_options=RESCORE, lr=1e-2, epochs=3,
                           val_split=None, weight_decay=0.1))
    selections = [h["selected_layers"] for h in result.history]
    assert len(selections) == 3 and all(len(s) == 6 for s in selections)
    assert all(len(h["layer_scores"]) == 12 for h in result.history)
    meta = read_meta(out)
    final = meta.extra["selected_layers"]
    assert final == selections[-1] and meta.extra["layer_scores"] == result.history[-1]["layer_scores"]
    ranks = _changed_ranks(tiny_base, out)
    assert set(ranks) == {n + ".weight" for n in final}  # everything else is bit-identical to the base
    assert all(1 <= r <= 2 * 2 * 2 for r in ranks.values())
    deselected = set(selections[0] + selections[1]) - set(final)
    assert deselected  # trained for an epoch or two, then reset: bit-identical to the base above
    assert set(selections[1]) - set(selections[0]), "no layer entered the selection on re-scoring"
    assert out.with_suffix(".layers.png").stat().st_size > 0


class Killed(Exception):
    pass


def test_fmsd_rescoring_resumes_after_a_kill_with_identical_results(tiny_base, tiny_data, tmp_path):
    straight, resumed = tmp_path / "straight.safetensors", tmp_path / "resumed.safetensors"
    first = train(_config(tiny_base, tiny_data, straight, "fmsd", method_options=RESCORE, lr=1e-2, epochs=3))

    def kill_after_second_epoch(stage, done, total, **info):
        if stage == "epoch" and done == 2:
            raise Killed

    with pytest.raises(Killed):
        train(_config(tiny_base, tiny_data, resumed, "fmsd", method_options=RESCORE, lr=1e-2, epochs=3),
              progress=kill_after_second_epoch)
    again = train(_config(tiny_base, tiny_data, resumed, "fmsd", method_options=RESCORE, lr=1e-2, epochs=3,
                          resume=True))
    assert again.history == first.history  # per-epoch selections and scores included
    a, b = load_file(str(straight)), load_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_meta(straight).extra == read_meta(resumed).extra


def test_fmsd_resumes_after_a_kill_with_identical_results(tiny_base, tiny_data, tmp_path):
    options = {"subspaces": 2, "rank": 2, "probe_batches": 2, "warmup_batches": 2, "warmup_steps": 3,
               "lambda_orth": 1.0,
               "lambda_spec": 1.0, "lambda_energy": 0.5}
    straight = tmp_path / "straight.safetensors"
    train(_config(tiny_base, tiny_data, straight, "fmsd", method_options=options))

    def kill_after_first_epoch(stage, done, total, **info):
        if stage == "epoch" and done == 1:
            raise Killed

    resumed = tmp_path / "resumed.safetensors"
    with pytest.raises(Killed):
        train(_config(tiny_base, tiny_data, resumed, "fmsd", method_options=options),
              progress=kill_after_first_epoch)
    assert not resumed.exists()
    train(_config(tiny_base, tiny_data, resumed, "fmsd", method_options=options, resume=True))
    a, b = load_file(str(straight)), load_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_meta(straight).extra["selected_layers"] == read_meta(resumed).extra["selected_layers"]


def test_cli_flags_reach_fmsd(tiny_base, tiny_data, tmp_path):
    from fakemerge.cli import main

    out = tmp_path / "cli.safetensors"
    main(["train", "--base", str(tiny_base), "--data", str(tiny_data), "--families", "FS", "-o", str(out),
          "--method", "fmsd", "--epochs", "1", "--batch-size", "8", "--num-workers", "0", "--rank", "1",
          "--subspaces", "3", "--layer-ratio", "0.25", "--score", "gradnorm", "--lambda-orth", "0",
          "--opt", "warmup_steps=2", "--opt", "probe_batches=2", "--opt", "warmup_batches=1"])
    meta = read_meta(out)
    assert meta.recipe["method_options"]["subspaces"] == 3
    assert (meta.extra["subspaces"], meta.extra["rank"], meta.extra["score"]) == (3, 1, "gradnorm")
    assert len(meta.extra["selected_layers"]) == 2 and len(meta.extra["layer_scores"]) == 8
    assert out.with_suffix(".layers.png").stat().st_size > 0  # the layer-score plot beside the model


def test_fmsd_with_one_rank1_subspace_on_all_layers_is_effort(tiny_base, tiny_data, tmp_path):
    effort_out, fmsd_out = tmp_path / "effort.safetensors", tmp_path / "fmsd.safetensors"
    train(_config(tiny_base, tiny_data, effort_out, "effort", lr=1e-2))
    train(_config(tiny_base, tiny_data, fmsd_out, "fmsd", lr=1e-2, method_options={
        "score": "all", "subspaces": 1, "rank": 1, "lambda_orth": 0, "lambda_spec": 0, "warmup_steps": 0}))
    a, b = load_file(str(effort_out)), load_file(str(fmsd_out))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_meta(fmsd_out).extra["selected_layers"] == read_meta(effort_out).extra["selected_layers"]


def test_every_layer_selection_starts_from_the_same_head_warmed_up_on_other_batches(tiny_base, monkeypatch):
    """The FMSD ablation must change the selection only: same warm-up for gsnr, gradnorm, random, all and
    explicit layers, on batches that are not the scored ones (issue 11 item 4)."""
    from fakemerge.models.detector import Detector
    from fakemerge.models.loading import load_base
    from fakemerge.models.subspace import ATTENTION, linear_names
    from fakemerge.training import subspace_methods as sm

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 0, 1])) for _ in range(5)]
    scored_with = []
    real_scores = sm.gradient_scores
    monkeypatch.setattr(sm, "gradient_scores", lambda model, names, loss, b, score, **kw: (
        scored_with.append(list(b)) or real_scores(model, names, loss, b, score, **kw)))
    heads = {}
    for variant in ({"score": "gsnr"}, {"score": "gradnorm"}, {"score": "random"}, {"score": "all"},
                    {"layers": ["vision_model.encoder.layers.0.self_attn.q_proj"]}):
        torch.manual_seed(0)
        detector = Detector(load_base(tiny_base)[0])
        initial = detector.head.weight.detach().clone()
        opts = sm.FmsdOptions(warmup_batches=2, probe_batches=3, warmup_steps=5, **variant)
        sm._choose_layers(detector, opts, linear_names(detector.backbone, ATTENTION), iter(batches))
        assert not torch.equal(detector.head.weight, initial)  # the warm-up ran
        heads[str(variant)] = detector.head.weight.detach().clone()
    first = next(iter(heads.values()))
    assert all(torch.equal(h, first) for h in heads.values())
    gradient_runs = scored_with[:2]  # gsnr and gradnorm score on batches 2-4, never the warm-up's 0-1
    assert all(len(b) == 3 and all(torch.equal(x, batches[2 + i][0]) for i, (x, _) in enumerate(b))
               for b in gradient_runs)
    with pytest.raises(InputError, match="warm-up"):  # too little training data is an error, not a guess
        sm._choose_layers(Detector(load_base(tiny_base)[0]), sm.FmsdOptions(warmup_batches=3, probe_batches=3),
                          linear_names(load_base(tiny_base)[0], ATTENTION), iter(batches))


def test_subspace_models_record_their_spectrum(tiny_base, tiny_data, tmp_path):
    out = tmp_path / "fmsd.safetensors"
    train(_config(tiny_base, tiny_data, out, "fmsd", lr=1e-2, epochs=1, method_options={
        "probe_batches": 2, "warmup_batches": 2, "lambda_spec": 0.0}))
    spectrum = read_meta(out).extra["spectrum"]
    assert spectrum["tail_energy_ratio"] > 0 and spectrum["tail_energy_ratio"] != pytest.approx(1.0)
    assert spectrum["loss_spec"] > 0 and spectrum["loss_orth"] >= 0
