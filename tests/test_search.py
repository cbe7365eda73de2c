"""Equal-budget adaptive search (evaluation/search.py) and the published merge search spaces
(evaluation/merge_spaces.py): the exact sequence of evaluations on hand-traced cases, edge extension within
domain bounds, options, refinement, budgets, and every space valid for its method."""

from __future__ import annotations

import pytest

from fakemerge.evaluation.merge_spaces import BUDGET, MERGE_SPACES
from fakemerge.evaluation.search import Axis, Space, adaptive_search


def _scorer(f, log=None):
    def evaluate(settings):
        if log is not None:
            log.append([dict(s) for s in settings])
        return [f(s) for s in settings]
    return evaluate


def test_one_axis_extends_past_the_edge_then_refines_exact_sequence():
    space = Space((Axis("x", (0.1, 0.2, 0.3), lo=0.0, lo_open=True),))
    calls = []
    result = adaptive_search(space, _scorer(lambda s: -(s["x"] - 0.47) ** 2, calls), budget=7)
    assert calls[0] == [{"x": 0.1}, {"x": 0.2}, {"x": 0.3}]  # the grid, in one batch
    # best at the upper edge and still rising: 0.4, 0.5; then 0.6 (falls), then midpoints around 0.5
    assert [c[0]["x"] for c in calls[1:]] == [0.4, 0.5, 0.6, 0.45]
    assert [t.phase for t in result.trials] == ["grid"] * 3 + ["edge"] * 3 + ["refine"]
    assert result.best == {"x": 0.45} and result.used == 7 and result.open_edges == []


def test_budget_spent_at_an_edge_is_reported_open():
    space = Space((Axis("x", (1.0, 2.0)),))
    result = adaptive_search(space, _scorer(lambda s: s["x"]), budget=4)
    assert [t.setting["x"] for t in result.trials] == [1.0, 2.0, 3.0, 4.0]
    assert result.open_edges == ["x"]  # validation was still rising when the budget ran out


def test_extension_halves_towards_an_open_bound_and_stops_at_a_closed_one():
    down = Space((Axis("d", (0.1, 0.2, 0.3), lo=0.0, hi=1.0, lo_open=True),))
    result = adaptive_search(down, _scorer(lambda s: -s["d"]), budget=6)
    assert [t.setting["d"] for t in result.trials][3:] == [0.05, 0.025, 0.0125]  # never 0 itself
    up = Space((Axis("d", (0.8, 0.9), hi=1.0),))
    result = adaptive_search(up, _scorer(lambda s: s["d"]), budget=6)
    assert [t.setting["d"] for t in result.trials] == [0.8, 0.9, 1.0, 0.95, 0.975, 0.9875]  # bound, refine
    assert result.open_edges == []  # the best sits on the closed bound: nothing to extend
    tight = Space((Axis("d", (1.0, 1.001), hi=1.001),))
    result = adaptive_search(tight, _scorer(lambda s: s["d"]), budget=6)
    assert result.used == 2  # nothing worth evaluating was left: the budget is not filled with noise


def test_geometric_axis_steps_by_ratio():
    space = Space((Axis("r", (0.05, 0.1), lo=0.0, lo_open=True, log=True),))
    result = adaptive_search(space, _scorer(lambda s: -s["r"]), budget=4)
    assert [t.setting["r"] for t in result.trials] == [0.05, 0.1, 0.025, 0.0125]


def test_options_after_edges_then_refinement_from_the_new_best():
    space = Space((Axis("a", (0.4, 0.6, 0.8)), Axis("flag", (False, True), options=True)), fixed={"k": 1})
    score = {False: 0.0, True: 1.0}

    def f(s):
        return score[s["flag"]] - (s["a"] - 0.6) ** 2

    result = adaptive_search(space, _scorer(f), budget=6)
    settings = [t.setting for t in result.trials]
    assert settings[:3] == [{"k": 1, "flag": False, "a": a} for a in (0.4, 0.6, 0.8)]
    assert settings[3] == {"k": 1, "flag": True, "a": 0.6} and result.trials[3].phase == "option"
    # a one-point line along `a` for flag=True: extension by the grid spacing on both sides
    assert settings[4:] == [{"k": 1, "flag": True, "a": 0.8}, {"k": 1, "flag": True, "a": 0.4}]
    assert result.best == {"k": 1, "flag": True, "a": 0.6}


def test_ties_keep_the_first_evaluated_and_nan_never_wins():
    space = Space((Axis("x", (1.0, 2.0, 3.0)),))
    result = adaptive_search(space, _scorer(lambda s: float("nan") if s["x"] == 3.0 else 0.5), budget=3)
    assert result.best == {"x": 1.0}


def test_parameter_free_space_and_bad_budgets():
    result = adaptive_search(Space(), _scorer(lambda s: 0.7), budget=16)
    assert result.used == 1 and result.best == {}
    with pytest.raises(ValueError, match="budget"):
        adaptive_search(Space((Axis("x", (1.0, 2.0, 3.0)),)), _scorer(lambda s: 0), budget=2)
    with pytest.raises(ValueError, match="ascend"):
        Axis("x", (2.0, 1.0))


def test_every_merge_method_has_a_valid_space_that_fits_the_budget():
    from fakemerge.merging import METHODS, resolve_params

    assert set(MERGE_SPACES) == set(METHODS)  # a new merge method needs its search space
    for name, space in MERGE_SPACES.items():
        grid = space.initial_grid()
        assert len(grid) <= BUDGET, name
        for setting in grid:
            resolve_params(name, setting)  # every axis is a parameter of the method, in its domain
        for axis in space.axes:
            if axis.options:
                assert axis.values[0] == resolve_params(name, {})[axis.name], f"{name}.{axis.name} default first"
