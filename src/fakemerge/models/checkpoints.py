"""Import DeepfakeBench / DF40 / Effort CLIP checkpoints (`.pth`) as fakemerge detector files.

Both hold a state dict with a `backbone.` part (DeepfakeBench's CLIP detector keeps HF CLIP's vision tower,
so `backbone.embeddings…` or `backbone.vision_model.embeddings…`) and a `head.` part (Linear(hidden, 2),
class 1 = fake, as ours), often behind DDP's `module.`. Effort replaces each attention linear by
`weight_main` (frozen rank-r part) + `U_residual` (out×k) · diag(`S_residual`) (k) · `V_residual` (k×in,
rows of Vᵀ); we densify that to `weight` (a V given as in×k is transposed; a square V is read as k×in, as
Effort writes it). The frozen `U_r`/`S_r`/`V_r` copies are dropped. Pickles are read with
`torch.load(weights_only=True)`: tensors and plain containers only, no code.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fakemerge.errors import InputError
from fakemerge.io import file_sha256
from fakemerge.keys import PREFIX, canonical_key
from fakemerge.models.backbone import (
    CONFIG_FIELDS,
    backbone_hash,
    config_to_dict,
    load_base,
    tiny_config,
)
from fakemerge.models.detector import ModelMeta, detector_from_tensors, save_detector

FORMATS = ("auto", "deepfakebench", "effort")
_EFFORT_PARTS = ("weight_main", "U_residual", "S_residual", "V_residual")
_EFFORT_FROZEN = ("U_r", "S_r", "V_r")
_WRAPPERS = ("state_dict", "model", "model_state_dict", "net")


@dataclass
class ImportResult:
    meta: ModelMeta
    format: str
    dropped: list[str] = field(default_factory=list)  # tensors that are neither backbone nor head


def load_pth(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a `.pth` checkpoint (unwrapping `state_dict`/`model` and DDP's `module.`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and "unsupported global" errors
        raise InputError(f"{path}: not a loadable PyTorch checkpoint ({str(e).splitlines()[0]})") from None
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: holds no state dict of tensors")
    state = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            while k.startswith("module."):
                k = k.removeprefix("module.")
            state[k] = v
    return state


def detect_format(state: dict[str, torch.Tensor]) -> str:
    return "effort" if any(k.endswith(".weight_main") for k in state) else "deepfakebench"


def densify_effort(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Replace every `weight_main` + U/S/V residual group by its dense `weight`."""
    out = dict(state)
    for key in [k for k in state if k.endswith(".weight_main")]:
        prefix = key.removesuffix("weight_main")
        main = state[key]
        parts = {p: state.get(prefix + p) for p in _EFFORT_PARTS[1:]}
        for name in (*_EFFORT_PARTS, *_EFFORT_FROZEN):
            out.pop(prefix + name, None)
        if all(v is None for v in parts.values()):
            out[prefix + "weight"] = main
            continue
        u, s, v = parts["U_residual"], parts["S_residual"], parts["V_residual"]
        if u is None or s is None or v is None:
            missing = next(p for p, t in parts.items() if t is None)
            raise InputError(f"{source}: tensor {prefix}{missing} is missing for the Effort residual")
        out_f, in_f = main.shape
        k = s.shape[0]
        if v.shape == (in_f, k) and v.shape != (k, in_f):
            v = v.T
        if u.shape != (out_f, k) or v.shape != (k, in_f):
            raise InputError(f"{source}: tensor {prefix}U/S/V_residual have shapes {list(u.shape)}, "
                             f"{list(s.shape)}, {list(v.shape)}; "
                             f"expected [{out_f}, {k}], [{k}], [{k}, {in_f}]")
        dense = main.double() + (u.double() * s.double()) @ v.double()
        out[prefix + "weight"] = dense.to(main.dtype)
    return out


