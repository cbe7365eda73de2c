"""The one loader: what a model path is, and its backbone, head and preprocessing — for every command.

Kinds of path (`kind_of`):
  fakemerge    a `.safetensors` file with fakemerge metadata (read lazily: one tensor per lookup);
  safetensors  any other `.safetensors` file: HF-named (`vision_model.*` + `head.*`) or the field's names;
  checkpoint   a `.pth`/`.pt`/`.bin`/`.ckpt` of DeepfakeBench, DF40 or Effort (`models/pth_import.py`);
  hf-dir       a folder with config.json: a CLIPVisionModel, a full CLIPModel (only the vision tower is
               read — quietly, no transformers load report) or a `fakemerge export` (whose head.safetensors
               makes it a detector again);
  hf-id        anything else: a Hugging Face hub id (from the local cache when HF_HUB_OFFLINE=1).
A base may be any of them; a detector needs a head (every kind but a plain CLIP). The merge engine's lazy
reader (`open_source(...).state`) and the eager loaders (`load_base`, `load_detector`) share this code, so a
base's content hash is the same whichever command computes it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fakemerge.errors import InputError
from fakemerge.io import file_sha256, read_mapping
from fakemerge.io.safetensors import LazyState, tensors_sha256
from fakemerge.keys import HEAD_KEYS, canonical_key
from fakemerge.models.backbone import SHAPE_FIELDS, backbone_state, build_backbone, config_to_dict, infer_config
from fakemerge.models.detector import (
    Detector,
    ModelMeta,
    detector_from_tensors,
    is_fakemerge_header,
    read_header,
    save_detector,
)
from fakemerge.models.preprocessing import Preprocessing, preset
from fakemerge.models.pth_import import CHECKPOINT_SUFFIXES, ORIGIN, Foreign, from_state, read_checkpoint

if TYPE_CHECKING:  # the model classes import in seconds: only where a model is built
    from transformers import CLIPVisionModel

HEAD_FILE = "head.safetensors"  # beside model.safetensors in an exported HF directory
_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL codes in preprocessor_config.json


@dataclass
class Source:
    """A model as found at a path: backbone tensors (canonical names), config, preprocessing, maybe a head."""

    spec: str
    kind: str  # fakemerge | safetensors | checkpoint | hf-dir | hf-id
    state: Mapping[str, torch.Tensor]
    config: dict
    preprocessing: Preprocessing
    origin: str  # where the preprocessing comes from, in words
    id: str  # what a model fine-tuned from this base records as base_id
    meta: ModelMeta | None = None  # stored fakemerge metadata (model files and exports)
    head: dict[str, torch.Tensor] | None = None
    format: str | None = None  # the field's layout (pth_import.FORMATS) of a foreign detector
    dropped: list[str] = field(default_factory=list)  # tensors that are neither backbone nor head
    notes: list[str] = field(default_factory=list)  # what the user should be told (assumptions made)
    heads_assumed: bool = False  # the config came from shapes, which cannot tell the attention heads

    def as_meta(self) -> ModelMeta:
        """The stored metadata, or what a foreign detector's file implies (its assumptions in extra.notes)."""
        if self.meta is not None:
            return self.meta
        notes = [*self.notes, heads_note(self)] if self.heads_assumed else list(self.notes)
        return ModelMeta(kind="specialist", method=f"imported:{self.format or self.kind}",
                         backbone_config=dict(self.config), preprocessing=self.preprocessing.to_dict(),
                         recipe={"source": Path(self.spec).name, "format": self.format or self.kind,
                                 "preprocessing_origin": self.origin}, extra={"notes": notes})


def heads_note(source: Source) -> str:
    return (f"{source.spec}: {source.config['num_attention_heads']} attention heads assumed (hidden size / 64, "
            "as in every released CLIP ViT); give --base to take the base's config")


def kind_of(spec: str | os.PathLike) -> str:
    """Which kind of model path SPEC is (see the module doc); a local path that does not exist is an error."""
    path = Path(spec)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"{spec}: not a Hugging Face model directory (no config.json)")
        return "hf-dir"
    suffix = path.suffix.lower()
    if path.is_file():
        if suffix == ".safetensors":
            return "fakemerge" if is_fakemerge_header(read_header(path)) else "safetensors"
        if suffix in CHECKPOINT_SUFFIXES:
            return "checkpoint"
        raise InputError(f"{spec}: not a model file (expected .safetensors, {', '.join(CHECKPOINT_SUFFIXES)} "
                         "or a Hugging Face directory)")
    if suffix in (".safetensors", *CHECKPOINT_SUFFIXES) or str(spec).startswith((".", "/", "~")) or path.exists():
        raise InputError(f"{spec}: model file not found")
    return "hf-id"


