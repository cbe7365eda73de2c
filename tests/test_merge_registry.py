"""The method registry and the one driver: declared parameters, prepare → plan → delta, pass-through, report."""

from __future__ import annotations

import pytest
import torch

from fakemerge.errors import InputError
from fakemerge.merging import METHODS, merge, merge_iter, method_defaults, resolve_params
from fakemerge.merging.registry import Plan, choice, flag, integer, merge_method, number


@pytest.fixture
def registered():
    """Registers methods for one test and removes them afterwards."""
    before = set(METHODS)
    yield
    for name in set(METHODS) - before:
        del METHODS[name]


def FORMULA(p, n, weights, densities):  # noqa: N802 -- a constant-like stand-in
    return "θ0 + toy(τ1…τn)"


class Offset(Plan):
    def __init__(self, total: float):
        self.total = total

    def diagnostics(self, per_task) -> dict:
        return {"toy_total": self.total}


def test_a_method_is_one_decorated_function(registered):
    seen_grams = {}

    def prepare(stream, grams, shift):
        seen_grams.update(grams)
        return Offset(sum(float(stream.stacked(k).sum()) for k in stream.float_keys()) + shift)

    @merge_method("toy", prepare=prepare, shift=number(1.0), double=flag(False), formula=FORMULA)
    def toy(key, taus, plan, double):
        """Mean task vector plus the plan's total (a method made for this test)."""
        return taus.mean(0) * (2 if double else 1) + plan.total

    base = {"w": torch.zeros(2), "ids": torch.arange(3), "h": torch.zeros(1, dtype=torch.float16)}
    specs = [{"w": torch.tensor([1.0, 3.0]), "ids": torch.arange(3) + 7, "h": torch.ones(1, dtype=torch.float16)},
             {"w": torch.tensor([3.0, 5.0]), "ids": torch.arange(3), "h": torch.ones(1, dtype=torch.float16)}]
    assert method_defaults("toy") == {"shift": 1.0, "double": False}
    assert METHODS["toy"].doc.startswith("Mean task vector") and METHODS["toy"].grams
    run = merge_iter("toy", base, specs, double=True)
    out = dict(run)
    total = 1 + 3 + 3 + 5 + 2 + 1.0  # every float entry of every task vector, plus shift
    assert torch.equal(out["w"], torch.tensor([4.0, 8.0]) + total)
    assert torch.equal(out["ids"], base["ids"])  # integer tensors pass through from the base
    assert out["h"].dtype == torch.float16 and float(out["h"]) == 2 + total
    assert run.diagnostics["toy_total"] == total
    assert run.diagnostics["task_norms"] == pytest.approx([(1 + 9 + 1) ** 0.5, (9 + 25 + 1) ** 0.5])
    assert torch.equal(run.gram, torch.tensor([[11.0, 19.0], [19.0, 35.0]], dtype=torch.float64))  # given order
    assert set(seen_grams) == {"w", "h"}
    assert sorted(sum(seen_grams.values()).diagonal().tolist()) == [11.0, 35.0]  # the canonical order


def test_methods_without_prepare_get_the_gram_from_the_final_pass(registered):
    @merge_method("largest", formula=FORMULA)
    def largest(taus):
        """The largest task-vector entry (a method made for this test)."""
        return taus.amax(0)

    assert not METHODS["largest"].grams
    run = merge_iter("largest", {"w": torch.zeros(2)}, [{"w": torch.tensor([3.0, 4.0])}, {"w": torch.ones(2)}])
    with pytest.raises(RuntimeError, match="once every tensor"):
        run.diagnostics  # noqa: B018
    assert torch.equal(dict(run)["w"], torch.tensor([3.0, 4.0]))
    assert torch.equal(run.gram, torch.tensor([[25.0, 7.0], [7.0, 2.0]], dtype=torch.float64))


def test_declarations_are_checked_at_registration(registered):
    with pytest.raises(TypeError, match="unused"):
        merge_method("bad1", scale=number(1.0), formula=FORMULA)(lambda taus: taus[0])
    with pytest.raises(TypeError, match="undeclared"):
        merge_method("bad2", formula=FORMULA)(lambda taus, scale: taus[0])
    with pytest.raises(TypeError, match="duplicate"):
        merge_method("average", formula=FORMULA)(lambda taus: taus[0])
    with pytest.raises(TypeError, match="aliased but not declared"):
        merge_method("bad3", aliases={"factor": "scale"}, formula=FORMULA)(lambda taus: taus[0])
    assert not {"bad1", "bad2", "bad3"} & set(METHODS)


@pytest.mark.parametrize("param, good, bad", [
    (number(0.5, 0, 1, lo_open=True), [1, 0.5, 1e-9], [0, 1.5, True, "x", float("nan")]),
    (number(0.5, 0, 1, hi_open=True, also=("auto",)), [0, 0.99, "auto"], [1, "none", None]),
    (integer(0, 1), [1, 7], [0, 1.0, True]),
    (choice("sum", "sum", "max"), ["sum", "max"], ["mean", 1, None]),
    (flag(True), [True, False], [1, "true"]),
])
def test_parameter_rules(param, good, bad):
    assert all(param.check(v) for v in good) and not any(param.check(v) for v in bad)


