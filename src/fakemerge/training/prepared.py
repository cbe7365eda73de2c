"""What a training method is: `fn(detector, options, probe_loader) -> Prepared`, registered by name.

A method may restructure the detector in place (e.g. inject subspace layers); `finalize` turns the trained
model back into a plain Detector (e.g. densify) and returns metadata to store in the model file. Every
parameter not in `Prepared.params` must end with requires_grad False and stay bit-identical.

Optional hooks, all run identically on every process: `on_epoch(epoch, optimizer)` at the start of each
epoch (e.g. re-select layers), returning a dict that is recorded in the epoch's history record — and the
chosen epoch's dict is added to the model's metadata, since it describes the saved weights; `before_step()`
between backward and the optimizer step (e.g. drop the gradients of masked parameters, so the optimizer —
weight decay included — leaves them alone; masking by requires_grad would break DDP). `write_artifacts(out,
extra)` runs on the main process once the model file is written: the method's own files beside it (FMSD's
layer-score plot), from the metadata `extra` that describes the saved weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fakemerge.models.detector import Detector


@dataclass
class Prepared:
    params: list[nn.Parameter]
    aux_loss: Callable[[], torch.Tensor] | None = None
    finalize: Callable[[Detector], dict] = field(default=lambda detector: {})
    info: dict = field(default_factory=dict)
    on_epoch: Callable[[int, torch.optim.Optimizer], dict] | None = None
    before_step: Callable[[], None] | None = None
    write_artifacts: Callable[[Path, dict], None] | None = None


MethodFn = Callable[[Detector, dict, Iterable], Prepared]


@dataclass(frozen=True)
class Method:
    name: str
    fn: MethodFn
    default_lr: float


REGISTRY: dict[str, Method] = {}


def register_method(name: str, default_lr: float = 3e-4) -> Callable[[MethodFn], MethodFn]:
    """Decorator: make `fn` available as `--method name` (default_lr is used when no lr is given)."""

    def wrap(fn: MethodFn) -> MethodFn:
        REGISTRY[name] = Method(name, fn, default_lr)
        return fn

    return wrap


def freeze_all_but(detector: Detector, params: list[nn.Parameter]) -> None:
    """requires_grad True exactly for `params` (by identity)."""
    keep = {id(p) for p in params}
    for p in detector.parameters():
        p.requires_grad_(id(p) in keep)
