"""Training methods: which parameters of a Detector train, plus optional auxiliary loss and finalisation.

A method is `fn(detector, options, probe_loader) -> Prepared`, registered with `@register_method(name)`.
It may restructure the detector in place (e.g. inject subspace layers); `finalize` turns the trained model
back into a plain Detector (e.g. densify) and returns metadata to store in the model file. Every parameter
not in `Prepared.params` must end with requires_grad False and stay bit-identical.

Optional hooks, both run identically on every process: `on_epoch(epoch, optimizer)` at the start of each
epoch (e.g. re-select layers), returning a dict that is recorded in the epoch's history record — and the
chosen epoch's dict is added to the model's metadata, since it describes the saved weights; `before_step()`
between backward and the optimizer step (e.g. drop the gradients of masked parameters, so AdamW — weight
decay included — leaves them alone; masking by requires_grad would break DDP).

Built in: `full` (backbone + head) and `linear` (head only). Subspace methods (effort, fmsd) live in
`fakemerge.training.subspace_methods`, imported on first lookup if it exists — no edit here needed.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from fakemerge.errors import InputError
from fakemerge.models.detector import Detector

PLUGIN = "fakemerge.training.subspace_methods"


@dataclass
class Prepared:
    params: list[nn.Parameter]
    aux_loss: Callable[[], torch.Tensor] | None = None
    finalize: Callable[[Detector], dict] = field(default=lambda detector: {})
    info: dict = field(default_factory=dict)
    on_epoch: Callable[[int, torch.optim.Optimizer], dict] | None = None
    before_step: Callable[[], None] | None = None


MethodFn = Callable[[Detector, dict, Iterable], Prepared]


@dataclass(frozen=True)
class Method:
    name: str
    fn: MethodFn
    default_lr: float


_REGISTRY: dict[str, Method] = {}


def register_method(name: str, default_lr: float = 3e-4) -> Callable[[MethodFn], MethodFn]:
    """Decorator: make `fn` available as `--method name` (default_lr is used when no lr is given)."""

    def wrap(fn: MethodFn) -> MethodFn:
        _REGISTRY[name] = Method(name, fn, default_lr)
        return fn

    return wrap


def _load_plugins() -> None:
    if importlib.util.find_spec(PLUGIN) is not None:
        importlib.import_module(PLUGIN)


def get(name: str) -> Method:
    _load_plugins()
    if name not in _REGISTRY:
        raise InputError(f"--method {name}: unknown training method (known: {', '.join(names())})")
    return _REGISTRY[name]


def names() -> list[str]:
    _load_plugins()
    return sorted(_REGISTRY)


def freeze_all_but(detector: Detector, params: list[nn.Parameter]) -> None:
    """requires_grad True exactly for `params` (by identity)."""
    keep = {id(p) for p in params}
    for p in detector.parameters():
        p.requires_grad_(id(p) in keep)


@register_method("full", default_lr=3e-4)
def full(detector: Detector, options: dict, probe_loader: Iterable) -> Prepared:
    """Full fine-tuning: every backbone parameter and the head."""
    _no_options("full", options)
    params = list(detector.parameters())
    freeze_all_but(detector, params)
    return Prepared(params=params)


@register_method("linear", default_lr=1e-3)
def linear(detector: Detector, options: dict, probe_loader: Iterable) -> Prepared:
    """Linear probing: the head only; the backbone stays the base (a zero task vector)."""
    _no_options("linear", options)
    params = list(detector.head.parameters())
    freeze_all_but(detector, params)
    return Prepared(params=params)


def _no_options(method: str, options: dict) -> None:
    if options:
        raise InputError(f"--method {method}: takes no options (got {', '.join(sorted(options))})")