def split_state(state: dict[str, torch.Tensor]) -> tuple[dict, dict, list[str]]:
    """(backbone under canonical names, head, dropped keys)."""
    backbone, head, dropped = {}, {}, []
    for k, v in state.items():
        if k.startswith("head."):
            head[k] = v
            continue
        name = canonical_key(k.removeprefix("backbone.")) if k.startswith("backbone.") else None
        if name is None:
            dropped.append(k)
        else:
            backbone[name] = v
    return backbone, head, dropped


def infer_config(backbone: dict[str, torch.Tensor], source: str) -> dict:
    """The CLIP vision config implied by the tensor shapes (heads = hidden / 64, as in every CLIP ViT)."""
    try:
        patch = backbone[f"{PREFIX}embeddings.patch_embedding.weight"]
        positions = backbone[f"{PREFIX}embeddings.position_embedding.weight"].shape[0]
        fc1 = backbone[f"{PREFIX}encoder.layers.0.mlp.fc1.weight"]
    except KeyError as e:
        raise InputError(f"{source}: not a CLIP vision tower (no {e.args[0]})") from None
    hidden, channels, p = patch.shape[0], patch.shape[1], patch.shape[2]
    grid = math.isqrt(positions - 1)
    layers = len({k.split(".")[3] for k in backbone if k.startswith(f"{PREFIX}encoder.layers.")})
    config = config_to_dict(tiny_config())  # defaults for the fields shapes cannot tell (act, eps)
    config.update(hidden_size=hidden, intermediate_size=fc1.shape[0], num_hidden_layers=layers,
                  num_attention_heads=max(1, hidden // 64), num_channels=channels, image_size=grid * p,
                  patch_size=p, projection_dim=hidden)
    return {k: config[k] for k in CONFIG_FIELDS}


def import_checkpoint(src: str | os.PathLike, out: str | os.PathLike, *, base: str | None = None,
                      families: list[str] | None = None, fmt: str = "auto") -> ImportResult:
    """Convert a DeepfakeBench / DF40 / Effort `.pth` into a fakemerge detector file.

    With `base`, the backbone config comes from the base (checked against the shapes) and the base's id and
    content hash are recorded, so the result can be merged with specialists of that base.
    """
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt}: unknown checkpoint format (choose from {', '.join(FORMATS)})")
    source = str(src)
    state = load_pth(src)
    fmt = detect_format(state) if fmt == "auto" else fmt
    if fmt == "effort":
        state = densify_effort(state, source)
    backbone, head, dropped = split_state(state)
    if not backbone:
        raise InputError(f"{source}: no 'backbone.' tensors (not a DeepfakeBench/Effort CLIP checkpoint?)")
    if set(head) != {"head.weight", "head.bias"}:
        raise InputError(f"{source}: expected head.weight and head.bias, found {sorted(head) or 'no head'}")
    config = infer_config(backbone, source)
    base_id = base_hash = None
    if base is not None:
        model, base_id = load_base(base)
        base_hash = backbone_hash(model)
        own = config_to_dict(model.config)
        for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "patch_size", "image_size"):
            if own[k] != config[k]:
                raise InputError(f"{source}: {k} is {config[k]} but the base {base} has {own[k]}")
        config = own
    meta = ModelMeta(kind="specialist", method=f"imported:{fmt}", families=list(families or []),
                     base_id=base_id, base_hash=base_hash, backbone_config=config,
                     recipe={"source": Path(source).name, "source_sha256": file_sha256(src), "format": fmt})
    try:
        detector = detector_from_tensors({**backbone, **{k: v.float() for k, v in head.items()}}, meta)
    except InputError as e:
        raise InputError(f"{source}: {e}") from None
    except RuntimeError as e:  # shape mismatches from load_state_dict
        cause = str(e).splitlines()[-1].strip()
        raise InputError(f"{source}: tensors do not fit a CLIP vision tower ({cause})") from None
    save_detector(detector, out, meta)
    return ImportResult(meta, fmt, dropped)
