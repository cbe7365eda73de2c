"""Adaptive grid search on validation under a fixed budget of evaluations — the same rule for every method.

A `Space` is a method's published search space: numeric axes with an initial grid and the domain they may
be extended into, and categorical axes (options; the first value is the method's default). The search:
1. evaluates the initial grid (the product of the numeric grids, categorical axes at their defaults);
2. then, one evaluation at a time until the budget is spent, takes the first candidate of
   a. edge extension: the best setting lies at the end of a numeric axis's explored values (holding the
      other axes at the best) and validation was still rising towards it — step one grid spacing past
      that end (geometric axes: one ratio), or halfway to the domain bound when the step would cross it;
   b. options: the best setting with one categorical axis switched to another value;
   c. refinement: the midpoint between the best value and its explored neighbours on each numeric axis,
      the neighbour with the higher score first;
   stopping early only when no candidate is left (then `used` < `budget` says so).
Scores are maximised; ties go to the setting evaluated first (the initial grid's order). The result says
which axes still had the best at an extendable edge when the budget ran out (`open_edges`): a reader must
know when a grid did not reach its optimum.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Setting = dict[str, object]
MIN_GAP = 1e-3  # relative: values closer than this are not worth another evaluation


@dataclass(frozen=True)
class Axis:
    """One parameter. Numeric: `values` is the ascending initial grid, (`lo`, `hi`) the domain extension
    may reach (None: unbounded; `*_open`: the bound itself is excluded), `log` for geometric steps.
    Categorical (`options`): `values` are the alternatives, the first the default."""

    name: str
    values: tuple
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    log: bool = False
    options: bool = False

    def __post_init__(self):
        if not self.values:
            raise ValueError(f"axis {self.name}: needs at least one value")
        if not self.options and list(self.values) != sorted(self.values):
            raise ValueError(f"axis {self.name}: the initial grid must ascend")


@dataclass(frozen=True)
class Space:
    """A method's search space: its axes, the parameters held fixed, and where the space comes from."""

    axes: tuple[Axis, ...] = ()
    fixed: dict = field(default_factory=dict)
    source: str = ""

    def initial_grid(self) -> list[Setting]:
        numeric = [a for a in self.axes if not a.options]
        defaults = {a.name: a.values[0] for a in self.axes if a.options}
        return [{**self.fixed, **defaults, **dict(zip([a.name for a in numeric], combo, strict=True))}
                for combo in itertools.product(*(a.values for a in numeric))]


@dataclass
class Trial:
    setting: Setting
    score: float
    phase: str  # grid | edge | option | refine


@dataclass
class SearchResult:
    best: Setting
    best_score: float
    trials: list[Trial]
    budget: int
    open_edges: list[str]  # numeric axes whose best value was still at an extendable edge at the end

    @property
    def used(self) -> int:
        return len(self.trials)


Evaluate = Callable[[list[Setting]], list[float]]


def _key(setting: Setting) -> tuple:
    return tuple(sorted((k, _round(v)) for k, v in setting.items()))


def _round(v):
    return float(f"{v:.6g}") if isinstance(v, float) else v


def _score(value: float) -> float:
    return -math.inf if value is None or math.isnan(value) else value


class _State:
    def __init__(self, space: Space):
        self.space = space
        self.trials: list[Trial] = []
        self.seen: set[tuple] = set()

    def add(self, settings: list[Setting], scores: Sequence[float], phase: str) -> None:
        if len(scores) != len(settings):
            raise ValueError(f"evaluate returned {len(scores)} scores for {len(settings)} settings")
        for s, v in zip(settings, scores, strict=True):
            self.trials.append(Trial(s, float(v), phase))
            self.seen.add(_key(s))

    def best(self) -> Trial:
        return max(self.trials, key=lambda t: _score(t.score))  # max keeps the first of equal scores

    def line(self, best: Setting, axis: Axis) -> dict[float, float]:
        """Explored values of `axis` with every other parameter at `best`'s -> their best score."""
        out: dict[float, float] = {}
        for t in self.trials:
            if all(t.setting[k] == v for k, v in best.items() if k != axis.name):
                v = t.setting[axis.name]
                out[v] = max(out.get(v, -math.inf), _score(t.score))
        return out

    def fresh(self, setting: Setting) -> bool:
        return _key(setting) not in self.seen


