"""The field's CLIP detector checkpoints read as (backbone, two-logit head, preprocessing) — never executed.

Layouts (each reproduced with real key names in tests/test_checkpoints.py):
  * DeepfakeBench / DF40 CLIP detector (their `clip` detector class): a `.pth` state dict with
    `backbone.*` = HF CLIP's vision tower (`backbone.embeddings…` or `backbone.vision_model.embeddings…`) and
    `head.*` = Linear(hidden, 2), class 1 = fake, often behind DDP's `module.` or a `state_dict` wrapper.
    Trained with mean = std = 0.5, bicubic resize to 224 (their `clip` detector config).
  * Effort in DeepfakeBench: the same, with each attention linear as `weight_main` (frozen rank-r part) +
    `U_residual` (out×k) · diag(`S_residual`) (k) · `V_residual` (k×in, rows of Vᵀ); densified to `weight`
    (a V given as in×k is transposed; a square V is read as k×in, as Effort writes it); frozen `U_r`/`S_r`/
    `V_r` copies are dropped. Trained with CLIP's mean/std (the `effort` detector config).
  * Effort's GenImage / Chameleon checkpoints (UniversalFakeDetect code): `{'model': state_dict,
    'optimizer': …, 'total_steps': …}`, keys `model.vision_model.*` (Effort's residual layers, densified as
    above; + the unused text tower) and a one-logit
    head `fc.weight` [1, D], `fc.bias` [1] trained with a sigmoid: logit z becomes two logits [0, z]
    (softmax of those is sigmoid(z)). CLIP's mean/std on a centre crop.
  * A plain HF-named state dict (`vision_model.*` or unprefixed + `head.*`), in a `.pth` or a `.safetensors`.
Anything else — e.g. DeepfakeBench's Xception (`backbone.conv1.*`) — is "not a CLIP ViT". Pickles are read
with `torch.load(weights_only=True)` (tensors and plain containers only, no code), memory-mapped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fakemerge.errors import InputError
from fakemerge.keys import PREFIX, canonical_key

FORMATS = ("auto", "deepfakebench", "effort", "effort-ufd", "hf")
PRESET_OF = {"deepfakebench": "deepfakebench", "effort": "effort", "effort-ufd": "effort-ufd", "hf": None}
ORIGIN = {"deepfakebench": "DeepfakeBench / DF40 CLIP detector", "effort": "Effort (DeepfakeBench)",
          "effort-ufd": "Effort (UniversalFakeDetect: GenImage / Chameleon)", "hf": "HF-named state dict"}
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
_EFFORT_PARTS = ("weight_main", "U_residual", "S_residual", "V_residual")
_EFFORT_FROZEN = ("U_r", "S_r", "V_r")
_WRAPPERS = ("state_dict", "model", "model_state_dict", "net")


@dataclass
class Foreign:
    """A CLIP detector from another codebase, in fakemerge's terms."""

    format: str  # one of FORMATS but auto
    backbone: dict[str, torch.Tensor]  # canonical names
    head: dict[str, torch.Tensor]  # head.weight [2, D], head.bias [2]
    preset: str | None  # preprocessing preset of its origin; None: the file does not tell
    dropped: list[str] = field(default_factory=list)  # tensors that are neither backbone nor head
    notes: list[str] = field(default_factory=list)


def load_pth(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a `.pth` checkpoint (unwrapping `state_dict`/`model` and DDP's `module.`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(e):
                raise
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


def layout_of(state: Mapping[str, torch.Tensor], source: str) -> str:
    """Which of FORMATS the keys are (see the module doc); "not a CLIP ViT" for anything else."""
    keys = list(state)
    if any(k.startswith("backbone.") for k in keys):
        if not any(canonical_key(k.removeprefix("backbone.")) for k in keys if k.startswith("backbone.")):
            first = next(k for k in keys if k.startswith("backbone."))
            raise InputError(f"{source}: not a CLIP ViT (its backbone has {first}, e.g. DeepfakeBench's "
                             "Xception or another CNN detector); only CLIP vision-tower detectors can be imported")
        return "effort" if any(k.endswith(".weight_main") for k in keys) else "deepfakebench"
    if any(k.startswith(f"model.{PREFIX}") for k in keys):
        return "effort-ufd"
    if any(canonical_key(k) is not None for k in keys):
        return "hf"
    raise InputError(f"{source}: not a CLIP ViT detector (no backbone.*, model.vision_model.* or vision_model.* "
                     f"tensors; first keys: {', '.join(keys[:3])})")


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


def two_logits(weight: torch.Tensor, bias: torch.Tensor, source: str, names: str) -> dict[str, torch.Tensor]:
    """A Linear(D, 2) head (class 1 = fake); a one-logit head z becomes [0, z] (softmax = sigmoid(z))."""
    if weight.ndim != 2 or bias.ndim != 1 or weight.shape[0] != bias.shape[0] or weight.shape[0] not in (1, 2):
        raise InputError(f"{source}: head {names} has shapes {list(weight.shape)}, {list(bias.shape)}; "
                         "expected [2, D], [2] or one logit [1, D], [1]")
    weight, bias = weight.float(), bias.float()
    if weight.shape[0] == 1:
        weight = torch.cat([torch.zeros_like(weight), weight])
        bias = torch.cat([torch.zeros_like(bias), bias])
    return {"head.weight": weight, "head.bias": bias}


def from_state(state: dict[str, torch.Tensor], source: str, fmt: str = "auto") -> Foreign:
    """Read a flat state dict of any layout in the module doc (`fmt` auto: recognised from the keys; a given
    format must agree with them)."""
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt}: unknown checkpoint format (choose from {', '.join(FORMATS)})")
    found = layout_of(state, source)
    if fmt not in ("auto", found):
        raise InputError(f"{source}: --format {fmt} given, but its keys are those of {ORIGIN[found]} ({found})")
    if any(k.endswith(".weight_main") for k in state):  # Effort's residual layers, in either codebase
        state = densify_effort(state, source)
    strip, head_prefix = {"deepfakebench": ("backbone.", "head."), "effort": ("backbone.", "head."),
                          "effort-ufd": ("model.", "fc."), "hf": ("", "head.")}[found]
    backbone, head, dropped = {}, {}, []
    for k, v in state.items():
        if k.startswith(head_prefix):
            head[k.removeprefix(head_prefix)] = v
            continue
        name = canonical_key(k.removeprefix(strip)) if k.startswith(strip) else None
        if name is None:
            dropped.append(k)
        else:
            backbone[name] = v
    if set(head) != {"weight", "bias"}:
        names = sorted(head_prefix + k for k in head) or "no head"
        raise InputError(f"{source}: expected {head_prefix}weight and {head_prefix}bias, found {names}")
    notes = []
    if found == "hf":
        notes.append(f"{source} does not say how its inputs were prepared: CLIP's mean/std are assumed "
                     "(pass --preprocessing if it was trained otherwise)")
    return Foreign(found, backbone, two_logits(head["weight"], head["bias"], source, f"{head_prefix}*"),
                   PRESET_OF[found], dropped, notes)


def read_checkpoint(path: str | os.PathLike, fmt: str = "auto") -> Foreign:
    return from_state(load_pth(path), str(path), fmt)
