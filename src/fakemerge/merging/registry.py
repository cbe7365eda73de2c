"""Merge methods as declared units, and the one driver that runs any of them.

A method is a per-tensor function `delta(key, taus, plan, ...) -> Δ` (taus: the N task vectors of one tensor
stacked N × shape, in the compute dtype: the driver's scratch, which the delta may change in place, as the
driver has taken the key's Gram before and refills it for a later key; Δ: a new tensor, which the driver turns
into θ0 + Δ in place)
declared with `@merge_method(name, param=Param(...), ...)`: the decorator carries every parameter with its
default and rule, written once. A method that needs the whole model first (TIES' global threshold, R²M's
cross-layer Gram) also declares a `prepare(stream, ...)` pass that returns a `Plan` (whatever the deltas
share, plus its diagnostics). Each function receives exactly what its signature names: a delta any of `key`,
`taus`, `theta0` (the base tensor), `plan`, `fingerprints` (one content hash per row of taus, for seeds that
do not depend on the specialists' order), `weights` and `densities` (per model, for the methods that define
them) and the parameters; a prepare `stream` (the `TaskStream`), `grams`, `weights`, `densities` and the
parameters.

The driver (`MergeRun`) owns everything else: the per-tensor Gram pass when a prepare names `grams`, the key
loop in the base's order (keys side by side on the threads, `TaskStream.map`), pass-through of non-float
tensors, θ0 + Δ in the base's dtype, the NaN/Inf check (from each tensor's Gram), and the report (task norms
and cosines from the Gram of all task vectors, plus the plan's diagnostics). Adding a method is one module
with one decorated function, imported in `merging/__init__.py`.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from fakemerge.errors import InputError
from fakemerge.merging.streams import OnRead, TaskStream
from fakemerge.progress import Progress, silent


@dataclass(frozen=True)
class Param:
    """One method parameter: its default and the rule a value must satisfy (shown in errors)."""

    default: object
    check: Callable[[object], bool]
    rule: str


def number(default: float, lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False,
           hi_open: bool = False, also: tuple[str, ...] = ()) -> Param:
    """A finite number in [lo, hi] (ends open as asked), or one of the words in `also`."""

    def check(v: object) -> bool:
        if v in also and isinstance(v, str):
            return True
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return False
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    rule = "a finite number" if (lo, hi) == (-math.inf, math.inf) else \
        f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    return Param(default, check, rule + "".join(f" or {w!r}" for w in also))


def integer(default: int, lo: int) -> Param:
    return Param(default, lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo,
                 f"an integer ≥ {lo}")


def choice(default: object, *options: object) -> Param:
    words = [repr(o) if isinstance(o, str) else str(o).lower() for o in options]
    rule = " or ".join(words) if len(words) <= 2 else ", ".join(words[:-1]) + " or " + words[-1]
    return Param(default, lambda v: v in options and type(v) is type(default), rule)


def flag(default: bool) -> Param:
    return Param(default, lambda v: isinstance(v, bool), "true or false")


class Plan:
    """What a method's prepare pass learned for its deltas (subclassed by each method that has one)."""

    def diagnostics(self, per_task: Callable[[Sequence], list]) -> dict:
        """What the merge report shows about this plan (JSON-able values); `per_task` puts a per-task list
        (the stream's canonical order) in the order the specialists were given."""
        return {}


Delta = Callable[..., torch.Tensor]


Formula = Callable[..., str]  # formula(params, weights, densities, n): what the merge applies, as text


@dataclass(frozen=True)
class MergeMethod:
    name: str
    delta: Delta
    params: Mapping[str, Param]
    formula: Formula
    prepare: Callable[..., Plan] | None = None
    aliases: Mapping[str, str] = field(default_factory=dict)  # other spellings (FusionBench's) of parameters

    @property
    def grams(self) -> bool:
        """Whether the prepare pass asks for the per-tensor N×N Grams (the driver's Gram pass)."""
        return self.prepare is not None and "grams" in _names(self.prepare)

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.delta) or ""

    def takes(self, per_model: str) -> bool:
        """Whether the method takes per-model `weights` or `densities`."""
        return per_model in _names(self.delta) or (self.prepare is not None and per_model in _names(self.prepare))

    @property
    def defaults(self) -> dict[str, object]:
        return {k: p.default for k, p in self.params.items()}


METHODS: dict[str, MergeMethod] = {}
PER_MODEL = {"weights", "densities"}  # per-model values (canonical order), for methods that name them
DELTA_ARGS = {"key", "taus", "theta0", "plan", "fingerprints"} | PER_MODEL  # offered to a delta, besides parameters
PREPARE_ARGS = {"stream", "grams"} | PER_MODEL  # ... and to a prepare


@functools.cache
def _names(fn: Callable) -> frozenset[str]:
    return frozenset(inspect.signature(fn).parameters)


def call(fn: Callable, **offered):
    """`fn` called with the offered arguments its signature names."""
    return fn(**{k: v for k, v in offered.items() if k in _names(fn)})


