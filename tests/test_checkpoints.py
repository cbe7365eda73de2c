"""The field's checkpoints, built with their real key names and layouts from tiny CLIPs, imported and scored:
logits equal a reference forward pass written the way each codebase computes it (its normalisation,
resize and head), so a wrong mean/std, a lost residual or a misread head fails."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import TINY, make_tiny_base
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPConfig, CLIPModel

from fakemerge.errors import InputError
from fakemerge.io.safetensors import tensors_sha256
from fakemerge.models.backbone import infer_config
from fakemerge.models.detector import Detector
from fakemerge.models.loading import import_model, load_base, load_detector, open_source
from fakemerge.models.preprocessing import CLIP_MEAN, CLIP_STD, batch_inputs
from fakemerge.models.pth_import import densify_effort

TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=50,
            max_position_embeddings=8)


def clip_model(seed: int = 0, **vision) -> CLIPModel:
    """A tiny full CLIPModel, as `CLIPModel.from_pretrained(...)` gives DeepfakeBench, DF40 and Effort."""
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(vision_config={**TINY, **vision}, text_config=TEXT, projection_dim=16)).eval()
    with torch.no_grad():
        for p in model.vision_model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # "fine-tuned"
    return model


def tiny_detector(base_dir, seed: int = 0) -> Detector:
    """A fakemerge Detector on the base, "fine-tuned" (perturbed); used by other tests' checkpoints too."""
    model, _ = load_base(base_dir)
    torch.manual_seed(seed)
    detector = Detector(model).eval()
    with torch.no_grad():
        for p in detector.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return detector


def deepfakebench_state(detector: Detector, vision_prefix: str = "", ddp: bool = True) -> dict:
    """What DeepfakeBench's CLIP detector saves, from a fakemerge Detector's tensors."""
    state = {f"backbone.{vision_prefix}{k.removeprefix('vision_model.')}": v.clone()
             for k, v in detector.backbone.state_dict().items()}
    state |= {f"head.{k}": v.clone() for k, v in detector.head.state_dict().items()}
    return {("module." if ddp else "") + k: v for k, v in state.items()}


