"""Recipes in fakemerge's and mergekit's spelling: per-model weights and densities change the merge exactly as
the recorded formula says, FusionBench's parameter names, the base listed among models, dtype, and errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_merge_cli import run
from test_merge_engine import backbone_of, make_specialist

from fakemerge.errors import InputError
from fakemerge.io.safetensors import tensors_sha256
from fakemerge.keys import HEAD_KEYS, PREFIX
from fakemerge.merging import merge, merge_iter
from fakemerge.merging.engine import merge_files
from fakemerge.merging.recipe import Recipe, load_recipe, recipe_from_args, recipe_from_merged
from fakemerge.models.backbone import backbone_state
from fakemerge.models.detector import read_meta
from fakemerge.models.loading import load_base


@pytest.fixture(scope="module")
def specs(tiny_base, tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("recipe_specs")
    return [make_specialist(tiny_base, d / f"{f}.safetensors", i, f) for i, f in enumerate(["FS", "FR", "EFS"])]


@pytest.fixture(scope="module")
def taus(tiny_base, specs) -> tuple[dict, list[dict]]:
    base = backbone_state(load_base(tiny_base)[0])
    return base, [{k: backbone_of(p)[k] - base[k] for k in base} for p in specs]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def mergekit_recipe(tmp_path, tiny_base, specs, method: str, params: str, models: list[str]) -> Path:
    rel = [os.path.relpath(p, tmp_path) for p in specs]
    lines = [f"merge_method: {method}", f"base_model: {tiny_base}", "dtype: float32", "models:",
             f"  - model: {tiny_base}"]  # mergekit users list the base too
    lines += [f"  - model: {r}\n    parameters: {m}" if m else f"  - model: {r}" for r, m in zip(rel, models,
                                                                                           strict=True)]
    return write(tmp_path / "recipe.yaml", "\n".join([*lines, f"parameters: {params}", "out: m.safetensors"]))


def test_mergekit_task_arithmetic_weights_are_applied_as_the_formula_says(tiny_base, specs, taus, tmp_path):
    path = mergekit_recipe(tmp_path, tiny_base, specs, "task_arithmetic", "{scaling_factor: 0.5}",
                           ["{weight: 1.0}", "{weight: 0.0}", "{weight: -0.25}"])
    recipe = load_recipe(path)
    assert recipe.notes and "used as the base" in recipe.notes[0] and len(recipe.models) == 3
    result = merge_files(recipe)
    assert result.meta.recipe["formula"] == "θ0 + 0.5·(τ1 + 0·τ2 − 0.25·τ3)"
    base, tau = taus
    got = backbone_of(result.out)
    for k in base:  # the weight-0 specialist contributes nothing, and nothing else changed
        expected = base[k] + 0.5 * (tau[0][k] - 0.25 * tau[2][k])
        assert torch.allclose(got[k], expected, atol=1e-6), k
    assert [m.get("parameters") for m in result.meta.recipe["models"]] == \
        [{"weight": 1.0}, {"weight": 0.0}, {"weight": -0.25}]
    unweighted = merge_files(Recipe("task_arithmetic", str(tiny_base), list(map(str, specs)), {"scaling": 0.5}),
                             tmp_path / "plain.safetensors")
    assert not all(torch.equal(got[k], backbone_of(unweighted.out)[k]) for k in base)


def test_weighted_average_and_dare(tiny_base, specs, taus, tmp_path):
    base, tau = taus
    avg = merge_files(Recipe("average", str(tiny_base), list(map(str, specs)), weights=[2.0, 1.0, None]),
                      tmp_path / "avg.safetensors")
    assert avg.meta.recipe["formula"] == "θ0 + (2·τ1 + τ2 + τ3)/4"
    got = backbone_of(avg.out)
    assert all(torch.allclose(got[k], base[k] + (2 * tau[0][k] + tau[1][k] + tau[2][k]) / 4, atol=1e-6)
               for k in base)
    kept = merge_files(Recipe("dare", str(tiny_base), list(map(str, specs)), {"scaling": 1.0},
                              weights=[0.5, 1.0, 0.0], densities=[1.0, 1.0, 1.0]), tmp_path / "dare.safetensors")
    assert kept.meta.recipe["formula"].startswith("θ0 + 1·(0.5·dare0%(τ1) + dare0%(τ2) + 0·dare0%(τ3))")
    got = backbone_of(kept.out)  # density 1 keeps every entry: weighted task arithmetic
    assert all(torch.allclose(got[k], base[k] + 0.5 * tau[0][k] + tau[1][k], atol=1e-6) for k in base)


def test_ties_weights_and_densities_by_hand():
    base = {"a": torch.zeros(2), "b": torch.zeros(2)}
    specs = [{"a": torch.tensor([3.0, -1.0]), "b": torch.tensor([0.5, 2.0])},
             {"a": torch.tensor([-2.0, -4.0]), "b": torch.tensor([1.0, 0.1])}]
    # density 1 for task 1 (keeps all 4), 0.5 for task 2 (drops 0.1): weighted 2·τ1 and 1·trim(τ2):
    # a: [6, -2] + [-2, -4] → signs [+, -] → sum [6, -6], mean over agreeing weights [6/2, -6/3]
    # b: [1, 4] + [1, 0] → signs [+, +] → sum [2, 4], mean [2/3, 4/2]
    for func, a, b in (("sum", [6.0, -6.0], [2.0, 4.0]), ("mean", [3.0, -2.0], [2 / 3, 2.0]),
                       ("max", [6.0, -4.0], [1.0, 4.0])):
        run = merge_iter("ties", base, specs, weights=[2.0, 1.0], densities=[1.0, 0.5], scaling=1.0,
                         merge_func=func)
        out = dict(run)
        assert torch.allclose(out["a"], torch.tensor(a)) and torch.allclose(out["b"], torch.tensor(b)), func
        assert run.formula == f"θ0 + 1·ties_{func}(2·top100%(τ1), top50%(τ2))"


def test_r2m_weights_scale_each_residual_after_norm_matching():
    g = torch.Generator().manual_seed(0)
    base = {"encoder.layers.0.mlp.fc1.weight": torch.randn(8, 6, generator=g, dtype=torch.float64),
            "encoder.layers.0.mlp.fc1.bias": torch.randn(8, generator=g, dtype=torch.float64)}
    specs = [{k: v + 0.1 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in base.items()}
             for _ in range(3)]
    plain = merge_iter("r2m", base, specs, rank_ratio=0.5)
    same = merge_iter("r2m", base, specs, rank_ratio=0.5, weights=[1.0, 1.0, 1.0])
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(plain, same, strict=True))
    weighted = merge_iter("r2m", base, specs, rank_ratio=0.5, weights=[1.0, 0.0, 2.0])
    out = dict(weighted)
    core_only = dict(merge_iter("r2m", base, specs, rank_ratio=0.5, alpha=0.0))
    d, p = weighted.diagnostics, plain.diagnostics
    residual = {k: (out[k] - core_only[k]) / d["r2m_eta"] for k in base}  # (1/N) Σ wi (m̄/mi) τiᶠ
    parts = [dict(merge_iter("r2m", base, specs, rank_ratio=0.5, weights=w, alpha=1.0)) for w in
             ([1.0, 0.0, 0.0], [0.0, 0.0, 1.0])]
    eta1 = merge_iter("r2m", base, specs, rank_ratio=0.5, alpha=1.0, weights=[1.0, 0.0, 0.0])
    dict(eta1)
    scale = eta1.diagnostics["r2m_eta"]  # η does not depend on the weights with eta="script"
    for k in base:
        by_parts = ((parts[0][k] - core_only[k]) + 2 * (parts[1][k] - core_only[k])) / scale
        assert torch.allclose(residual[k], by_parts, atol=1e-10)
    assert d["r2m_norm_weights"] == p["r2m_norm_weights"]  # m̄/mi: the norm matching itself is unchanged
    assert "m̄/m1·τ1ᶠ + 0·m̄/m2·τ2ᶠ + 2·m̄/m3·τ3ᶠ" in weighted.formula


def test_stored_recipe_keeps_weights_dtype_and_formula_for_add(tiny_base, specs, tmp_path):
    first = merge_files(Recipe("ties", str(tiny_base), list(map(str, specs[:2])), {"threshold": 0.5},
                               weights=[1.0, 0.5], dtype="bfloat16"), tmp_path / "two.safetensors")
    tensors = load_file(str(first.out))
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    stored = read_meta(first.out).recipe
    assert stored["dtype"] == "bfloat16" and stored["parameters"]["density"] == 0.5
    assert stored["formula"] == "θ0 + 0.3·ties_sum(top50%(τ1), 0.5·top50%(τ2))"
    again = recipe_from_merged(first.out)
    assert again.weights == [1.0, 0.5] and again.dtype == "bfloat16"
    again.add([specs[2]])
    assert again.weights == [1.0, 0.5, None]
    added = merge_files(again, tmp_path / "three.safetensors")
    assert added.meta.recipe["formula"] == "θ0 + 0.3·ties_sum(top50%(τ1), 0.5·top50%(τ2), top50%(τ3))"


def test_command_line_wins_over_the_recipe_which_wins_over_the_stored_one(tiny_base, specs, tmp_path):
    path = write(tmp_path / "r.yaml", f"method: ties\nbase: {tiny_base}\nmodels: [{specs[0]}, {specs[1]}]\n"
                                      "parameters: {density: 0.5}\ndtype: float16\nout: r.safetensors\n")
    recipe = recipe_from_args([str(path)], params={"scaling": 1.0}, dtype="bfloat16", out=tmp_path / "x.st")
    assert recipe.parameters == {"density": 0.5, "scaling": 1.0} and recipe.dtype == "bfloat16"
    assert recipe.out == str(tmp_path / "x.st")
    other = recipe_from_args([str(path)], method="task_arithmetic")  # another method: the ties settings go
    assert other.method == "task_arithmetic" and other.parameters == {} and other.out == str(tmp_path / "r.safetensors")
    with pytest.raises(InputError, match="--dtype int8"):
        recipe_from_args([str(path)], dtype="int8")


@pytest.mark.parametrize("text, message", [
    ("merge_method: ties\nmethod: ties\nbase: b\nmodels: [a]\n", "exactly one of 'method' and 'merge_method'"),
    ("merge_method: linear\nbase_model: b\nmodels: [a]\n", "mergekit's linear is fakemerge's average"),
    ("merge_method: slerp\nbase_model: b\nmodels: [a]\n", "slerp has no fakemerge counterpart"),
    ("method: ties\nbase: b\nmodels: [{model: a, parameters: {epsilon: 0.1}}]\n",
     r"models\.0\.parameters\.epsilon: Extra inputs are not permitted"),
    ("method: ties\nbase: b\nmodels: [{model: a, parameters: {weight: yes}}]\n", r"models\.0\.parameters\.weight"),
    ("method: ties\nbase: b\nmodels: [a]\ndtype: int8\n", "dtype"),
    ("method: ties\nbase: b\nmodels: [{model: b, parameters: {weight: 1}}, a]\n", "listed among models with"),
    ("method: ties\nbase: b\nmodels: [b]\n", "only the base"),
    ("method: ties\nbase: b\nmodels: [a]\nnormalize: true\n", "normalize: Extra inputs"),
])
def test_recipe_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(InputError, match=message):
        load_recipe(write(tmp_path / "r.yaml", text))


def test_weights_where_they_are_not_defined_and_unknown_parameters_are_errors(tiny_base, specs, tmp_path):
    for recipe, message in [
        (Recipe("tsv", str(tiny_base), list(map(str, specs[:2])), weights=[1.0, 2.0]), "per-model weight is not"),
        (Recipe("iso_c", str(tiny_base), list(map(str, specs[:2])), densities=[0.5, 0.5]), "per-model density"),
        (Recipe("ties", str(tiny_base), list(map(str, specs[:2])), {"normalize": True}), "unknown parameter"),
    ]:
        with pytest.raises(InputError, match=message):
            merge_files(recipe, tmp_path / "never.safetensors")
    assert not (tmp_path / "never.safetensors").exists()


def test_cli_merges_a_mergekit_recipe_and_prints_the_formula(tiny_base, specs, tmp_path, capsys):
    path = mergekit_recipe(tmp_path, tiny_base, specs, "ties", "{threshold: 0.5}",
                           ["{weight: 1.0, density: 0.8}", "{weight: 0.5}", ""])
    assert run("merge", path, "--dtype", "float16") == 0
    captured = capsys.readouterr()
    assert "θ0 + 0.3·ties_sum(top80%(τ1), 0.5·top50%(τ2), top50%(τ3))" in captured.out.replace("\n", "")
    assert "used as the base" in captured.err
    out = tmp_path / "m.safetensors"
    assert load_file(str(out))[f"{PREFIX}encoder.layers.0.mlp.fc1.weight"].dtype == torch.float16
    in_memory = merge("ties", backbone_state(load_base(tiny_base)[0]), [backbone_of(p) for p in specs],
                      weights=[1.0, 0.5, None], densities=[0.8, None, None], density=0.5,
                      fingerprints=[tensors_sha256({k: load_file(str(p))[k] for k in HEAD_KEYS}) for p in specs])
    got = backbone_of(out)
    assert all(torch.equal(got[k], v.half()) for k, v in in_memory.items())