def merge_method(name: str, *, formula: Formula, prepare: Callable[..., Plan] | None = None,
                 aliases: Mapping[str, str] | None = None, **params: Param) -> Callable[[Delta], Delta]:
    """Register `delta` as merge method `name` with the declared parameters (each used by delta or prepare),
    the formula it applies and other accepted spellings of its parameters."""

    def register(delta: Delta) -> Delta:
        used = _names(delta) | (_names(prepare) if prepare else set())
        unused = sorted(set(params) - used)
        undeclared = sorted((_names(delta) - DELTA_ARGS - set(params))
                            | ((_names(prepare) - PREPARE_ARGS - set(params)) if prepare else set()))
        stray = sorted(set((aliases or {}).values()) - set(params))
        if name in METHODS or unused or undeclared or stray:
            raise TypeError(f"merge method {name!r}: duplicate, or parameters unused {unused} / "
                            f"undeclared {undeclared} / aliased but not declared {stray}")
        METHODS[name] = MergeMethod(name, delta, params, formula, prepare, dict(aliases or {}))
        return delta

    return register


def get_method(name: str) -> MergeMethod:
    if name not in METHODS:
        raise InputError(f"method {name!r}: unknown merge method (choose from {', '.join(METHODS)})")
    return METHODS[name]


def method_defaults(name: str) -> dict[str, object]:
    """The default parameters of a method (raises InputError for an unknown method)."""
    return get_method(name).defaults


def resolve_params(name: str, params: Mapping[str, object]) -> dict[str, object]:
    """Defaults overridden by `params` (also under their declared aliases), validated; an unknown name, a
    parameter given twice or a bad value raises InputError."""
    method = get_method(name)
    given: dict[str, object] = {}
    for k, v in params.items():
        canonical = method.aliases.get(k, k)
        if canonical not in method.params:
            allowed = ", ".join([*method.params, *method.aliases]) or "none"
            raise InputError(f"method {name!r}: unknown parameter {k!r} (parameters: {allowed})")
        if canonical in given:
            raise InputError(f"method {name!r}: parameter {canonical!r} given twice ({k!r} is another name for it)")
        given[canonical] = v
    resolved = {**method.defaults, **given}
    for k, v in resolved.items():
        if not method.params[k].check(v):
            raise InputError(f"method {name!r}: parameter {k}={v!r} must be {method.params[k].rule}")
    return resolved


class MergeRun:
    """Iterates `(key, merged tensor)` for every key of the base, in its order; after the last one,
    `gram` (N×N, float64, over every float tensor) and `diagnostics` (task norms and cosines, plus the
    method's own) are set, per task in the order the specialists were given. `formula`: what it applies
    (τi: the i-th specialist as given), e.g. θ0 + 0.3·(τ1 + 0.5·τ2)."""

    def __init__(self, method: MergeMethod, stream: TaskStream, params: dict[str, object],
                 per_model: dict[str, list | None], formula: str):
        self.method, self.stream, self.params, self.formula = method, stream, params, formula
        self.per_model = {k: None if v is None else [v[i] for i in stream.order] for k, v in per_model.items()}
        self.gram: torch.Tensor | None = None
        self._diagnostics: dict | None = None

    @property
    def diagnostics(self) -> dict:
        if self._diagnostics is None:
            raise RuntimeError("diagnostics are known once every tensor has been merged")
        return self._diagnostics

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        s, method = self.stream, self.method
        grams = gram_pass(s) if method.grams else None
        offered = {**self.per_model, **self.params}
        plan = Plan() if method.prepare is None else call(method.prepare, stream=s, grams=grams, **offered)

        def merged(key: str, theta0: torch.Tensor, taus: torch.Tensor | None):
            if taus is None:
                return theta0, None
            gram = key_gram(s, key, theta0, taus) if grams is None else None
            delta = call(method.delta, key=key, taus=taus, theta0=theta0.to(taus.device), plan=plan,
                         fingerprints=s.fingerprints, **offered).cpu()
            if delta._base is not None:  # a view (of what the method keeps): θ0 is added into a tensor of our own
                delta = delta.clone()
            return delta.add_(theta0).to(theta0.dtype), gram  # in place: a fresh tensor per key costs page faults

        total = torch.zeros(s.n, s.n, dtype=torch.float64)
        if grams is not None:
            total = sum(grams.values(), total)
        for key, (tensor, gram) in s.map("merge", s.keys, merged):
            if gram is not None:
                total += gram
            yield key, tensor
        self.gram = s.given_gram(total)
        self._diagnostics = {**gram_report(self.gram), **plan.diagnostics(s.given_order)}


def gram_pass(s: TaskStream) -> dict[str, torch.Tensor]:
    """Per float tensor, the N×N Gram of its task vectors (product in the compute dtype, kept in float64)."""
    return dict(s.map("grams", s.float_keys(), lambda key, theta0, taus: key_gram(s, key, theta0, taus)))


