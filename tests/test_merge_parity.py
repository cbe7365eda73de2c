"""Our merges against FusionBench 0.2.33's on a committed fixture (tests/fixtures/make_fusionbench_fixture.py
regenerates it in a venv with fusion-bench): parity ≤ 1e-4 of the merged update on full-rank task vectors,
including a sum that is ill-conditioned; on low-rank ones, against the documented low-rank rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from fakemerge.merging import merge

FIXTURE = Path(__file__).parent / "fixtures" / "fusionbench_0.2.33.safetensors"
PARITY = 1e-4  # of ‖θ_reference − θ0‖, per tensor


def load() -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(FIXTURE), "pt") as f:
        for name in f.keys():  # noqa: SIM118 -- safe_open has no __iter__
            case_group, _, key = name.rpartition("/")
            groups.setdefault(case_group, {})[key] = f.get_tensor(name)
        outputs = json.loads(f.metadata()["outputs"])
    return groups, outputs


GROUPS, OUTPUTS = load()
CASES = sorted({k.split("/")[0] for k in GROUPS})
COMPARED = [(case, kind, out) for case in CASES for kind in ("fb", "ref") for out in OUTPUTS
            if f"{case}/{kind}/{out}" in GROUPS]


def inputs(case: str) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    specs = sorted(k for k in GROUPS if k.startswith(f"{case}/spec"))
    return GROUPS[f"{case}/base"], [GROUPS[s] for s in specs]


def worst_error(ours: dict, reference: dict, base: dict) -> tuple[float, str]:
    """Largest ‖ours − reference‖ / ‖reference − θ0‖ over tensors; where the reference changed a tensor by
    float32 rounding only (an unchanged fc2 of the low-rank case), ours may only change it by rounding too."""
    worst, where = 0.0, ""
    for key, ref in reference.items():
        theta0 = base[key].double()
        update = float((ref.double() - theta0).norm())
        rounding = 10 * torch.finfo(torch.float32).eps * float(theta0.norm())
        err = float((ours[key].double() - ref.double()).norm())
        if update <= rounding:
            err, update = float((ours[key].double() - theta0).norm()), rounding / PARITY
        rel = err / update if update > 0 else (0.0 if err == 0 else float("inf"))
        if rel > worst:
            worst, where = rel, key
    return worst, where


def test_the_fixture_covers_every_case():
    assert CASES == ["full", "illcond", "lowrank", "mixed"]
    assert {out for case, kind, out in COMPARED if case == "full"} == set(OUTPUTS)
    elementwise = {("fb", "average"), ("fb", "task_arithmetic"), ("fb", "ties"), ("fb", "ties_mean"),
                   ("fb", "ties_max")}
    svd = {("ref", "tsv"), ("ref", "iso_c"), ("ref", "iso_cts_tasks")}
    assert {(kind, out) for c, kind, out in COMPARED if c == "lowrank"} == elementwise | svd | {("ref", "iso_cts")}
    assert {(kind, out) for c, kind, out in COMPARED if c == "mixed"} == elementwise | svd
    base, specs = inputs("illcond")
    key = "encoder.layers.0.mlp.fc1.weight"
    sv = torch.linalg.svdvals(sum(s[key] - base[key] for s in specs))
    assert float(sv[-1] / sv[0]) < max(sv.shape[0], 16) * torch.finfo(torch.float32).eps  # the case


@pytest.mark.parametrize("case, kind, output", COMPARED, ids=["/".join(c) for c in COMPARED])
def test_matches_the_reference(case, kind, output):
    method, params = OUTPUTS[output]
    base, specs = inputs(case)
    reference = GROUPS[f"{case}/{kind}/{output}"]
    ours = merge(method, base, specs, **params)
    worst, where = worst_error(ours, reference, base)
    assert worst <= PARITY, f"{where}: {worst:.2e}"


@pytest.mark.parametrize("output", ["tsv", "iso_c", "iso_cts"])
def test_fusionbench_arithmetic_is_forced_by_lowrank_fusionbench(output):
    """On full-rank inputs both settings are FusionBench's arithmetic; on low-rank ones the rule differs."""
    method, params = OUTPUTS[output]
    for case, differs in (("illcond", False), ("lowrank", True)):
        base, specs = inputs(case)
        auto = merge(method, base, specs, **params)
        forced = merge(method, base, specs, lowrank="fusionbench", **params)
        worst, _ = worst_error(forced, auto, base)
        assert (worst > 1e-2) == differs, (case, worst)
