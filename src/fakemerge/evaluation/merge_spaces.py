"""The published search space of every merge method, tuned on validation with one budget for all.

Each space is what the method's paper or reference code searches on held-out data, sub-sampled to a grid
that leaves part of the budget for `evaluation.search.adaptive_search` (edge extension, options,
refinement). Every method gets the same BUDGET of validation evaluations; `average` has no parameter and
takes one. Sources (read from the code where there is code):
- task arithmetic: λ from 0.1 to 1.0 in steps of 0.1 (ties-merging README "all lambda values between 0
  and 1 in increments of 0.1"; Ilharco et al. 2023 search 0.05-spaced values on validation).
- TIES: top-k 20 % (k ∈ {10, 20, 30} %), disjoint mean, λ linear from 0.8 to 2.5 (ties-merging README:
  `topk20`, `dis-mean`, `linear+0.8+2.51+0.1`).
- DARE: drop rate ∈ {0.1, 0.3, 0.5, 0.7, 0.9} on top of task arithmetic with λ ∈ {0.1, 0.3, ..., 1.0}
  (MergeLM `merge_plms_glue.py`).
- TSV-M, Iso-C, Iso-CTS: α on linspace(0, 3, 31)[1:] (task_singular_vectors and iso-merging
  `src/eval/eval.py`); Iso-CTS's common-space fraction 0.8 as in iso-merging's config.
- CART: rank ratio × λ around its defaults (the grid of R²M's residual rank, CART's descendant).
- R²M: r ∈ {0.05, 0.1, 0.2} × α ∈ {0.4, 0.6, 0.8} (the paper's grid) and its four open choices.
"""

from __future__ import annotations

from fakemerge.evaluation.search import Axis, Space

BUDGET = 16  # validation evaluations per method (R²M's grid and its six options need 15)


def _steps(start: float, stop: float, step: float) -> tuple[float, ...]:
    n = round((stop - start) / step)
    return tuple(round(start + i * step, 6) for i in range(n + 1))


SCALE_01 = Axis("scaling", _steps(0.1, 1.0, 0.1), lo=0.0, lo_open=True)
ALPHA_03 = _steps(0.3, 3.0, 0.3)

MERGE_SPACES: dict[str, Space] = {
    "average": Space(source="no parameters"),
    "task_arithmetic": Space((SCALE_01,), source="λ 0.1-1.0 step 0.1 (ties-merging README; Ilharco et al. 2023)"),
    "ties": Space((Axis("density", (0.1, 0.2, 0.3), lo=0.0, hi=1.0, lo_open=True),
                   Axis("scaling", (0.8, 1.4, 2.0), lo=0.0, lo_open=True)),
                  fixed={"merge_func": "mean"},
                  source="top-k {10,20,30} %, disjoint mean, λ 0.8-2.5 (ties-merging README)"),
    "dare": Space((Axis("drop_rate", (0.1, 0.5, 0.9), lo=0.0, hi=1.0, hi_open=True),
                   Axis("scaling", (0.1, 0.5, 0.9), lo=0.0, lo_open=True)),
                  source="drop {0.1,…,0.9} × TA λ {0.1,…,1.0} (MergeLM merge_plms_glue.py)"),
    "tsv": Space((Axis("alpha", ALPHA_03, lo=0.0, lo_open=True),),
                 source="α on linspace(0, 3, 31) (task_singular_vectors src/eval/eval.py)"),
    "iso_c": Space((Axis("scaling", ALPHA_03, lo=0.0, lo_open=True),),
                   source="α on linspace(0, 3, 31) (iso-merging src/eval/eval.py)"),
    "iso_cts": Space((Axis("scaling", ALPHA_03, lo=0.0, lo_open=True),), fixed={"common_fraction": 0.8},
                     source="α on linspace(0, 3, 31), common fraction 0.8 (iso-merging)"),
    "cart": Space((Axis("rank_ratio", (0.05, 0.1, 0.2), lo=0.0, hi=1.0, lo_open=True, log=True),
                   Axis("scaling", (0.5, 1.0, 1.5), lo=0.0, lo_open=True)),
                  source="rank ratio × λ around the defaults"),
    "r2m": Space((Axis("rank_ratio", (0.05, 0.1, 0.2), lo=0.0, hi=1.0, lo_open=True, log=True),
                  Axis("alpha", (0.4, 0.6, 0.8), lo=0.0),
                  Axis("center", (False, True), options=True),
                  Axis("block_norm", ("none", "balanced"), options=True),
                  Axis("residual", ("subtract", "orthogonal"), options=True),
                  Axis("eta", ("script", "relative"), options=True),
                  Axis("rank_round", ("up", "down"), options=True),
                  Axis("norm_of", ("truncated", "residual"), options=True)),
                 source="r {0.05,0.1,0.2} × α {0.4,0.6,0.8} (Park et al.) + center, block_norm, residual, eta, "
                        "rank_round, norm_of"),
}

# R²M's open choices, each measured at the selected setting beside it (validation and test; outside the
# tuning budget, as diagnostics): centering with each η mode, the residual rank rounded down as CART's code
# does, and the norms m_i measured on the whole residual instead of its truncation.
R2M_CHOICES: dict[str, dict] = {
    "center": {"center": True, "eta": "script"},
    "center-eta_relative": {"center": True, "eta": "relative"},
    "eta_relative": {"center": False, "eta": "relative"},
    "rank_round_down": {"rank_round": "down"},
    "norm_of_residual": {"norm_of": "residual"},
}