def images(n: int = 3, size: int = 40, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def reference_inputs(imgs, size, mean, std, how: str) -> torch.Tensor:
    """Each codebase's own input pipeline: DeepfakeBench's load_rgb (cv2 INTER_CUBIC resize) + Normalize, or
    UniversalFakeDetect's centre crop (no resize) + Normalize."""
    out = []
    for im in imgs:
        if how == "resize":
            im = cv2.resize(im, (size, size), interpolation=cv2.INTER_CUBIC)
        else:
            top, left = (im.shape[0] - size) // 2, (im.shape[1] - size) // 2
            im = im[top:top + size, left:left + size]
        x = (torch.from_numpy(im).float().permute(2, 0, 1) / 255 - torch.tensor(mean)[:, None, None])
        out.append(x / torch.tensor(std)[:, None, None])
    return torch.stack(out)


def ours(detector: Detector, imgs) -> torch.Tensor:
    with torch.no_grad():
        return detector(batch_inputs(imgs, detector.preprocessing))


def deepfakebench_ckpt(model: CLIPModel, head: nn.Linear, vision_prefix: str = "", ddp: bool = True) -> dict:
    """clip_detector.py: backbone = CLIPModel.vision_model, head = Linear(hidden, 2); DDP adds `module.`."""
    state = {f"backbone.{vision_prefix}{k}": v.clone() for k, v in model.vision_model.state_dict().items()}
    state |= {f"head.{k}": v.clone() for k, v in head.state_dict().items()}
    return {("module." if ddp else "") + k: v for k, v in state.items()}


def effortify(state: dict, keep: int, transpose_v: bool = False, frozen: bool = True) -> dict:
    """Effort's SVDResidualLinear on every self_attn linear: weight_main = top-`keep` SVD part, the trainable
    residual U_residual · diag(S_residual) · V_residual (perturbed: trained), frozen U_r / S_r / V_r copies."""
    out = {}
    g = torch.Generator().manual_seed(5)
    for k, v in state.items():
        if ".self_attn." in k and k.endswith(".weight"):
            prefix = k.removesuffix("weight")
            u, s, vh = torch.linalg.svd(v, full_matrices=False)
            out[prefix + "weight_main"] = u[:, :keep] @ torch.diag(s[:keep]) @ vh[:keep]
            out[prefix + "U_residual"] = u[:, keep:] + 0.05 * torch.randn(u[:, keep:].shape, generator=g)
            out[prefix + "S_residual"] = s[keep:] * 1.5
            out[prefix + "V_residual"] = vh[keep:].T.clone() if transpose_v else vh[keep:].clone()
            if frozen:
                out[prefix + "U_r"], out[prefix + "S_r"], out[prefix + "V_r"] = u[:, :keep], s[:keep], vh[:keep]
        else:
            out[k] = v
    return out


def effort_dense(model: CLIPModel, state: dict, strip: str) -> None:
    """Load an Effort state into `model.vision_model` with Effort's own forward formula per residual layer."""
    dense = {}
    for k, v in state.items():
        if not k.startswith(strip) or k.endswith(("U_residual", "S_residual", "V_residual", "U_r", "S_r", "V_r")):
            continue
        name = k.removeprefix(strip)
        if name.endswith("weight_main"):
            p = k.removesuffix("weight_main")
            v = v + state[p + "U_residual"] @ torch.diag(state[p + "S_residual"]) @ state[p + "V_residual"]
            name = name.removesuffix("weight_main") + "weight"
        dense[name] = v
    model.vision_model.load_state_dict(dense)


@pytest.mark.parametrize("vision_prefix,ddp,wrap", [("", True, False), ("vision_model.", False, True)])
def test_deepfakebench_clip(tiny_base, tmp_path, vision_prefix, ddp, wrap):
    """DeepfakeBench / DF40 clip.pth: mean = std = 0.5, cubic resize (clip.yaml); logits as clip_detector's."""
    model, head = clip_model(), nn.Linear(32, 2)
    state = deepfakebench_ckpt(model, head, vision_prefix, ddp)
    torch.save({"state_dict": state, "epoch": 3} if wrap else state, tmp_path / "clip.pth")
    result = import_model(tmp_path / "clip.pth", tmp_path / "fs.safetensors", base=str(tiny_base), families=["FS"])
    detector, meta = load_detector(tmp_path / "fs.safetensors")
    imgs = images()
    with torch.no_grad():
        want = head(model.vision_model(reference_inputs(imgs, 32, [0.5] * 3, [0.5] * 3, "resize")).pooler_output)
    torch.testing.assert_close(ours(detector, imgs), want, rtol=0, atol=1e-5)
    assert meta.preprocessing == {"size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "resize": "bicubic"}
    assert meta.families == ["FS"] and meta.method == "imported:deepfakebench" and result.dropped == []
    assert meta.base_hash == tensors_sha256(open_source(tiny_base).state)
    assert meta.backbone_config["num_attention_heads"] == 2 and result.notes == []  # from the base


@pytest.mark.parametrize("transpose_v", [False, True])
def test_effort_deepfakebench(tiny_base, tmp_path, transpose_v):
    """Effort's FF++ checkpoint: residual attention linears, CLIP's mean/std (effort.yaml)."""
    model, head = clip_model(seed=2), nn.Linear(32, 2)
    state = effortify(deepfakebench_ckpt(model, head, ddp=False), keep=31, transpose_v=transpose_v)
    assert not any(k.endswith("q_proj.weight") for k in state)
    torch.save(state, tmp_path / "effort.pth")
    result = import_model(tmp_path / "effort.pth", tmp_path / "e.safetensors", base=str(tiny_base))
    detector, meta = load_detector(tmp_path / "e.safetensors")
    reference = CLIPModel(model.config).eval()
    untransposed = effortify(deepfakebench_ckpt(model, head, ddp=False), keep=31)
    effort_dense(reference, untransposed, "backbone.")
    imgs = images()
    with torch.no_grad():
        want = head(reference.vision_model(reference_inputs(imgs, 32, CLIP_MEAN, CLIP_STD, "resize")).pooler_output)
    torch.testing.assert_close(ours(detector, imgs), want, rtol=0, atol=1e-5)
    assert result.format == "effort" and result.dropped == [] and meta.preprocessing["resize"] == "bicubic"
    assert meta.preprocessing["mean"] == list(CLIP_MEAN)


def ufd_checkpoint(model: CLIPModel, fc: nn.Linear) -> dict:
    """Effort's GenImage / Chameleon .pth (UniversalFakeDetect `save_networks`): ClipModel.state_dict() —
    `model.` + the whole CLIPModel (text tower too) with residual attention, `fc` one logit — beside the
    optimizer state and the step count."""
    state = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    state |= {f"fc.{k}": v.clone() for k, v in fc.state_dict().items()}
    state = effortify(state, keep=31, frozen=False)
    optimizer = {"state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.zeros(3)}},
                 "param_groups": [{"lr": 1e-4, "params": [0]}]}
    return {"model": state, "optimizer": optimizer, "total_steps": 18000}


def test_effort_genimage_chameleon(tmp_path):
    """One logit z -> two logits [0, z]: P(fake) = sigmoid(z); CLIP's mean/std on a centre crop."""
    model, fc = clip_model(seed=3), nn.Linear(32, 1)
    ckpt = ufd_checkpoint(model, fc)
    torch.save(ckpt, tmp_path / "genimage.pth")
    base = make_tiny_base(tmp_path / "base")
    result = import_model(tmp_path / "genimage.pth", tmp_path / "g.safetensors", base=str(base))
    detector, meta = load_detector(tmp_path / "g.safetensors")
    reference = CLIPModel(model.config).eval()
    effort_dense(reference, ckpt["model"], "model.vision_model.")
    imgs = images(size=40)
    with torch.no_grad():
        z = fc(reference.vision_model(reference_inputs(imgs, 32, CLIP_MEAN, CLIP_STD, "crop")).pooler_output)[:, 0]
        logits = ours(detector, imgs)
    torch.testing.assert_close(logits[:, 1] - logits[:, 0], z, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits.softmax(-1)[:, 1], torch.sigmoid(z), rtol=0, atol=1e-6)
    assert result.format == "effort-ufd" and meta.preprocessing["resize"] == "center_crop"
    assert any(k.startswith("model.text_model.") for k in result.dropped)
    assert {"model.logit_scale", "model.visual_projection.weight"} <= set(result.dropped)


def test_hf_named_safetensors(tmp_path):
    """`vision_model.*` + `head.*` in a plain safetensors file: loads for detect directly (CLIP's statistics
    assumed, and said) and imports."""
    model, head = clip_model(seed=4, hidden_size=64, num_attention_heads=1), nn.Linear(64, 2)
    state = {f"vision_model.{k}": v for k, v in model.vision_model.state_dict().items()}
    save_file({**state, "head.weight": head.weight.detach(), "head.bias": head.bias.detach()},
              str(tmp_path / "plain.safetensors"), metadata={"format": "pt"})
    detector, meta = load_detector(tmp_path / "plain.safetensors")
    imgs = images(size=32)  # at the input size: no resize, so any resize mode gives the same inputs
    with torch.no_grad():
        want = head(model.vision_model(reference_inputs(imgs, 32, CLIP_MEAN, CLIP_STD, "resize")).pooler_output)
    torch.testing.assert_close(ours(detector, imgs), want, rtol=0, atol=1e-5)
    assert meta.method == "imported:hf" and any("mean/std are assumed" in n for n in meta.extra["notes"])
    assert any("1 attention heads assumed" in n for n in meta.extra["notes"])
    result = import_model(tmp_path / "plain.safetensors", tmp_path / "p.safetensors", preprocessing="deepfakebench")
    assert result.meta.preprocessing["mean"] == [0.5] * 3 and not any("assumed (" in n for n in result.notes[:-1])


def test_not_a_clip_vit(tmp_path):
    """DeepfakeBench's Xception detector: backbone.conv1.* — "not a CLIP ViT", not "no backbone"."""
    xception = {"backbone.conv1.weight": torch.zeros(32, 3, 3, 3), "backbone.bn1.weight": torch.ones(32),
                "backbone.last_linear.weight": torch.zeros(2, 2048), "backbone.last_linear.bias": torch.zeros(2)}
    torch.save(xception, tmp_path / "xception.pth")
    with pytest.raises(InputError, match=r"xception.pth: not a CLIP ViT \(its backbone has backbone.conv1.weight"):
        import_model(tmp_path / "xception.pth", tmp_path / "o.safetensors")
    with pytest.raises(InputError, match="not a CLIP ViT"):
        load_detector(tmp_path / "xception.pth")
    torch.save({"features.0.weight": torch.ones(2)}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="not a CLIP ViT detector"):
        load_detector(tmp_path / "other.pth")
    assert not (tmp_path / "o.safetensors").exists()


def test_round_trip_without_base_infers_config(tmp_path):
    model, head = clip_model(seed=6, hidden_size=64, num_attention_heads=1, image_size=48), nn.Linear(64, 2)
    state = deepfakebench_ckpt(model, head) | {"module.loss_func.weight": torch.ones(2)}
    torch.save(state, tmp_path / "ckpt.pth")
    result = import_model(tmp_path / "ckpt.pth", tmp_path / "out.safetensors")
    detector, meta = load_detector(tmp_path / "out.safetensors")
    imgs = images(size=48)
    with torch.no_grad():
        want = head(model.vision_model(reference_inputs(imgs, 48, [0.5] * 3, [0.5] * 3, "resize")).pooler_output)
    torch.testing.assert_close(ours(detector, imgs), want, rtol=0, atol=1e-5)
    assert result.dropped == ["loss_func.weight"] and meta.base_hash is None
    assert any("attention heads assumed" in n for n in result.notes)
    for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size",
              "image_size"):
        assert meta.backbone_config[k] == getattr(model.config.vision_config, k)


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
        import_model(tmp_path / "junk.pth", tmp_path / "o.safetensors")
    state = deepfakebench_ckpt(clip_model(), nn.Linear(32, 2))
    torch.save({k: v for k, v in state.items() if "head" not in k}, tmp_path / "nohead.pth")
    with pytest.raises(InputError, match="nohead.pth: expected head.weight and head.bias"):
        import_model(tmp_path / "nohead.pth", tmp_path / "o.safetensors")
    torch.save({**state, "module.head.weight": torch.ones(3, 32), "module.head.bias": torch.ones(3)},
               tmp_path / "three.pth")
    with pytest.raises(InputError, match=r"head head.\* has shapes \[3, 32\], \[3\]"):
        import_model(tmp_path / "three.pth", tmp_path / "o.safetensors")
    big = make_tiny_base(tmp_path / "other", hidden_size=64, num_attention_heads=1)
    torch.save(state, tmp_path / "ok.pth")
    with pytest.raises(InputError, match="hidden_size is 32 but the base"):
        import_model(tmp_path / "ok.pth", tmp_path / "o.safetensors", base=str(big))
    with pytest.raises(InputError, match="--format effort-ufd given, but its keys are those of DeepfakeBench"):
        import_model(tmp_path / "ok.pth", tmp_path / "o.safetensors", fmt="effort-ufd")
    with pytest.raises(InputError, match="--preprocessing nope: unknown"):
        import_model(tmp_path / "ok.pth", tmp_path / "o.safetensors", preprocessing="nope")
    with pytest.raises(InputError, match="is a hf-dir, not a checkpoint to import"):
        import_model(tiny_base, tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()
    assert load_base(tmp_path / "ok.pth")[1] == str(tmp_path / "ok.pth")  # a checkpoint's backbone is a base too


def test_infer_config_needs_clip_tensors():
    with pytest.raises(InputError, match="not a CLIP vision tower"):
        infer_config({"vision_model.x": (1,)}, "src.pth")
