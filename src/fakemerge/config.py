"""Settings as pydantic models, read from and written to YAML (a recipe is a file you can rerun).

Training defaults suit the tiny ForgeryLab ViT on CPU: AdamW, cosine decay to 0, 3 epochs of batch 32
(better validation AUC than 4 of batch 64 in less time; see demo.SCALES),
no weight decay (decay pulls weights towards zero, not towards the base, and so inflates task vectors),
lr by method when not given (full 3e-4, linear 1e-3, others as their method registers).
Effort's released recipe (its DeepfakeBench config `detector/effort.yaml`: Adam, lr 2e-4, weight decay 5e-4
as an L2 term, no lr scheduler) is `optimizer: adam, weight_decay: 5e-4, schedule: constant, lr: 2e-4`
(EFFORT_RECIPE).
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, field_validator

from fakemerge.data.options import DataOptions
from fakemerge.errors import InputError
from fakemerge.io import read_mapping


def _at_least(low: int):
    def check(v: int) -> int:
        if v < low:
            raise ValueError(f"must be >= {low}")
        return v

    return AfterValidator(check)


Positive = Annotated[int, _at_least(1)]


class TrainConfig(DataOptions):
    """Training settings; the dataset fields (data, root, compression, frames_per_video, family_map,
    path_map, allow_split_overlap) are `DataOptions`', shared with eval."""

    model_config = ConfigDict(extra="forbid")

    base: str
    families: list[str]
    out: str
    method: str = "full"
    method_options: dict[str, Any] = {}
    epochs: Positive = 3
    batch_size: Positive = 32
    lr: float | None = None  # None: the method's default
    optimizer: Literal["adamw", "adam"] = "adamw"  # adam: weight_decay is an L2 term (torch.optim.Adam)
    weight_decay: float = 0.0
    schedule: Literal["cosine", "constant"] = "cosine"
    seed: int = 0
    num_workers: int | None = None  # None: 0 on CPU (decoded images stay cached in-process), 2 on GPU
    flip: bool = False  # horizontal-flip augmentation (off: ForgeryLab families may be asymmetric)
    max_steps_per_epoch: int | None = None  # optimizer steps (each of grad_accum batches)
    # Mixed precision through accelerate: "bf16" (CPU and recent GPUs) or "fp16" (GPUs, with loss scaling).
    # None: what `accelerate launch --mixed_precision` says, else "no". Weights, optimizer state, the loss and
    # the subspace methods' low-rank branch stay float32.
    mixed_precision: Literal["no", "bf16", "fp16"] | None = None
    grad_accum: Positive = 1  # batches whose gradients add up to one optimizer step
    val_split: str | None = "val"  # None: no validation, the last epoch is kept
    select_metric: Literal["auc", "acc", "loss"] = "auc"
    resume: bool = False
    keep_checkpoint: bool = False  # keep OUT.ckpt/ after success (it is needed only to resume)

    @field_validator("families", mode="before")
    @classmethod
    def _split_families(cls, v):
        if isinstance(v, str):
            v = [f.strip() for f in v.split(",") if f.strip()]
        if not v:
            raise ValueError("at least one family is needed")
        return v

    def data_options(self) -> DataOptions:
        return DataOptions(**self.model_dump(include=set(DataOptions.model_fields)))

    @field_validator("weight_decay")
    @classmethod
    def _non_negative(cls, v):
        if v < 0:
            raise ValueError("must be >= 0")
        return v

    def recipe(self) -> dict:
        """The settings that define the result (what a resumed run must share with the original)."""
        return self.model_dump(exclude={"resume", "keep_checkpoint", "num_workers"})

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides) -> TrainConfig:
        return build(cls, read_mapping(path), overrides, str(path))

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        from fakemerge.io import write_text

        text = yaml.safe_dump(self.model_dump(), sort_keys=False)
        if path is not None:
            write_text(path, text)
        return text


class EvalOptions(BaseModel):
    """How `fakemerge eval` / `evaluation.runner` evaluate a split: one object from the CLI (or a YAML file)
    to the runner, instead of a dozen keyword arguments. How the datasets are read (root, compression, family
    map, ...) is the other object, `DataOptions`, passed beside it."""

    model_config = ConfigDict(extra="forbid")

    split: str = "test"
    families: list[str] | None = None  # fake families to include (None: all); reals are always included
    video_agg: Literal["mean", "max", "topk"] = "mean"  # frame scores -> video score
    k: Positive = 3  # frames averaged by video_agg topk
    batch_size: Positive = 128  # per process
    device: str | None = None  # None: this process's accelerator device (cuda:<local rank>, cuda, or cpu)
    models_per_pass: Positive = 8  # models sharing one pass over the data (all held in memory)
    num_workers: Annotated[int, _at_least(0)] | None = None  # loader workers; None: runner.loader_workers
    roc: bool = True  # write roc.png per model
    perturbations: list[str] = []  # robustness: `jpeg:50`, `blur` (its ladder), ... (evaluation.perturbations)
    seed: int = 0  # seeds the random perturbations (noise, block) with each image's path

    @field_validator("families", mode="before")
    @classmethod
    def _split_families(cls, v):
        if isinstance(v, str):
            v = [f.strip() for f in v.split(",") if f.strip()]
        return v or None

    @field_validator("perturbations", mode="before")
    @classmethod
    def _perturbations(cls, v):
        """Canonical names (`jpeg:50`), ladders expanded; unknown or bad ones are errors here, not mid-run."""
        from fakemerge.evaluation.perturbations import parse

        return [p.name for p in parse(v or [])]


EFFORT_RECIPE = {"optimizer": "adam", "weight_decay": 5e-4, "schedule": "constant", "lr": 2e-4}


def parse_assignments(pairs: list[str], source: str) -> dict[str, Any]:
    """['a=1', 'b.c=x'] -> {'a': 1, 'b': {'c': 'x'}}; values parsed as YAML scalars (1, 0.5, true, [a,b])."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{source} {pair!r}: expected key=value")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        parsed = _number_or_text(parsed) if isinstance(parsed, str) else parsed
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = parsed
    return out


def _number_or_text(text: str) -> float | str:
    """YAML 1.1 reads '1e-3' as text; a user writing it means the number."""
    try:
        return float(text)
    except ValueError:
        return text


def build(model: type[BaseModel], *layers: dict | str):
    """Validate the merge of setting layers (later wins; dicts merge one level deep); the trailing string
    names the source in errors."""
    *dicts, source = layers
    merged: dict[str, Any] = {}
    for d in dicts:
        for k, v in d.items():
            merged[k] = {**merged[k], **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    try:
        return model(**merged)
    except ValidationError as e:
        where, msg = first_error(e, "config")
        raise InputError(f"{source}: {where}: {msg}") from None


def first_error(e: ValidationError, default: str) -> tuple[str, str]:
    """(dotted field name, message) of a pydantic error: what a one-line error needs."""
    err = e.errors()[0]
    return ".".join(str(x) for x in err["loc"]) or default, err["msg"]
