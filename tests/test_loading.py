"""The one loader: every kind of path, quiet Hugging Face loading, preprocessing from the source, one hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY
from transformers import CLIPConfig, CLIPModel, CLIPVisionModel

from fakemerge.errors import InputError
from fakemerge.io.safetensors import LazyState, tensors_sha256
from fakemerge.models.backbone import backbone_hash, backbone_state, tiny_config
from fakemerge.models.detector import Detector, ModelMeta, save_detector
from fakemerge.models.loading import _hf_id, kind_of, load_base, load_detector, open_source
from fakemerge.models.preprocessing import Preprocessing, preset

TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=50,
            max_position_embeddings=8)


@pytest.fixture(scope="module")
def full_clip(tmp_path_factory):
    """A full CLIPModel directory (text tower included), as openai/clip-vit-* on the hub."""
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(vision_config=TINY, text_config=TEXT, projection_dim=16))
    path = tmp_path_factory.mktemp("full_clip")
    model.save_pretrained(path)
    return path, model


def test_kinds(tiny_base, tmp_path):
    det = Detector(CLIPVisionModel(tiny_config(**TINY)))
    save_detector(det, tmp_path / "m.safetensors", ModelMeta())
    torch.save({}, tmp_path / "c.pth")
    (tmp_path / "x.onnx").write_bytes(b"")
    assert kind_of(tmp_path / "m.safetensors") == "fakemerge" and kind_of(tiny_base) == "hf-dir"
    assert kind_of(tmp_path / "c.pth") == "checkpoint" and kind_of("openai/clip-vit-base-patch16") == "hf-id"
    with pytest.raises(InputError, match="x.onnx: not a model file"):
        kind_of(tmp_path / "x.onnx")
    for missing in (tmp_path / "gone.pth", "./gone", tmp_path / "gone"):
        with pytest.raises(InputError, match="model file not found"):
            kind_of(missing)


def test_full_clip_directory_is_read_as_its_vision_tower_quietly(full_clip, capfd):
    path, model = full_clip
    capfd.readouterr()
    source = open_source(path)
    backbone, base_id = load_base(path)
    quiet = _hf_id(str(path))  # the from_pretrained path a hub id takes
    out = capfd.readouterr()
    assert "LOAD REPORT" not in out.err + out.out and "UNEXPECTED" not in out.err + out.out
    assert isinstance(source.state, LazyState) and base_id == str(path)  # lazy: never the text tower
    assert set(source.state) == set(backbone_state(backbone)) and not any("text_model" in k for k in source.state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model.vision_model(pixel_values=x).pooler_output
        torch.testing.assert_close(backbone(pixel_values=x).pooler_output, reference, rtol=0, atol=0)
        torch.testing.assert_close(CLIPVisionModel.from_pretrained(path)(pixel_values=x).pooler_output, reference)
    assert tensors_sha256(source.state) == backbone_hash(backbone) == tensors_sha256(quiet.state)


def test_preprocessing_comes_from_the_source(tiny_base, tmp_path):
    assert open_source(tiny_base).preprocessing == Preprocessing(size=32)  # no processor file: CLIP's
    hf = tmp_path / "hf"
    CLIPVisionModel.from_pretrained(tiny_base).save_pretrained(hf)
    processor = {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": 32},
                 "resample": 2, "crop_size": {"height": 32, "width": 32}, "do_normalize": True,
                 "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}
    (hf / "preprocessor_config.json").write_text(json.dumps(processor))
    source = open_source(hf)
    assert source.preprocessing == Preprocessing(32, (0.5,) * 3, (0.25,) * 3, "bilinear")
    assert source.origin == "preprocessor_config.json"
    (hf / "preprocessor_config.json").write_text(json.dumps({**processor, "crop_size": {"height": 224}}))
    with pytest.raises(InputError, match="input size 224 differs from the model's image_size 32"):
        open_source(hf)
    (hf / "preprocessor_config.json").write_text(json.dumps({**processor, "resample": 1}))
    with pytest.raises(InputError, match="resample 1 is not supported"):
        open_source(hf)


def test_trainer_base_keeps_its_own_preprocessing(tmp_path):
    """A fakemerge-file base (e.g. an imported DeepfakeBench model) hands its 0.5/0.5 on to what trains from it."""
    det = Detector(CLIPVisionModel(tiny_config(**TINY)), preset("deepfakebench", 32))
    save_detector(det, tmp_path / "base.safetensors", ModelMeta(kind="base"))
    assert open_source(tmp_path / "base.safetensors").preprocessing == preset("deepfakebench", 32)


def test_pytorch_bin_directory_and_bad_directories(tiny_base, tmp_path):
    model = CLIPVisionModel.from_pretrained(tiny_base)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text((tiny_base / "config.json").read_text())
    torch.save({f"vision_model.{k}": v for k, v in model.state_dict().items()}, legacy / "pytorch_model.bin")
    assert backbone_hash(load_base(legacy)[0]) == backbone_hash(model)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((tiny_base / "config.json").read_text())
    with pytest.raises(InputError, match="no model.safetensors or pytorch_model.bin"):
        open_source(empty)
    vit = tmp_path / "vit"
    vit.mkdir()
    (vit / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(InputError, match="vit: not a CLIP ViT .config.json model_type is 'vit'"):
        open_source(vit)
    with pytest.raises(InputError, match="without a head is a backbone, not a detector"):
        load_detector(tiny_base)


def test_models_package_imports_no_merging_and_has_no_cycle():
    """Every import in models/*.py (function-level ones too): none from merging/, no cycle among them."""
    import ast

    import fakemerge.models

    folder = Path(fakemerge.models.__file__).parent
    graph = {}
    for path in folder.glob("*.py"):
        names = {node.module for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.ImportFrom) and node.module}
        assert not any(n.startswith("fakemerge.merging") for n in names), path.name
        graph[path.stem] = {n.rsplit(".", 1)[1] for n in names if n.startswith("fakemerge.models.")}
    assert "detector" not in graph["backbone"] and "loading" in graph["hf_export"]

    def reaches(start, target, seen=()):
        return any(n == target or (n not in seen and reaches(n, target, (*seen, n))) for n in graph.get(start, ()))

    assert not [m for m in graph if reaches(m, m)]


def test_common_preprocessing_refuses_a_difference():
    from fakemerge.models.preprocessing import common_preprocessing

    clip, half = Preprocessing(size=32), preset("deepfakebench", 32)
    assert common_preprocessing([("a", clip), ("b", Preprocessing(size=32))]) == clip
    with pytest.raises(InputError, match=r"b: its preprocessing \(bicubic resize to 32x32, mean \[0.5, 0.5, 0.5\].*"
                                         r"differs from a's \(auto resize"):
        common_preprocessing([("a", clip), ("b", half)])
