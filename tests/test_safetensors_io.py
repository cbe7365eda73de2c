"""The lazy safetensors reader: mapped (large) and copied (small, misaligned) tensors, truncation, lifetime."""

import gc
import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from fakemerge.errors import InputError
from fakemerge.io.safetensors import LazyState, _SafetensorsFile

BIG = (600, 512)  # 1.2 MB of float32: mapped
KEYS = {"vision_model.embeddings.patch_embedding.weight": BIG, "vision_model.post_layernorm.weight": (3,),
        "vision_model.post_layernorm.bias": (5,)}


def _mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


@pytest.fixture
def file(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn(s, generator=g) for k, s in KEYS.items()}
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    return path, tensors


def test_mapped_and_copied_tensors_equal_the_reference_reader(file):
    path, _ = file
    reference = load_file(str(path))
    state = LazyState(path)
    for k, v in reference.items():
        got = state[k]
        assert got.dtype == v.dtype and got.shape == v.shape and torch.equal(got, v)


def test_a_mapped_tensor_is_private_and_released_with_the_tensor(file):
    path, tensors = file
    reader = _SafetensorsFile(path)
    key = next(iter(KEYS))
    before = _mappings()
    held = [reader.read(key) for _ in range(20)]
    assert _mappings() >= before + 20  # each large tensor is a mapping of its own bytes
    held[0].mul_(2)  # copy-on-write: the file and the other reads keep the stored values
    assert torch.equal(held[1], tensors[key]) and torch.equal(held[0], 2 * tensors[key])
    del held
    gc.collect()
    assert _mappings() <= before + 1
    assert torch.equal(load_file(str(path))[key], tensors[key])


def test_a_truncated_file_is_an_input_error_naming_the_tensor(file):
    path, _ = file
    state = LazyState(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4])  # the last tensor (in file order) loses its last bytes
    reader = _SafetensorsFile(path)
    last = max(reader.entries, key=lambda k: reader.entries[k]["data_offsets"][1])
    with pytest.raises(InputError, match=f"truncated \\(tensor {last}\\)"):
        reader.read(last)
    path.write_bytes(data[: len(data) // 2])  # cut under an open reader: refused before mapping, no SIGBUS
    with pytest.raises(InputError, match="truncated"):
        for k in state:
            state[k]


def test_a_misaligned_large_tensor_is_copied(tmp_path):
    """A float32 tensor at an offset that is not a multiple of 4 (legal for other writers) reads correctly."""
    big = torch.randn(BIG)
    odd = torch.ones(3, dtype=torch.uint8)
    header = {"odd": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
              "vision_model.post_layernorm.weight": {"dtype": "F32", "shape": list(BIG),
                                                     "data_offsets": [3, 3 + big.numel() * 4]}}
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + odd.numpy().tobytes() + big.numpy().tobytes())
    assert torch.equal(LazyState(path)["vision_model.post_layernorm.weight"], big)


def test_a_byte_count_that_does_not_fit_the_shape_is_an_error(tmp_path):
    header = {"vision_model.post_layernorm.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}
    blob = json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(12))
    with pytest.raises(InputError, match="12 bytes for shape \\[4\\]"):
        LazyState(path)["vision_model.post_layernorm.weight"]
