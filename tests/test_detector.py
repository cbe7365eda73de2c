"""Model file round trip, key spelling, metadata and atomic writes."""

import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPVisionModel

from fakemerge.errors import InputError
from fakemerge.io.safetensors import save_tensors, tensors_sha256
from fakemerge.keys import PREFIX, canonical, strip_prefix
from fakemerge.models.backbone import backbone_hash, load_backbone_state, tiny_config
from fakemerge.models.detector import Detector, ModelMeta, read_meta, save_detector
from fakemerge.models.loading import load_base, load_detector

TINY = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64)


def _detector(seed: int = 0) -> Detector:
    torch.manual_seed(seed)
    return Detector(CLIPVisionModel(tiny_config(**TINY))).eval()


def test_save_load_round_trip_gives_identical_predictions(tmp_path):
    det = _detector()
    x = torch.randn(3, 3, 32, 32)
    path = tmp_path / "m.safetensors"
    save_detector(det, path, ModelMeta(kind="specialist", method="full", families=["FS"], base_id="b"))
    loaded, meta = load_detector(path)
    assert torch.equal(det(x), loaded(x))
    assert meta.families == ["FS"] and meta.kind == "specialist" and meta.base_id == "b"
    assert meta.backbone_config["hidden_size"] == 32
    keys = load_file(str(path)).keys()
    assert all(k.startswith(PREFIX) or k.startswith("head.") for k in keys)


def test_key_spellings_are_interchangeable():
    det, other = _detector(0), _detector(1)
    state = canonical(det.backbone.state_dict())
    load_backbone_state(other.backbone, strip_prefix(state))
    assert backbone_hash(other.backbone) == backbone_hash(det.backbone)
    load_backbone_state(other.backbone, state)
    assert backbone_hash(other.backbone) == tensors_sha256(state)


def test_mismatched_backbone_is_refused():
    det = _detector()
    state = canonical(det.backbone.state_dict())
    state.pop(next(iter(state)))
    with pytest.raises(InputError, match="missing"):
        load_backbone_state(det.backbone, state)


def test_base_from_hf_dir_and_from_file(tmp_path):
    det = _detector()
    det.backbone.save_pretrained(tmp_path / "hf")
    model, base_id = load_base(tmp_path / "hf")
    assert backbone_hash(model) == backbone_hash(det.backbone) and base_id == str(tmp_path / "hf")
    save_detector(det, tmp_path / "m.safetensors", ModelMeta(base_id="origin"))
    model, base_id = load_base(tmp_path / "m.safetensors")
    assert backbone_hash(model) == backbone_hash(det.backbone) and base_id == "origin"


@pytest.mark.parametrize("bad", ["missing.safetensors", "notadir"])
def test_bad_base_is_one_line_error(tmp_path, bad):
    target = tmp_path / bad
    if bad == "notadir":
        target.mkdir()
    with pytest.raises(InputError, match=str(target.name)):
        load_base(target)


def test_foreign_safetensors_is_refused(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_tensors({"x": torch.zeros(2)}, path)
    with pytest.raises(InputError, match="not a fakemerge model"):
        read_meta(path)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "out.safetensors"
    with pytest.raises(AttributeError):
        save_tensors({"x": "not a tensor"}, path)
    assert os.listdir(tmp_path) == []