def open_source(spec: str | os.PathLike, *, fmt: str = "auto", preprocessing: str | None = None) -> Source:
    """Open SPEC lazily where its format allows. `fmt` (pth_import.FORMATS) and `preprocessing` (a preset
    name) override what a foreign file implies; they do not apply to fakemerge files or HF models."""
    spec = str(spec)
    kind = kind_of(spec)
    if kind in ("fakemerge", "hf-dir", "hf-id") and (fmt != "auto" or preprocessing is not None):
        raise InputError(f"{spec}: --format/--preprocessing apply to the field's checkpoints, not to a {kind}")
    if kind == "fakemerge":
        return _fakemerge_file(spec)
    if kind == "hf-dir":
        return _hf_dir(Path(spec))
    if kind == "hf-id":
        return _hf_id(spec)
    if kind == "checkpoint":
        foreign = read_checkpoint(spec, fmt)
    else:
        from safetensors.torch import load_file

        foreign = from_state(load_file(spec), spec, fmt)
    return _foreign(spec, kind, foreign, preprocessing)


def load_base(spec: str | os.PathLike) -> tuple[CLIPVisionModel, str]:
    """A float32 CLIP vision tower from any kind of path, and the id to record as its base id."""
    source = open_source(spec)
    return build_backbone(source.config, source.state), source.id


def load_detector(spec: str | os.PathLike, *, fmt: str = "auto",
                  preprocessing: str | None = None) -> tuple[Detector, ModelMeta]:
    """The one way to load a detector: a fakemerge file, an exported HF directory or the field's checkpoint
    (converted in memory, with its origin's preprocessing). Safetensors and weights-only pickles only."""
    source = open_source(spec, fmt=fmt, preprocessing=preprocessing)
    if source.head is None:
        raise InputError(f"{spec}: a {source.kind} without a head is a backbone, not a detector "
                         "(use it as --base, or give a detector)")
    meta = source.as_meta()
    return detector_from_tensors({**source.state, **source.head}, meta, str(spec)), meta


@dataclass
class ImportResult:
    meta: ModelMeta
    format: str
    dropped: list[str] = field(default_factory=list)  # tensors that are neither backbone nor head
    notes: list[str] = field(default_factory=list)


def import_model(src: str | os.PathLike, out: str | os.PathLike, *, base: str | None = None,
                 families: list[str] | None = None, fmt: str = "auto",
                 preprocessing: str | None = None) -> ImportResult:
    """Convert the field's detector (checkpoint or safetensors) into a fakemerge detector file.

    With `base`, the backbone config comes from the base (checked against the shapes) and the base's id and
    content hash are recorded, so the result can be merged with specialists of that base.
    """
    source = open_source(src, fmt=fmt, preprocessing=preprocessing)
    if source.kind not in ("checkpoint", "safetensors"):
        raise InputError(f"{src}: is a {source.kind}, not a checkpoint to import")
    notes = list(source.notes)
    config, base_id, base_hash = source.config, None, None
    if base is None:
        notes.append(heads_note(source))
    else:
        b = open_source(base)
        for k in SHAPE_FIELDS:
            if b.config[k] != config[k]:
                raise InputError(f"{src}: {k} is {config[k]} but the base {base} has {b.config[k]}")
        config, base_id, base_hash = dict(b.config), b.id, tensors_sha256(b.state)
    meta = ModelMeta(kind="specialist", method=f"imported:{source.format}", families=list(families or []),
                     base_id=base_id, base_hash=base_hash, backbone_config=config,
                     recipe={"source": Path(src).name, "source_sha256": file_sha256(src), "format": source.format,
                             "preprocessing_origin": source.origin},
                     preprocessing=source.preprocessing.to_dict())
    detector = detector_from_tensors({**source.state, **source.head}, meta, str(src))
    save_detector(detector, out, meta)
    return ImportResult(meta, source.format, source.dropped, notes)


def _fakemerge_file(spec: str) -> Source:
    meta = ModelMeta.from_header(read_header(spec), spec)
    state = LazyState(spec)
    head = {k: state.extra(k) for k in HEAD_KEYS}
    origin = "stored in the model file" if meta.preprocessing else "CLIP's (the file predates stored preprocessing)"
    return Source(spec, "fakemerge", state, meta.backbone_config, meta.preprocessing_for(spec), origin,
                  meta.base_id or spec, meta, head if all(v is not None for v in head.values()) else None)


