"""The training methods `--method` chooses from: `full` (backbone + head) and `linear` (head only) here,
`effort` and `fmsd` in `fakemerge.training.subspace_methods` (imported below, so every method is visible to
readers and tools). What a method is and returns: `fakemerge.training.prepared`.
"""

from __future__ import annotations

from collections.abc import Iterable

from fakemerge.errors import InputError
from fakemerge.models.detector import Detector
from fakemerge.training import subspace_methods  # noqa: F401  (registers effort and fmsd)
from fakemerge.training.prepared import REGISTRY, Method, Prepared, freeze_all_but, register_method


def get(name: str) -> Method:
    if name not in REGISTRY:
        raise InputError(f"--method {name}: unknown training method (known: {', '.join(names())})")
    return REGISTRY[name]


def names() -> list[str]:
    return sorted(REGISTRY)


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


__all__ = ["Method", "Prepared", "freeze_all_but", "get", "names", "register_method"]
