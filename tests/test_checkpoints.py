"""Importing DeepfakeBench / DF40 / Effort `.pth` checkpoints: round trips to identical predictions."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_base

from fakemerge.errors import InputError
from fakemerge.keys import strip_prefix
from fakemerge.models.backbone import backbone_hash, load_base
from fakemerge.models.checkpoints import densify_effort, import_checkpoint, infer_config
from fakemerge.models.detector import Detector, load_detector


def tiny_detector(base_dir, seed: int = 0) -> Detector:
    model, _ = load_base(base_dir)
    torch.manual_seed(seed)
    detector = Detector(model).eval()
    with torch.no_grad():
        for p in detector.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return detector


def deepfakebench_state(detector: Detector, vision_prefix: str = "", ddp: bool = True) -> dict:
    """What DeepfakeBench's CLIP detector saves: backbone = CLIP vision tower, head = Linear(hidden, 2)."""
    state = {
        f"backbone.{vision_prefix}{k}": v.clone()
        for k, v in strip_prefix(detector.backbone.state_dict()).items()
    }
    state |= {f"head.{k}": v.clone() for k, v in detector.head.state_dict().items()}
    return {("module." if ddp else "") + k: v for k, v in state.items()}


def effortify(state: dict, rank: int, transpose_v: bool = False) -> dict:
    """Split every attention linear as Effort does: weight_main (top-r SVD part) + U/S/V residual (+ U_r…)."""
    out = {}
    for k, v in state.items():
        if ".self_attn." in k and k.endswith(".weight"):
            prefix = k.removesuffix("weight")
            u, s, vh = torch.linalg.svd(v.double(), full_matrices=False)
            out[prefix + "weight_main"] = (u[:, :rank] * s[:rank] @ vh[:rank]).float()
            out[prefix + "U_residual"] = u[:, rank:].float()
            out[prefix + "S_residual"] = s[rank:].float()
            out[prefix + "V_residual"] = (vh[rank:].T if transpose_v else vh[rank:]).float()
            out[prefix + "U_r"], out[prefix + "S_r"] = u[:, :rank].float(), s[:rank].float()
        else:
            out[k] = v
    return out


def predictions(detector: Detector, seed: int = 1) -> torch.Tensor:
    size = detector.config.image_size
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return detector.predict_proba(x)


@pytest.mark.parametrize("vision_prefix,ddp,wrap", [("", True, False), ("vision_model.", False, True)])
def test_deepfakebench_round_trip_with_base(tiny_base, tmp_path, vision_prefix, ddp, wrap):
    detector = tiny_detector(tiny_base)
    state = deepfakebench_state(detector, vision_prefix, ddp)
    torch.save({"state_dict": state, "epoch": 3} if wrap else state, tmp_path / "ckpt.pth")
    result = import_checkpoint(
        tmp_path / "ckpt.pth", tmp_path / "fs.safetensors", base=str(tiny_base), families=["FS"]
    )
    loaded, meta = load_detector(tmp_path / "fs.safetensors")
    assert torch.equal(predictions(loaded), predictions(detector))
    assert meta.families == ["FS"] and meta.method == "imported:deepfakebench" and result.dropped == []
    assert meta.base_hash == backbone_hash(load_base(tiny_base)[0])
    assert meta.backbone_config["num_attention_heads"] == 2  # from the base, not guessed


def test_round_trip_without_base_infers_config(tmp_path):
    base = make_tiny_base(tmp_path / "base", hidden_size=64, num_attention_heads=1, image_size=48)
    detector = tiny_detector(base)
    state = deepfakebench_state(detector) | {"module.loss_func.weight": torch.ones(2)}
    torch.save(state, tmp_path / "ckpt.pth")
    result = import_checkpoint(tmp_path / "ckpt.pth", tmp_path / "out.safetensors")
    loaded, meta = load_detector(tmp_path / "out.safetensors")
    assert torch.equal(predictions(loaded), predictions(detector))
    assert result.dropped == ["loss_func.weight"] and meta.base_hash is None
    expected = {
        k: getattr(detector.config, k)
        for k in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "patch_size",
            "image_size",
        )
    }
    assert {k: meta.backbone_config[k] for k in expected} == expected


@pytest.mark.parametrize("transpose_v", [False, True])
def test_effort_checkpoint_densified(tiny_base, tmp_path, transpose_v):
    detector = tiny_detector(tiny_base, seed=2)
    state = effortify(deepfakebench_state(detector), rank=20, transpose_v=transpose_v)
    assert not any(k.endswith("q_proj.weight") for k in state)
    torch.save(state, tmp_path / "effort.pth")
    result = import_checkpoint(tmp_path / "effort.pth", tmp_path / "e.safetensors", base=str(tiny_base))
    loaded, _ = load_detector(tmp_path / "e.safetensors")
    assert result.format == "effort" and result.dropped == []
    assert torch.allclose(predictions(loaded), predictions(detector), atol=1e-5)
    w = detector.backbone.state_dict()["encoder.layers.1.self_attn.v_proj.weight"]
    assert torch.allclose(
        loaded.backbone.state_dict()["encoder.layers.1.self_attn.v_proj.weight"], w, atol=1e-5
    )


def test_effort_densify_hand_computed():
    state = {
        "l.weight_main": torch.eye(2),
        "l.U_residual": torch.tensor([[1.0], [0.0]]),
        "l.S_residual": torch.tensor([2.0]),
        "l.V_residual": torch.tensor([[0.0, 3.0]]),
    }
    assert torch.equal(densify_effort(state, "x")["l.weight"], torch.tensor([[1.0, 6.0], [0.0, 1.0]]))
    with pytest.raises(InputError, match="V_residual"):
        densify_effort({**state, "l.V_residual": torch.ones(1, 3)}, "x")


def test_bad_checkpoints_refused(tiny_base, tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="junk.pth: not a loadable"):
        import_checkpoint(tmp_path / "junk.pth", tmp_path / "o.safetensors")
    state = deepfakebench_state(tiny_detector(tiny_base))
    torch.save({k: v for k, v in state.items() if "head" not in k}, tmp_path / "nohead.pth")
    with pytest.raises(InputError, match="nohead.pth: expected head.weight"):
        import_checkpoint(tmp_path / "nohead.pth", tmp_path / "o.safetensors")
    torch.save({"head.weight": torch.ones(2, 4), "head.bias": torch.ones(2)}, tmp_path / "nobb.pth")
    with pytest.raises(InputError, match="no 'backbone.' tensors"):
        import_checkpoint(tmp_path / "nobb.pth", tmp_path / "o.safetensors")
    big = make_tiny_base(tmp_path / "other", hidden_size=64, num_attention_heads=1)
    torch.save(state, tmp_path / "ok.pth")
    with pytest.raises(InputError, match="hidden_size is 32 but the base"):
        import_checkpoint(tmp_path / "ok.pth", tmp_path / "o.safetensors", base=str(big))
    assert not (tmp_path / "o.safetensors").exists()


def test_infer_config_needs_clip_tensors():
    with pytest.raises(InputError, match="not a CLIP vision tower"):
        infer_config({"vision_model.x": torch.ones(1)}, "src.pth")
