"""The trainer: methods keep frozen tensors bit-identical, selection on validation, exact resume,
determinism, skipped images, errors, the CLI, and a 2-process `accelerate launch` run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fakemerge.cli import main as cli_main
from fakemerge.config import TrainConfig, parse_assignments
from fakemerge.errors import InputError
from fakemerge.keys import PREFIX
from fakemerge.models.backbone import backbone_hash, backbone_state
from fakemerge.models.detector import Detector, read_meta
from fakemerge.models.loading import load_base, load_detector
from fakemerge.training import methods
from fakemerge.training.methods import Prepared, register_method
from fakemerge.training.trainer import train


def config(tiny_base, tiny_data, out, **kw) -> TrainConfig:
    settings = dict(base=str(tiny_base), data=str(tiny_data), families=["FS"], out=str(out), epochs=2,
                    batch_size=8, num_workers=0, lr=1e-3)
    return TrainConfig(**{**settings, **kw})


def test_linear_probe_keeps_backbone_and_records_provenance(tiny_base, tiny_data, tmp_path):
    out = tmp_path / "lin.safetensors"
    result = train(config(tiny_base, tiny_data, out, method="linear", lr=1e-2))
    base, _ = load_base(tiny_base)
    tensors = load_file(str(out))
    for k, v in backbone_state(base).items():
        assert torch.equal(tensors[k], v), k
    meta = read_meta(out)
    assert meta.kind == "specialist" and meta.method == "linear" and meta.families == ["FS"]
    assert meta.base_hash == backbone_hash(base) and meta.base_id == str(tiny_base)
    assert meta.recipe["lr"] == 1e-2
    assert meta.extra["trainable_params"] == 2 * 32 + 2 == result.trainable_params  # the head
    assert meta.extra["history"] == result.history and len(result.history) == 2
    log = [json.loads(line) for line in out.with_suffix(".log.jsonl").read_text().splitlines()]
    assert log == result.history
    assert not out.with_suffix(".ckpt").exists()  # removed after success unless keep_checkpoint


def test_full_training_learns_and_selects_best_val_epoch(tiny_base, tiny_data, tmp_path):
    out = tmp_path / "full.safetensors"
    result = train(config(tiny_base, tiny_data, out, epochs=4))
    losses = [h["train_loss"] for h in result.history]
    aucs = [h["val_auc"] for h in result.history]
    assert losses[-1] < losses[0]
    assert result.val["auc"] == max(aucs) > 0.8
    assert result.selected_epoch == 1 + aucs.index(max(aucs))
    detector, meta = load_detector(out)
    assert meta.extra["selected_epoch"] == result.selected_epoch and meta.extra["selected_by"] == "val_auc"
    assert backbone_hash(detector.backbone) != meta.base_hash


class Killed(Exception):
    """Stands for a crash mid-training."""


def kill_after_epoch(epoch: int):
    """A progress callback that crashes the training once `epoch` epochs are saved."""

    def progress(stage, done, total, **info):
        if stage == "epoch" and done == epoch:
            raise Killed

    return progress


def test_resume_after_interruption_matches_uninterrupted_run(tiny_base, tiny_data, tmp_path):
    straight = tmp_path / "straight.safetensors"
    train(config(tiny_base, tiny_data, straight, epochs=3))
    resumed = tmp_path / "resumed.safetensors"
    with pytest.raises(Killed):
        train(config(tiny_base, tiny_data, resumed, epochs=3), progress=kill_after_epoch(1))
    assert not resumed.exists() and (tmp_path / "resumed.ckpt" / "state.json").is_file()
    with pytest.raises(InputError, match="different settings"):
        train(config(tiny_base, tiny_data, resumed, epochs=3, lr=5e-4, resume=True))
    notes = []

    def note(stage, done, total, **info):
        if "resumed" in info:
            notes.append(info["note"])

    result = train(config(tiny_base, tiny_data, resumed, epochs=3, resume=True), progress=note)
    assert notes == [f"resumed from {tmp_path / 'resumed.ckpt'} after epoch 1"]
    a, b = load_file(str(straight)), load_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_meta(straight).extra["history"] == result.history


def test_seed_changes_the_result(tiny_base, tiny_data, tmp_path):
    train(config(tiny_base, tiny_data, tmp_path / "s0.safetensors", epochs=1, method="linear"))
    train(config(tiny_base, tiny_data, tmp_path / "s1.safetensors", epochs=1, method="linear", seed=1))
    assert not torch.equal(load_file(str(tmp_path / "s0.safetensors"))["head.weight"],
                           load_file(str(tmp_path / "s1.safetensors"))["head.weight"])


def test_custom_method_contract(tiny_base, tiny_data, tmp_path):
    """A registered method trains only its params; the rest stays bit-identical; finalize/aux are used."""
    calls = {"aux": 0, "probe": 0}

    @register_method("test_last_layer_norm", default_lr=1e-2)
    def last_norm(detector, options, probe_loader):
        pixels, labels = next(iter(probe_loader))
        calls["probe"] = len(labels)
        params = list(detector.backbone.post_layernorm.parameters()) + [detector.head.bias]

        def aux():
            calls["aux"] += 1
            return 0.0 * params[0].sum()

        return Prepared(params=params, aux_loss=aux, finalize=lambda d: {"note": options["tag"]})

    assert "test_last_layer_norm" in methods.names()
    out = tmp_path / "custom.safetensors"
    result = train(config(tiny_base, tiny_data, out, method="test_last_layer_norm", lr=None, epochs=1,
                          families=["FS", "FR"], method_options={"tag": "x"}))
    assert calls["probe"] == 8 and calls["aux"] == 6  # 48 training images, batches of 8
    meta = read_meta(out)
    assert result.trainable_params == 2 * 32 + 2
    assert meta.kind == "joint" and meta.extra["note"] == "x" and meta.recipe["lr"] is None
    tensors = load_file(str(out))
    base = backbone_state(load_base(tiny_base)[0])
    changed = {k for k in base if not torch.equal(base[k], tensors[k])}
    assert changed == {PREFIX + "post_layernorm.weight", PREFIX + "post_layernorm.bias"}
    backbone = load_base(tiny_base)[0]
    torch.manual_seed(0)  # as the trainer seeds the head's initialisation: its weight must be untouched
    assert torch.equal(Detector(backbone).head.weight, tensors["head.weight"])


def test_unreadable_and_missing_images_are_skipped_and_counted(tiny_base, tiny_data, tmp_path):
    data = json.loads(tiny_data.read_text())
    train_fs = data["Tiny"]["Tiny_FS"]["train"]
    train_fs["000"]["frames"][0] = "FS/train/000/missing.png"
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG garbage")
    train_fs["001"]["frames"][0] = str(bad)  # absolute paths pass through the root join
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    skipped = []

    def report(stage, done, total, **info):
        if "skipped" in info:
            skipped.append(info["skipped"])

    settings = config(tiny_base, edited, tmp_path / "m.safetensors", epochs=1, root=str(tiny_data.parent),
                      num_workers=1)  # unreadable images are found inside a loader worker process
    result = train(settings, progress=report)
    assert len(skipped) == len(result.skipped) == 2
    assert "missing.png: image file not found" in skipped[0] and "corrupt.png: not an image or video" in skipped[1]
    assert read_meta(tmp_path / "m.safetensors").extra["skipped"] == 2


@pytest.mark.parametrize("change,message", [
    (dict(families=["XX"]), "no fakes of family XX"),
    (dict(val_split="test2"), "split 'test2' has no records"),
    (dict(method="nope"), "unknown training method"),
    (dict(method="linear", method_options={"rank": 4}), "takes no options"),
])
def test_bad_settings(tiny_base, tiny_data, tmp_path, change, message):
    with pytest.raises(InputError, match=message):
        train(config(tiny_base, tiny_data, tmp_path / "x.safetensors", **change))


def test_config_yaml_and_assignments(tmp_path):
    cfg = TrainConfig(base="b", data="d", families="FS,FR", out="o.safetensors", method_options={"rank": 2})
    assert cfg.families == ["FS", "FR"]
    path = tmp_path / "train.yaml"
    cfg.to_yaml(path)
    assert TrainConfig.from_yaml(path) == cfg
    assert TrainConfig.from_yaml(path, epochs=9).epochs == 9
    assert parse_assignments(["epochs=3", "lr=1e-3", "val_split=null", "method_options.k=a"], "--set") == \
        {"epochs": 3, "lr": 1e-3, "val_split": None, "method_options": {"k": "a"}}
    with pytest.raises(InputError, match="train.yaml: epochs"):
        TrainConfig.from_yaml(path, epochs=0)


def run_cli(args, capsys) -> tuple[int, str]:
    try:
        cli_main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_cli_trains_with_config_and_overrides(tiny_base, tiny_data, tmp_path, capsys):
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text(f"base: {tiny_base}\ndata: {tiny_data}\nfamilies: [FS]\nepochs: 5\n")
    out = tmp_path / "cli.safetensors"
    code, err = run_cli(["train", "--config", str(yaml_file), "--method", "linear", "--batch-size", "16",
                         "-o", str(out), "--set", "epochs=1", "--set", "num_workers=0"], capsys)
    assert code == 0, err
    assert "wrote" in err and "epoch 1/1" in err
    meta = read_meta(out)
    assert meta.recipe["epochs"] == 1 and meta.recipe["batch_size"] == 16 and meta.method == "linear"


def test_cli_bad_input_is_one_line_exit_2(tiny_base, tiny_data, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"D": {"g": {"train": {"v": {"label": "odd", "frames": ["a.png"]}}}}}))
    common = ["--base", str(tiny_base), "--families", "FS", "-o", str(tmp_path / "o.safetensors")]
    for data, message in [(bad, "malformed JSON"), (unknown, "unknown label 'odd'"),
                          (tmp_path / "absent", "dataset not found")]:
        code, err = run_cli(["train", "--data", str(data), *common], capsys)
        assert code == 2 and err.startswith("error:") and "Traceback" not in err, err
        assert message in " ".join(err.split())  # rich wraps long lines at the console width
    code, err = run_cli(["train", "--data", str(tiny_data), "--root", str(tmp_path / "gone"), *common],
                        capsys)
    assert code == 2 and "data root folder not found" in " ".join(err.split())
    code, err = run_cli(["train", "--data", str(tiny_data), "--base", str(tiny_base), "-o", "x.safetensors"],
                        capsys)
    assert code == 2 and "families" in err
    code, err = run_cli(["train", "--data", str(tiny_data), *common, "--method", "linear", "--rank", "4",
                         "--opt", "k=v"], capsys)
    assert code == 2 and "--method linear: takes no options (got k, rank)" in " ".join(err.split())


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tiny_base, tiny_data, tmp_path):
    out = tmp_path / "ddp.safetensors"
    # `--multi_gpu` starts the processes (torchrun); ACCELERATE_USE_CPU makes them a gloo group on CPU.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "fakemerge.cli", "train", "--base", str(tiny_base), "--data", str(tiny_data),
           "--families", "FS", "-o", str(out), "--epochs", "3", "--batch-size", "8", "--lr", "3e-3",
           "--num-workers", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("wrote ") == 1  # only the main process reports and writes
    meta = read_meta(out)
    assert meta.extra["processes"] == 2
    history = meta.extra["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"] and meta.extra["val"]["auc"] > 0.7
    written = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("ddp", ".ddp")))
    assert written == ["ddp.log.jsonl", "ddp.safetensors"]  # no temp files or checkpoint left behind


def test_optimizer_option_reproduces_effort_recipe_with_l2_decay():
    """`optimizer: adam` puts weight decay into the gradient (L2, Effort's torch.optim.Adam); `adamw`
    decays the weights directly. With a zero loss gradient Adam's L2 step moves a weight by ~lr, AdamW's
    by lr·wd·w."""
    from torch import nn

    from fakemerge.config import EFFORT_RECIPE
    from fakemerge.training.trainer import _optimizer

    moved = {}
    for name in ("adam", "adamw"):
        cfg = TrainConfig(base="b", data="d", families=["FS"], out="o", **{**EFFORT_RECIPE, "optimizer": name})
        p = nn.Parameter(torch.ones(3, dtype=torch.float64))
        opt = _optimizer([p], cfg, cfg.lr)
        assert type(opt) is {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
        assert opt.defaults["weight_decay"] == 5e-4 and opt.defaults["lr"] == 2e-4
        p.grad = torch.zeros_like(p)
        opt.step()
        moved[name] = float(1 - p.detach()[0])
    assert moved["adam"] == pytest.approx(2e-4, rel=1e-3)
    assert moved["adamw"] == pytest.approx(2e-4 * 5e-4, rel=1e-3)
    for bad in ({"optimizer": "sgd"}, {"weight_decay": -1.0}):
        with pytest.raises(Exception, match="optimizer|weight_decay|must be"):
            TrainConfig(base="b", data="d", families=["FS"], out="o", **bad)
