"""Training at scale: gradient accumulation, mixed precision (bf16 autocast on CPU; fp16 refused there), the
float32 artifact branch of subspace layers under autocast, and preparation on the training device."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from test_training import Killed, kill_after_epoch
from torch import nn

from fakemerge.config import TrainConfig
from fakemerge.errors import InputError
from fakemerge.models.detector import Detector, read_meta
from fakemerge.models.subspace import SubspaceLinear
from fakemerge.training import methods
from fakemerge.training.methods import Prepared, register_method
from fakemerge.training.trainer import train


def config(tiny_base, tiny_data, out, **kw) -> TrainConfig:
    settings = dict(base=str(tiny_base), data=str(tiny_data), families=["FS"], out=str(out), epochs=1,
                    batch_size=8, num_workers=0, lr=1e-3, schedule="constant")
    return TrainConfig(**{**settings, **kw})


def tensors(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("method", ["linear", "full"])
def test_accumulating_two_half_batches_equals_one_full_batch(tiny_base, tiny_data, tmp_path, method):
    def run(name, **kw):
        return tensors(train(config(tiny_base, tiny_data, tmp_path / f"{name}.safetensors", method=method,
                                    **kw)).out)

    full, accumulated, halves = run("b8"), run("b4x2", batch_size=4, grad_accum=2), run("b4", batch_size=4)
    # Without accumulation, batches of 4 take twice the steps: a different model. With it, the same 4 steps
    # over the same 8 images each, up to float32 summation order — which AdamW's normalisation amplifies for
    # the near-zero gradients of full fine-tuning (measured: 2e-4 there against 9e-3 without accumulation).
    assert _max_diff(halves, full) > 1e-3
    assert _max_diff(accumulated, full) < (1e-7 if method == "linear" else 0.05 * _max_diff(halves, full))


def test_last_partial_group_still_steps_and_max_steps_counts_optimizer_steps(tiny_base, tiny_data, tmp_path):
    # 32 training images in batches of 4 = 8 batches; groups of 3 -> steps after batches 3, 6 and 8.
    out = tmp_path / "g3.safetensors"
    train(config(tiny_base, tiny_data, out, batch_size=4, grad_accum=3, keep_checkpoint=True, method="linear"))
    optim = torch.load(out.with_suffix(".ckpt") / "epoch-0001" / "optim.pt", weights_only=True)
    assert int(optim["optimizer"]["state"][0]["step"]) == 3
    out = tmp_path / "max.safetensors"
    train(config(tiny_base, tiny_data, out, batch_size=4, grad_accum=3, keep_checkpoint=True, method="linear",
                 max_steps_per_epoch=2))
    optim = torch.load(out.with_suffix(".ckpt") / "epoch-0001" / "optim.pt", weights_only=True)
    assert int(optim["optimizer"]["state"][0]["step"]) == 2


def test_bf16_autocast_trains_resumes_exactly_and_is_recorded(tiny_base, tiny_data, tmp_path):
    fp32 = train(config(tiny_base, tiny_data, tmp_path / "fp32.safetensors", method="effort", lr=1e-2,
                        epochs=2)).out
    straight = train(config(tiny_base, tiny_data, tmp_path / "bf16.safetensors", method="effort", lr=1e-2,
                            epochs=2, mixed_precision="bf16"))
    meta = read_meta(straight.out)
    assert meta.recipe["mixed_precision"] == "bf16"
    assert read_meta(fp32).recipe["mixed_precision"] == "no"
    a, b = tensors(fp32), tensors(straight.out)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the forward really ran in bf16
    assert all(v.dtype == torch.float32 for v in b.values())  # weights stay float32

    resumed = tmp_path / "resumed.safetensors"
    settings = dict(method="effort", lr=1e-2, epochs=2, mixed_precision="bf16")
    with pytest.raises(Killed):
        train(config(tiny_base, tiny_data, resumed, **settings), progress=kill_after_epoch(1))
    with pytest.raises(InputError, match="different settings"):  # the precision is part of the recipe
        train(config(tiny_base, tiny_data, resumed, **{**settings, "mixed_precision": "no"}, resume=True))
    train(config(tiny_base, tiny_data, resumed, **settings, resume=True))
    c = tensors(resumed)
    assert all(torch.equal(b[k], c[k]) for k in b)


def test_precision_errors(tiny_base, tiny_data, tmp_path, monkeypatch):
    with pytest.raises(InputError, match="fp16 needs a GPU"):
        train(config(tiny_base, tiny_data, tmp_path / "x.safetensors", mixed_precision="fp16"))
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(InputError, match="contradicts accelerate launch --mixed_precision bf16"):
        train(config(tiny_base, tiny_data, tmp_path / "x.safetensors", mixed_precision="fp16"))
    result = train(config(tiny_base, tiny_data, tmp_path / "l.safetensors", method="linear"))
    assert read_meta(result.out).recipe["mixed_precision"] == "bf16"  # launch's setting when none is given


def test_subspace_branch_stays_float32_under_autocast():
    torch.manual_seed(0)
    layer = SubspaceLinear(nn.Linear(64, 48), subspaces=2, rank=3)
    with torch.no_grad():
        layer.U.mul_(3)  # a trained-looking update, far from the initial tail
    x = torch.randn(5, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        frozen = nn.functional.linear(x, layer.frozen_weight, layer.bias)  # bf16, as autocast makes it
    low = ((x @ layer.V) * layer.s) @ layer.U.T
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, frozen.float() + low, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what a bf16 branch would give: visibly different
        low_bf16 = ((x @ layer.V) * layer.s) @ layer.U.T
    assert low_bf16.dtype == torch.bfloat16 and not torch.equal(low_bf16.float(), low)


def test_methods_prepare_on_the_training_device(tiny_base, tiny_data, tmp_path, monkeypatch):
    """The model is moved before the method scores layers or splits weights (not after, by accelerate)."""
    events = []
    move = Detector.to

    def recording_to(self, *args, **kwargs):
        events.append(("to", str(args[0]) if args else str(kwargs)))
        return move(self, *args, **kwargs)

    monkeypatch.setattr(Detector, "to", recording_to)

    @register_method("test_device_probe")
    def probe(detector, options, probe_loader):
        events.append(("prepare", str(next(detector.parameters()).device)))
        return Prepared(params=list(detector.head.parameters()))

    try:
        train(config(tiny_base, tiny_data, tmp_path / "d.safetensors", method="test_device_probe"))
    finally:
        methods.REGISTRY.pop("test_device_probe")
    assert events[:2] == [("to", "cpu"), ("prepare", "cpu")]


def test_cli_flags_reach_the_recipe(tiny_base, tiny_data, tmp_path, capsys):
    from fakemerge.cli import main

    out = tmp_path / "cli.safetensors"
    main(["train", "--base", str(tiny_base), "--data", str(tiny_data), "--families", "FS", "-o", str(out),
          "--method", "linear", "--epochs", "1", "--num-workers", "0", "--mixed-precision", "bf16",
          "--grad-accum", "2"])
    recipe = read_meta(out).recipe
    assert (recipe["mixed_precision"], recipe["grad_accum"]) == ("bf16", 2)
    with pytest.raises(SystemExit) as e:
        main(["train", "--base", str(tiny_base), "--data", str(tiny_data), "--families", "FS", "-o", str(out),
              "--grad-accum", "0"])
    assert e.value.code == 2 and "grad_accum" in capsys.readouterr().err


def test_checkpoint_from_before_mixed_precision_still_resumes(tiny_base, tiny_data, tmp_path):
    import json

    out = tmp_path / "old.safetensors"
    with pytest.raises(Killed):
        train(config(tiny_base, tiny_data, out, method="linear", epochs=2), progress=kill_after_epoch(1))
    state_file = out.with_suffix(".ckpt") / "state.json"
    state = json.loads(state_file.read_text())
    del state["recipe"]["mixed_precision"], state["recipe"]["grad_accum"]  # as an older version wrote it
    state_file.write_text(json.dumps(state))
    resumed = []
    train(config(tiny_base, tiny_data, out, method="linear", epochs=2, resume=True),
          progress=lambda stage, done, total, **info: resumed.append(info.get("resumed")))
    assert 1 in resumed
    with pytest.raises(Killed):
        train(config(tiny_base, tiny_data, out, method="linear", epochs=2), progress=kill_after_epoch(1))
    state = json.loads(state_file.read_text())
    state["recipe"]["grad_accum"] = 2  # a real difference is still refused
    state_file.write_text(json.dumps(state))
    with pytest.raises(InputError, match="different settings"):
        train(config(tiny_base, tiny_data, out, method="linear", epochs=2, resume=True))