def _foreign(spec: str, kind: str, foreign: Foreign, override: str | None) -> Source:
    config = infer_config({k: tuple(v.shape) for k, v in foreign.backbone.items()}, spec)
    name = override or foreign.preset
    if name is None:
        name, origin = "fakemerge", "assumed (CLIP's mean/std)"
    else:
        origin = f"--preprocessing {override}" if override else f"{ORIGIN[foreign.format]} training config"
    notes = [n for n in foreign.notes if override is None]  # an override answers the file's silence
    return Source(spec, kind, foreign.backbone, config, preset(name, int(config["image_size"])), origin, spec,
                  head=foreign.head, format=foreign.format, dropped=foreign.dropped, notes=notes, heads_assumed=True)


def _hf_dir(path: Path) -> Source:
    spec = str(path)
    raw = read_mapping(path / "config.json", "Hugging Face config")
    model_type = raw.get("model_type")
    if model_type == "clip":
        raw = raw.get("vision_config") or {}
    elif model_type != "clip_vision_model":
        raise InputError(f"{spec}: not a CLIP ViT (config.json model_type is {model_type!r}; expected 'clip' or "
                         "'clip_vision_model')")
    from transformers import CLIPVisionConfig

    with quiet_transformers():
        config = config_to_dict(CLIPVisionConfig.from_dict(raw))
    if any(path.glob("model*.safetensors")):
        state: Mapping[str, torch.Tensor] = LazyState(path, float32=True)
    elif (path / "pytorch_model.bin").is_file():
        state = _torch_weights(path / "pytorch_model.bin")
    else:
        raise InputError(f"{spec}: no model.safetensors or pytorch_model.bin")
    if not len(state):
        raise InputError(f"{spec}: its weights hold no CLIP vision-tower tensors")
    header = state.metadata if isinstance(state, LazyState) else {}
    meta = ModelMeta.from_header(header, spec) if is_fakemerge_header(header) else None
    head = _head_file(path / HEAD_FILE) if (path / HEAD_FILE).is_file() else None
    if meta is not None:
        prep, origin = meta.preprocessing_for(spec), "stored in model.safetensors (a fakemerge export)"
    elif (path / "preprocessor_config.json").is_file():
        prep = _from_processor(path / "preprocessor_config.json", int(config["image_size"]))
        origin = "preprocessor_config.json"
    else:
        prep, origin = Preprocessing(size=int(config["image_size"])), "CLIP's defaults (no preprocessor_config.json)"
    return Source(spec, "hf-dir", state, config, prep, origin, (meta.base_id if meta else None) or spec, meta, head)


def _hf_id(spec: str) -> Source:
    try:
        with quiet_transformers():
            from transformers import CLIPVisionModel

            model = CLIPVisionModel.from_pretrained(spec)
    except (OSError, ValueError) as e:
        raise InputError(f"{spec}: cannot load a CLIP vision tower ({str(e).splitlines()[0]})") from None
    model = model.float().eval()
    return Source(spec, "hf-id", backbone_state(model), config_to_dict(model.config),
                  Preprocessing(size=int(model.config.image_size)), "CLIP's defaults (hub model)", spec)


def _torch_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise InputError(f"{path}: not a loadable PyTorch weights file ({str(e).splitlines()[0]})") from None
    out = {}
    for k, v in obj.items():
        name = canonical_key(k)
        if name is not None and isinstance(v, torch.Tensor):
            out[name] = v.float() if v.is_floating_point() else v
    return out


def _head_file(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    missing = [k for k in HEAD_KEYS if k not in tensors]
    if missing:
        raise InputError(f"{path}: has no {missing[0]}")
    return {k: tensors[k] for k in HEAD_KEYS}


def _from_processor(path: Path, size: int) -> Preprocessing:
    """A CLIPImageProcessor config as fakemerge's Preprocessing (square crops: resize then centre crop of the
    shortest edge is a resize); what fakemerge cannot reproduce is an error, not an approximation."""
    d = read_mapping(path, "image processor config")
    crop = d.get("crop_size") or d.get("size") or {}
    want = crop.get("height", crop.get("shortest_edge")) if isinstance(crop, dict) else crop
    if want is not None and int(want) != size:
        raise InputError(f"{path}: input size {want} differs from the model's image_size {size}")
    if d.get("do_rescale", True) and abs(float(d.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise InputError(f"{path}: rescale_factor {d['rescale_factor']} is not 1/255")
    resample = d.get("resample", 3)
    if resample not in _RESAMPLE:
        raise InputError(f"{path}: resample {resample} is not supported (2 bilinear or 3 bicubic)")
    normalize = d.get("do_normalize", True)
    mean = d.get("image_mean", Preprocessing(size=size).mean) if normalize else (0.0, 0.0, 0.0)
    std = d.get("image_std", Preprocessing(size=size).std) if normalize else (1.0, 1.0, 1.0)
    return Preprocessing(size=size, mean=tuple(mean), std=tuple(std), resize=_RESAMPLE[resample])


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No load report (a full CLIPModel read as a vision tower lists ~200 text-tower keys) and no bars."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