def key_gram(s: TaskStream, key: str, theta0: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
    """One tensor's N×N Gram; a NaN or Inf in any input shows in its diagonal and is an InputError naming it."""
    flat = taus.reshape(s.n, -1)
    gram = (flat @ flat.T).double().cpu()
    s.check_finite(key, gram, theta0, taus)
    return gram


def gram_report(gram: torch.Tensor) -> dict[str, list]:
    """Task norms and the N×N cosine-similarity matrix of the task vectors."""
    norms = gram.diagonal().clamp_min(0).sqrt()
    denom = torch.outer(norms, norms)
    cos = torch.where(denom > 0, gram / denom.clamp_min(1e-300), torch.zeros_like(gram))
    return {"task_norms": norms.tolist(), "task_cosine": cos.tolist()}


def per_model_values(method: str, n: int, weights: Sequence[float | None] | None = None,
                     densities: Sequence[float | None] | None = None) -> dict[str, list | None]:
    """Validated per-model weights (None entries: 1) and densities (None entries: the method's own), or None
    where none was given; a method that does not define them raises InputError."""
    m = get_method(method)
    out: dict[str, list | None] = {}
    kinds = (("weights", "weight", weights, 1.0, number(1.0)),
             ("densities", "density", densities, None, number(1.0, 0, 1, lo_open=True)))
    for name, one, values, default, rule in kinds:
        values = list(values) if values is not None else [None] * n
        if len(values) != n:
            raise InputError(f"method {method!r}: {len(values)} per-model {name} for {n} specialists")
        if all(v is None for v in values):
            out[name] = None
            continue
        if not m.takes(name):
            takers = ", ".join(k for k, v in METHODS.items() if v.takes(name))
            raise InputError(f"method {method!r}: per-model {one} is not defined for it (it is for {takers})")
        for i, v in enumerate(values):
            if v is not None and not rule.check(v):
                raise InputError(f"method {method!r}: model {i + 1}: {one} {v!r} must be {rule.rule}")
        out[name] = [default if v is None else v for v in values]
    return out


def weighted(terms: Sequence[str], weights: Sequence[float] | None) -> list[str]:
    """`w·term` for each term (the term alone where its weight is 1): the pieces of a formula."""
    return [t if weights is None or weights[i] == 1 else f"{weights[i]:g}·{t}" for i, t in enumerate(terms)]


def merge_iter(method: str, base: Mapping[str, torch.Tensor], specialists: Sequence[Mapping[str, torch.Tensor]],
               *, weights: Sequence[float | None] | None = None, densities: Sequence[float | None] | None = None,
               progress: Progress = silent, fingerprints: Sequence[str] | None = None,
               names: Sequence[str] | None = None, on_read: OnRead | None = None, device: str = "cpu",
               **params) -> MergeRun:
    """The merge as a `MergeRun`: parameters and key sets are validated now, tensors produced when iterated
    (a tensor whose shape differs from the base's raises InputError when it is first read).

    `weights` / `densities`: per specialist (as given), for the methods that define them (`formula` says
    what they do). `fingerprints`: a content hash per specialist; without them each specialist is hashed
    first (one extra read). They fix the order the methods see. `names` (for errors), `on_read` (sees every
    tensor as it is read) and `device` (where the arithmetic runs: cpu, cuda or auto) go to the `TaskStream`.
    """
    resolved, per_model, text = validate(method, params, len(specialists), weights, densities)
    stream = TaskStream(base, specialists, progress, fingerprints, names=names, on_read=on_read,
                        device=resolve_device(device))
    return MergeRun(get_method(method), stream, resolved, per_model, text)


def resolve_device(device: str) -> torch.device:
    """cpu | cuda[:i] | auto (cuda when available); a device this machine lacks is an InputError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"device {device!r}: not a device (cpu, cuda, cuda:N or auto)") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: no CUDA device is available here (use cpu or auto)")
    if chosen.type not in ("cpu", "cuda"):
        raise InputError(f"device {device!r}: merging runs on cpu or cuda")
    return chosen


def validate(method: str, params: Mapping[str, object], n: int, weights: Sequence[float | None] | None = None,
             densities: Sequence[float | None] | None = None) -> tuple[dict, dict, str]:
    """Everything about a merge of n specialists that can be checked without its tensors: the resolved
    parameters, the per-model values and the formula (InputError for anything wrong)."""
    if n < 1:
        raise InputError("specialists: at least one specialist is needed to merge (got 0)")
    resolved = resolve_params(method, params)
    per_model = per_model_values(method, n, weights, densities)
    return resolved, per_model, get_method(method).formula(resolved, n=n, **per_model)


def merge(method: str, base: Mapping[str, torch.Tensor], specialists: Sequence[Mapping[str, torch.Tensor]],
          **params) -> dict[str, torch.Tensor]:
    """The merged backbone state dict (see `merge_iter`; use it for the diagnostics)."""
    return dict(merge_iter(method, base, specialists, **params))