def _outward(axis: Axis, values: list[float], up: bool) -> float | None:
    """One step past the end of the explored `values` (ascending), within the axis's domain. The step is
    the last explored spacing at that end, or the initial grid's when the line has one point."""
    edge = values[-1] if up else values[0]
    if len(values) > 1:
        ref = values[-2] if up else values[1]
    else:
        grid = sorted(axis.values)
        if len(grid) < 2:
            return None
        a, b = (grid[-2], grid[-1]) if up else (grid[1], grid[0])
        ref = edge * a / b if axis.log else edge - (b - a)
    if axis.log:
        if edge <= 0 or ref <= 0:
            return None
        new = edge * edge / ref
    else:
        new = 2 * edge - ref
    bound, is_open = (axis.hi, axis.hi_open) if up else (axis.lo, axis.lo_open)
    if bound is not None:
        beyond = new > bound if up else new < bound
        if beyond or (is_open and new == bound):
            if not is_open and edge != bound:
                new = bound
            else:
                new = math.sqrt(edge * bound) if axis.log and bound > 0 else (edge + bound) / 2
    if abs(new - edge) <= MIN_GAP * max(abs(edge), 1e-12) or (new <= edge if up else new >= edge):
        return None
    return _round(new)


def _midpoint(axis: Axis, a: float, b: float) -> float | None:
    mid = math.sqrt(a * b) if axis.log and a > 0 and b > 0 else (a + b) / 2
    if abs(b - a) <= 2 * MIN_GAP * max(abs(a), abs(b), 1e-12):
        return None
    return _round(mid)


def _numeric_lines(state: _State, best: Setting):
    """(axis, explored values → best score, those values ascending) for each numeric axis through `best`."""
    for axis in state.space.axes:
        if not axis.options:
            line = state.line(best, axis)
            yield axis, line, sorted(line)


def _edge_candidates(state: _State, best: Setting) -> list[Setting]:
    out = []
    for axis, _, values in _numeric_lines(state, best):
        for up in (True, False):
            if best[axis.name] == (values[-1] if up else values[0]):
                new = _outward(axis, values, up)
                if new is not None:
                    out.append({**best, axis.name: new})
    return out


def _option_candidates(state: _State, best: Setting) -> list[Setting]:
    return [{**best, a.name: value} for a in state.space.axes if a.options for value in a.values
            if value != best[a.name]]


def _refine_candidates(state: _State, best: Setting) -> list[Setting]:
    out = []
    for axis, line, values in _numeric_lines(state, best):
        v = best[axis.name]
        i = values.index(v)
        neighbours = [values[j] for j in (i - 1, i + 1) if 0 <= j < len(values)]
        for n in sorted(neighbours, key=lambda n: -line[n]):
            mid = _midpoint(axis, min(n, v), max(n, v))
            if mid is not None:
                out.append({**best, axis.name: mid})
    return out


def open_edges(state: _State, best: Setting) -> list[str]:
    """Numeric axes along which the best setting still sits at an extendable end of what was explored."""
    return sorted({name for c in _edge_candidates(state, best) for name, v in c.items() if v != best.get(name)})


def adaptive_search(space: Space, evaluate: Evaluate, budget: int) -> SearchResult:
    """Search `space` with at most `budget` calls' worth of settings scored by `evaluate` (a batch of
    settings -> their validation scores, higher is better); see the module docstring for the rule."""
    grid = space.initial_grid()
    if budget < len(grid):
        raise ValueError(f"budget {budget} is smaller than the initial grid ({len(grid)} settings)")
    state = _State(space)
    state.add(grid, evaluate(grid), "grid")
    while len(state.trials) < budget:
        best = state.best().setting
        for phase, candidates in (("edge", _edge_candidates), ("option", _option_candidates),
                                  ("refine", _refine_candidates)):
            fresh = [c for c in candidates(state, best) if state.fresh(c)]
            if fresh:
                state.add(fresh[:1], evaluate(fresh[:1]), phase)
                break
        else:
            break  # nothing left to try
    best = state.best()
    return SearchResult(best=best.setting, best_score=best.score, trials=state.trials, budget=budget,
                        open_edges=open_edges(state, best.setting))