def test_resolve_params_names_the_rule_and_takes_fusionbench_spellings():
    assert resolve_params("ties", {"density": 0.5})["density"] == 0.5
    assert resolve_params("ties", {"threshold": 0.5, "scaling_factor": 1.0}) | {"merge_func": "sum"} == \
        {"density": 0.5, "scaling": 1.0, "merge_func": "sum"}
    assert resolve_params("dare", {"sparsity_ratio": 0.3})["drop_rate"] == 0.3
    assert resolve_params("iso_cts", {"common_space_fraction": 0.5})["common_fraction"] == 0.5
    with pytest.raises(InputError, match="'density' given twice"):
        resolve_params("ties", {"density": 0.5, "threshold": 0.5})
    with pytest.raises(InputError, match=r"density=0 must be in \(0, 1\]"):
        resolve_params("ties", {"density": 0})
    with pytest.raises(InputError, match="unknown parameter 'dropout'"):
        resolve_params("ties", {"dropout": 0.1})
    with pytest.raises(InputError, match="choose from average, task_arithmetic"):
        merge("nope", {}, [{}])


def test_methods_see_one_canonical_order_and_report_in_the_given_one(registered):
    seen = []

    @merge_method("rows", formula=FORMULA)
    def rows(taus, fingerprints):
        """Records the order it sees (a method made for this test)."""
        seen.append(list(fingerprints))
        return taus[0] - taus[1]

    base = {"w": torch.zeros(1)}
    a, b = {"w": torch.tensor([1.0])}, {"w": torch.tensor([4.0])}
    one, two = merge_iter("rows", base, [a, b]), merge_iter("rows", base, [b, a])
    assert torch.equal(dict(one)["w"], dict(two)["w"]) and seen[0] == seen[1]
    assert one.diagnostics["task_norms"] == [1.0, 4.0] and two.diagnostics["task_norms"] == [4.0, 1.0]
    given = merge_iter("rows", base, [a, b], fingerprints=["z", "y"])  # the caller's content hashes
    assert float(dict(given)["w"]) == 3.0 and seen[-1] == ["y", "z"]


def test_per_model_values_are_checked_before_any_tensor():
    base, specs = {"w": torch.zeros(2)}, [{"w": torch.ones(2)}, {"w": -torch.ones(2)}]
    assert merge_iter("ties", base, specs, weights=[1, 0.5]).formula == \
        "θ0 + 0.3·ties_sum(top20%(τ1), 0.5·top20%(τ2))"
    assert merge_iter("ties", base, specs, densities=[None, 0.5]).formula == \
        "θ0 + 0.3·ties_sum(top20%(τ1), top50%(τ2))"
    for kwargs, message in [({"weights": [1.0]}, "1 per-model weights for 2"),
                            ({"weights": [1.0, float("nan")]}, "model 2: weight nan"),
                            ({"densities": [0.0, None]}, r"model 1: density 0.0 must be in \(0, 1\]")]:
        with pytest.raises(InputError, match=message):
            merge_iter("ties", base, specs, **kwargs)
    with pytest.raises(InputError, match="per-model weight is not defined for it"):
        merge_iter("tsv", base, specs, weights=[1, 2])
    with pytest.raises(InputError, match="per-model density is not defined"):
        merge_iter("task_arithmetic", base, specs, densities=[0.5, 0.5])
    with pytest.raises(InputError, match="weights sum to 0"):
        merge_iter("average", base, specs, weights=[1, -1])


def toy_models(n: int = 3):
    g = torch.Generator().manual_seed(0)
    shapes = {"encoder.layers.0.mlp.fc1.weight": (40, 24), "encoder.layers.0.mlp.fc1.bias": (40,),
              "encoder.layers.0.self_attn.q_proj.weight": (24, 24), "embeddings.position_embedding.weight": (5, 24)}
    base = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    return base, [{k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(n)]


@pytest.mark.parametrize("method", list(METHODS))
def test_results_do_not_depend_on_the_thread_count(method):
    """With several threads, keys run side by side (one thread each): the same bytes as one thread."""
    base, specs = toy_models()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = merge(method, base, specs)
        torch.set_num_threads(2)
        two = merge(method, base, specs)
        assert torch.get_num_threads() == 2  # restored after the merge
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(one[k], two[k]) for k in base)


def test_devices():
    from fakemerge.merging.registry import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for bad, message in (("meta", "merging runs on cpu or cuda"), ("gpu:x", "not a device")):
        with pytest.raises(InputError, match=message):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            resolve_device("cuda")
    base, specs = toy_models()
    assert all(torch.equal(a, b) for a, b in zip(merge("r2m", base, specs, device="cpu").values(),
                                                  merge("r2m", base, specs).values(), strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", list(METHODS))
def test_cuda_merges_equal_cpu_merges_within_the_parity_tolerance(method):
    base, specs = toy_models()
    cpu, cuda = merge(method, base, specs), merge(method, base, specs, device="cuda")
    for k in base:
        assert cuda[k].device.type == "cpu"
        update = float((cpu[k].double() - base[k].double()).norm())
        assert float((cuda[k].double() - cpu[k].double()).norm()) <= 1e-4 * max(update, 1e-12), k


def test_a_nan_or_inf_names_the_input_and_tensor():
    base, specs = toy_models(2)
    key = "encoder.layers.0.self_attn.q_proj.weight"
    bad = {**specs[1], key: specs[1][key].clone()}
    bad[key][3, 4] = float("inf")
    with pytest.raises(InputError, match=f"specialist 1: tensor {key} contains NaN or Inf"):
        merge("average", base, [specs[0], bad])
    nan_base = {**base, key: base[key].clone()}
    nan_base[key][0, 0] = float("nan")
    with pytest.raises(InputError, match=f"base: tensor {key} contains NaN"):
        merge("ties", nan_base, specs)
