"""Merge baselines: hand-computed tiny cases, invariants, validation, streaming = in-memory, low-rank rule."""

from __future__ import annotations

import math

import pytest
import torch

from fakemerge.errors import InputError
from fakemerge.merging import METHODS, merge, merge_iter, method_defaults
from fakemerge.merging.elementwise import keep_mask, ties_thresholds, zero_dropped
from fakemerge.merging.streams import TaskStream

FC = "encoder.layers.0.mlp.fc1.weight"
BIAS = "encoder.layers.0.mlp.fc1.bias"


def diag(*v: float) -> torch.Tensor:
    return torch.diag(torch.tensor(v, dtype=torch.float32))


def zeros_like_all(states: dict) -> dict:
    return {k: torch.zeros_like(v) for k, v in states.items()}


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return torch.allclose(a.double(), b.double(), atol=tol, rtol=tol)


def random_model(seed: int, scale: float = 1.0, prefix: str = "") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "embeddings.class_embedding": (8,),
        "embeddings.patch_embedding.weight": (8, 3, 2, 2),
        "embeddings.position_embedding.weight": (5, 8),
        "encoder.layers.0.self_attn.q_proj.weight": (8, 8),
        "encoder.layers.0.self_attn.q_proj.bias": (8,),
        "encoder.layers.0.layer_norm1.weight": (8,),
        FC: (16, 8),
        BIAS: (16,),
        "encoder.layers.0.mlp.fc2.weight": (8, 16),
        "post_layernorm.bias": (8,),
    }
    return {prefix + k: scale * torch.randn(s, generator=g) for k, s in shapes.items()}


def specialists_of(base: dict, n: int, scale: float = 0.1, seed: int = 1) -> list[dict]:
    return [{k: v + d for (k, v), d in zip(base.items(), random_model(seed + i, scale).values(), strict=True)}
            for i in range(n)]


# ---------------------------------------------------------------- hand-computed cases

def test_average_and_task_arithmetic_by_hand():
    base = {"w": torch.tensor([1.0, 1.0])}
    specs = [{"w": torch.tensor([2.0, 0.0])}, {"w": torch.tensor([4.0, 1.0])}]
    assert close(merge("average", base, specs)["w"], torch.tensor([3.0, 0.5]))
    # θ0 + s Σ τ = 1 + 0.5 · ([1, -1] + [3, 0])
    assert close(merge("task_arithmetic", base, specs, scaling=0.5)["w"], torch.tensor([3.0, 0.5]))
    assert close(merge("task_arithmetic", base, specs)["w"], torch.tensor([1 + 0.3 * 4, 1 - 0.3]))


def test_ties_trims_over_the_whole_model_then_elects_and_merges_disjointly():
    base = {"a": torch.zeros(2), "b": torch.zeros(2)}
    specs = [{"a": torch.tensor([3.0, -1.0]), "b": torch.tensor([0.5, 2.0])},
             {"a": torch.tensor([-2.0, -4.0]), "b": torch.tensor([1.0, 0.1])}]
    # D = 4, density 0.5: keep |τ| ≥ the 2nd smallest: task 1 drops b[0]=0.5, task 2 drops b[1]=0.1.
    # trimmed sums a = [1, -5], b = [1, 2] → signs [+, -], [+, +].
    expected_a = {"sum": [3.0, -5.0], "mean": [3.0, -2.5], "max": [3.0, -4.0]}
    for func, a in expected_a.items():
        out = merge("ties", base, specs, density=0.5, scaling=1.0, merge_func=func)
        assert close(out["a"], torch.tensor(a)) and close(out["b"], torch.tensor([1.0, 2.0]))
    scaled = merge("ties", base, specs, density=0.5, scaling=0.3)
    assert close(scaled["a"], 0.3 * torch.tensor([3.0, -5.0]))


def test_ties_zero_sum_takes_the_global_majority_sign():
    base = {"a": torch.zeros(1), "b": torch.zeros(2)}
    specs = [{"a": torch.tensor([1.0]), "b": torch.tensor([2.0, 1.0])},
             {"a": torch.tensor([-1.0]), "b": torch.tensor([3.0, 1.0])}]
    out = merge("ties", base, specs, density=1.0, scaling=1.0)  # elected signs: a 0 → majority (+)
    assert close(out["a"], torch.tensor([1.0])) and close(out["b"], torch.tensor([5.0, 2.0]))
    flipped = [{k: -v for k, v in s.items()} for s in specs]
    assert close(merge("ties", base, flipped, density=1.0, scaling=1.0)["a"], torch.tensor([-1.0]))


def test_ties_keeps_int_density_plus_one_entries_and_ties():
    base = {"a": torch.zeros(10)}
    spec = {"a": torch.tensor([1.0, 2, 3, 4, 5, 6, 7, 8, 8, 10])}
    kept = merge("ties", base, [spec], density=0.2, scaling=1.0)["a"]
    assert close(kept, torch.tensor([0.0, 0, 0, 0, 0, 0, 0, 8, 8, 10]))


@pytest.mark.parametrize("dtypes", [(torch.float32,), (torch.float64,), (torch.float32, torch.float64)])
def test_streamed_ties_thresholds_equal_kthvalue_over_the_whole_model(dtypes):
    """The histogram passes find exactly the k-th smallest magnitude that sorting the whole model would."""
    g = torch.Generator().manual_seed(0)
    values = [torch.tensor([0.0, 0, 1e-40, 3, 3, 3, 7]), torch.zeros(5), torch.randn(20000, generator=g),
              torch.randn(3000, generator=g).round(decimals=2)]  # subnormals, zeros, ties inside one bucket
    base = {f"t{j}": torch.zeros(v.shape, dtype=dtypes[j % len(dtypes)]) for j, v in enumerate(values)}
    base["ids"] = torch.arange(3)
    specs = [{**{f"t{j}": (v * (i + 1)).roll(i).to(dtypes[j % len(dtypes)]) for j, v in enumerate(values)},
              "ids": torch.arange(3)} for i in range(2)]
    stream = TaskStream(base, specs)
    wide = torch.float64 if torch.float64 in dtypes else torch.float32
    for densities in ([0.2, 0.5], [1.0, 1e-4], [0.9999, 0.3]):
        got = ties_thresholds(stream, densities)
        for c, d in enumerate(densities):
            mags = torch.cat([stream.stacked(k)[c].abs().to(wide) for k in stream.float_keys()])
            k = mags.numel() - int(mags.numel() * d)
            assert got[c] == (mags.kthvalue(k).values.item() if k >= 1 else 0.0)


@pytest.mark.parametrize("block", [None, 7])
@pytest.mark.parametrize("merge_func", ["sum", "mean", "max"])
def test_ties_equals_the_flattened_model_reference(merge_func, block, monkeypatch):
    """FusionBench's TIES literally: the whole model as one vector per task, kthvalue, elect, disjoint merge;
    also with the thresholds, votes and merge run in blocks of 7 entries (every tensor split, unevenly)."""
    if block is not None:
        monkeypatch.setattr("fakemerge.merging.elementwise.BLOCK", block)
    base = random_model(0)
    specs = specialists_of(base, 3)
    keys = sorted(base)
    flat = torch.stack([torch.cat([(s[k] - base[k]).reshape(-1) for k in keys]) for s in specs])
    k = flat.shape[1] - int(flat.shape[1] * 0.3)
    th = flat.abs().kthvalue(k, dim=1, keepdim=True).values
    trimmed = torch.where(flat.abs() >= th, flat, 0.0)
    sign = torch.sign(trimmed.sum(0))
    sign[sign == 0] = torch.sign(sign.sum())
    agree = torch.where(sign > 0, trimmed > 0, trimmed < 0) * trimmed
    merged = {"sum": agree.sum(0), "mean": agree.sum(0) / (agree != 0).sum(0).clamp_min(1),
              "max": agree.abs().max(0).values * sign}[merge_func]
    out = merge("ties", base, specs, density=0.3, scaling=0.5, merge_func=merge_func)
    i = 0
    for key in keys:
        n = base[key].numel()
        assert torch.equal(out[key], base[key] + 0.5 * merged[i:i + n].reshape(base[key].shape)), key
        i += n


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_zero_dropped_is_the_0_1_product_to_the_bit(dtype):
    """Signed zeros, NaN and inf as the product gives them (a fill with +0 differs in the sign bit), on a
    strided view too; bfloat16 takes torch's path, the others numpy's."""
    g = torch.Generator().manual_seed(3)
    t = torch.randn(3, 40, 30, generator=g).to(dtype)
    t[0, 0, :4] = torch.tensor([float("nan"), float("inf"), -0.0, -1.0])
    keep = torch.rand(3, 40, 30, generator=g) > 0.4
    keep[0, 0, :4] = torch.tensor([False, False, False, False])
    bits = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16}[dtype]
    for view in (lambda x: x, lambda x: x.transpose(1, 2)):
        got, want = view(t.clone()), view(t.clone())
        zero_dropped(got, view(keep))
        want.mul_(view(keep).to(dtype))
        assert torch.equal(got.contiguous().view(bits), want.contiguous().view(bits))
    plain = t.clone()
    zero_dropped(plain, keep)
    assert torch.isnan(plain[0, 0, :2]).all() and plain[0, 0, 3] == 0 and math.copysign(1, plain[0, 0, 3]) < 0


def test_dare_keep_mask_drops_each_entry_independently_with_the_asked_probability():
    n, p = 1_000_001, 0.3  # odd: the last 64-bit word is half used
    a, b = keep_mask(torch.Size([n]), p, 11), keep_mask(torch.Size([n]), p, 12)
    assert a.dtype == torch.bool and a.shape == (n,)
    assert torch.equal(a, keep_mask(torch.Size([n]), p, 11)) and not torch.equal(a, b)
    tol = 5 * math.sqrt(p * (1 - p) / (n // 2))  # five standard deviations of a half's drop rate
    for part in (a[0::2], a[1::2], a[: n // 2], a[n // 2:]):  # both halves of each word, both ends of the stream
        assert abs(float((~part).float().mean()) - p) < tol
    assert abs(float((~a & ~b).float().mean()) - p * p) < tol  # two seeds: independent masks
    assert abs(float((~a[:-1] & ~a[1:]).float().mean()) - p * p) < tol  # neighbours: independent
    assert bool(keep_mask(torch.Size([4, 5]), 0.0, 0).all()) and keep_mask(torch.Size([4, 5]), 0.0, 0).shape == (4, 5)
    assert float(keep_mask(torch.Size([n]), 1 - 1e-12, 0).float().mean()) < 1e-5


def test_dare_masks_are_seeded_rescaled_and_independent_of_key_order():
    base = random_model(0)
    specs = specialists_of(base, 2)
    a = merge("dare", base, specs, drop_rate=0.5, seed=3, scaling=1.0)
    reversed_base = dict(reversed(list(base.items())))
    b = merge("dare", reversed_base, specs, drop_rate=0.5, seed=3, scaling=1.0)
    c = merge("dare", base, specs, drop_rate=0.5, seed=4, scaling=1.0)
    assert all(torch.equal(a[k], b[k]) for k in base)
    assert any(not torch.equal(a[k], c[k]) for k in base)
    one = merge("dare", zeros_like_all(base), [{k: torch.ones_like(v) for k, v in base.items()}],
                drop_rate=0.25, seed=0, scaling=1.0)
    values = torch.cat([v.reshape(-1) for v in one.values()])
    assert bool(((values == 0) | ((values - 1 / 0.75).abs() < 1e-6)).all())
    assert 0.1 < float((values == 0).float().mean()) < 0.4
    no_drop = merge("dare", base, specs, drop_rate=0.0, scaling=0.7)
    ta = merge("task_arithmetic", base, specs, scaling=0.7)
    assert all(close(no_drop[k], ta[k]) for k in base)


def test_tsv_on_diagonal_task_vectors():
    base = {"w": torch.zeros(2, 2), "b": torch.zeros(2)}
    specs = [{"w": diag(3, 1), "b": torch.tensor([1.0, 0.0])},
             {"w": diag(1, 2), "b": torch.tensor([3.0, 2.0])}]
    out = merge("tsv", base, specs, alpha=0.5)
    # r = int(2 / 2) = 1: task 1 gives (3, e1, e1), task 2 gives (2, e2, e2); polar factors = I.
    assert close(out["w"], 0.5 * diag(3, 2)) and close(out["b"], 0.5 * torch.tensor([2.0, 1.0]))


def test_iso_c_flattens_the_spectrum_of_the_sum():
    rot = torch.tensor([[0.6, -0.8], [0.8, 0.6]])
    base = {"w": torch.zeros(2, 2)}
    specs = [{"w": rot @ diag(3, 1)}, {"w": rot @ diag(1, 1)}]  # Σ = rot · diag(4, 2), mean σ = 3
    assert close(merge("iso_c", base, specs)["w"], 3 * rot)
    assert close(merge("iso_c", base, specs, scaling=0.5)["w"], 1.5 * rot)


def test_iso_cts_common_and_task_spaces():
    base = {"w": torch.zeros(3, 3)}
    specs = [{"w": diag(4, 0.5, 0.2)}, {"w": diag(1, 0.8, 2.5)}]
    # k = 3, f = 0.34: c = 3 − round(2/2)·2 = 1 common direction (e1, σ 5); per task n = 1:
    # task 1's residual diag(0, .5, .2) → (0.5, e2), task 2's diag(0, .8, 2.5) → (2.5, e3); mean σ = 8/3.
    out = merge("iso_cts", base, specs, common_fraction=0.34)
    assert close(out["w"], 8 / 3 * torch.eye(3))
    # f = 0.7: c0 = 2 leaves round((3 - 2)/2) = round(0.5) = 0 task directions (half to even): Iso-C.
    assert close(merge("iso_cts", base, specs, common_fraction=0.7)["w"], merge("iso_c", base, specs)["w"])


def test_cart_adds_low_rank_centred_task_vectors_to_the_average():
    base = {FC: torch.zeros(2, 2), BIAS: torch.zeros(2)}
    specs = [{FC: diag(3, 0), BIAS: torch.tensor([1.0, 0])}, {FC: diag(0, 3), BIAS: torch.tensor([0.0, 1])},
             {FC: diag(0.3, 0), BIAS: torch.tensor([2.0, 2])}]
    # mean diag(1.1, 1); centred: (1.9, -1) → (1.9, 0); (-1.1, 2) → (0, 2); (-0.8, -1) → (0, -1).
    out = merge("cart", base, specs, rank_ratio=0.5, scaling=1.0)
    assert close(out[FC], diag(3.0, 2.0))
    assert close(out[BIAS], torch.tensor([1.0, 1.0]))
    assert close(merge("cart", base, specs, rank_ratio=1.0)[FC], diag(1.1, 1.0))
    # rank 0.6 · 2 = 1.2: CART's code rounds down (rank 1), `rank_round="up"` gives rank 2 = θ_avg
    assert close(merge("cart", base, specs, rank_ratio=0.6)[FC], diag(3.0, 2.0))
    assert close(merge("cart", base, specs, rank_ratio=0.6, rank_round="up")[FC], diag(1.1, 1.0))


# ---------------------------------------------------------------- invariants

IDENTITY_PARAMS = {  # parameters for which N identical specialists give back that specialist
    "average": {}, "task_arithmetic": {"scaling": 1 / 3}, "ties": {"density": 1.0, "scaling": 1.0,
                                                                     "merge_func": "mean"},
    "dare": {"drop_rate": 0.0, "scaling": 1 / 3}, "cart": {}, "r2m": {},
}


@pytest.mark.parametrize("method", sorted(IDENTITY_PARAMS))
def test_identical_specialists_give_that_specialist(method):
    base = random_model(0)
    spec = specialists_of(base, 1)[0]
    out = merge(method, base, [spec] * 3, **IDENTITY_PARAMS[method])
    assert all(close(out[k], spec[k]) for k in base)


def test_iso_c_identical_specialists_with_a_flat_spectrum():
    q = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0))).Q
    base = {"w": torch.zeros(4, 4)}
    assert close(merge("iso_c", base, [{"w": 0.2 * q}] * 3, scaling=1 / 3)["w"], 0.2 * q)


@pytest.mark.parametrize("method", list(METHODS))
def test_order_of_specialists_does_not_change_a_byte(method):
    base = random_model(0)
    specs = specialists_of(base, 3)
    a = merge(method, base, specs)
    for order in ([2, 1, 0], [1, 2, 0]):
        b = merge(method, base, [specs[i] for i in order])
        assert all(torch.equal(a[k], b[k]) for k in base)


@pytest.mark.parametrize("method", list(METHODS))
def test_streaming_lazy_inputs_equal_in_memory(method):
    class Lazy:  # only keys() and __getitem__, a copy per access, like a file-backed mapping
        def __init__(self, d):
            self.d, self.reads = d, 0

        def keys(self):
            return self.d.keys()

        def __getitem__(self, k):
            self.reads += 1
            return self.d[k].clone()

    base = random_model(0)
    specs = specialists_of(base, 3)
    lazy = [Lazy(s) for s in specs]
    streamed = list(merge_iter(method, Lazy(base), lazy))
    assert [k for k, _ in streamed] == list(base)
    in_memory = merge(method, base, specs)
    assert all(torch.equal(v, in_memory[k]) for k, v in streamed)
    assert all(spec.reads >= len(base) for spec in lazy)


def test_key_spelling_follows_the_base():
    base = random_model(0)
    specs = specialists_of(base, 2)
    prefixed = [{"vision_model." + k: v for k, v in s.items()} for s in specs]
    out = merge("ties", base, prefixed)
    assert list(out) == list(base)
    assert all(torch.equal(out[k], merge("ties", base, specs)[k]) for k in base)
    out_prefixed = merge("average", {"vision_model." + k: v for k, v in base.items()}, specs)
    assert all(k.startswith("vision_model.") for k in out_prefixed)


def test_dtype_is_kept_and_integer_buffers_pass_through():
    base = {"w": torch.zeros(3, 3, dtype=torch.float16), "ids": torch.arange(3)}
    specs = [{"w": torch.ones(3, 3, dtype=torch.float16), "ids": torch.arange(3)}]
    for method in METHODS:
        out = merge(method, base, specs)
        assert out["w"].dtype == torch.float16 and torch.equal(out["ids"], base["ids"])


def test_diagnostics_hold_task_norms_and_cosines():
    base = {"w": torch.zeros(2)}
    specs = [{"w": torch.tensor(v)} for v in ([3.0, 4.0], [-4.0, 3.0], [6.0, 8.0])]
    for method in METHODS:
        run = merge_iter(method, base, specs)
        dict(run)
        d = run.diagnostics
        assert d["task_norms"] == pytest.approx([5.0, 5.0, 10.0])
        cosine = [c for row in d["task_cosine"] for c in row]
        assert cosine == pytest.approx([1, 0, 1, 0, 1, 0, 1, 0, 1], abs=1e-9)


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("method, params", [
    ("nope", {}), ("ties", {"density": 0.0}), ("ties", {"density": 1.5}), ("ties", {"merge_func": "median"}),
    ("ties", {"dropout": 0.1}), ("dare", {"drop_rate": 1.0}), ("cart", {"rank_ratio": 0.0}),
    ("r2m", {"k": 0}), ("r2m", {"rank_ratio": 2}), ("r2m", {"eta": "both"}),
    ("task_arithmetic", {"scaling": math.nan}),
])
def test_bad_method_or_parameter_is_an_input_error(method, params):
    base = random_model(0)
    with pytest.raises(InputError, match=method):
        merge_iter(method, base, specialists_of(base, 1), **params)


def test_bad_inputs_are_input_errors():
    base = random_model(0)
    with pytest.raises(InputError, match="at least one"):
        merge("average", base, [])
    missing = dict(list(specialists_of(base, 1)[0].items())[1:])
    with pytest.raises(InputError, match="specialist 0"):
        merge("average", base, [missing])
    wrong = specialists_of(base, 1)[0] | {FC: torch.zeros(3, 3)}
    with pytest.raises(InputError, match="shape"):
        merge("tsv", base, [wrong])


def test_defaults_are_documented():
    assert method_defaults("ties") == {"density": 0.2, "scaling": 0.3, "merge_func": "sum"}
    assert method_defaults("task_arithmetic") == {"scaling": 0.3}
    assert method_defaults("iso_cts")["common_fraction"] == 0.8
    assert all(METHODS[m].doc for m in METHODS)
    with pytest.raises(InputError):
        method_defaults("nope")


# ---------------------------------------------------------------- low-rank task vectors

@pytest.mark.parametrize("method", ["tsv", "iso_c", "iso_cts"])
def test_low_rank_task_vectors_give_the_same_result_in_float32_and_float64(method):
    g = torch.Generator().manual_seed(0)
    base64 = {"w": torch.randn(24, 16, generator=g, dtype=torch.float64)}
    specs64 = [{"w": base64["w"] + 0.01 * torch.randn(24, 2, generator=g, dtype=torch.float64)
                @ torch.randn(2, 16, generator=g, dtype=torch.float64)} for _ in range(3)]
    specs32 = [{k: v.float() for k, v in s.items()} for s in specs64]
    base32 = {"w": base64["w"].float()}
    out64 = merge(method, base64, specs64)["w"] - base64["w"]
    out32 = merge(method, base32, specs32)["w"].double() - base64["w"]
    assert float((out32 - out64).norm() / out64.norm()) < 1e-4  # FusionBench arithmetic: 0.66–1.15
    # the merged update stays inside the span of the task vectors: no promoted null direction
    stacked = torch.cat([s["w"] - base64["w"] for s in specs64], 1)
    span = torch.linalg.svd(stacked, full_matrices=False).U[:, :6]
    assert float((out64 - span @ (span.T @ out64)).norm() / out64.norm()) < 1e-6


@pytest.mark.parametrize("shape", [(12, 5), (5, 12)])
def test_an_svd_that_does_not_converge_in_float32_is_redone_in_float64(monkeypatch, shape):
    """MKL's single-threaded float32 gesdd fails on some rank-deficient matrices (seen on Iso-CTS's projected
    768 × 3072 task vectors); the merge must not fail with it."""
    from fakemerge.merging import lowrank

    real = torch.linalg.svd

    def float32_fails(a, full_matrices=True):
        if a.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return real(a, full_matrices=full_matrices)

    a = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(torch.linalg, "svd", float32_fails)
    u, s, vh = lowrank.thin_svd(a)
    assert u.dtype == s.dtype == vh.dtype == torch.float32
    assert u.shape == (shape[0], 5) and vh.shape == (5, shape[1])
    assert close((u * s) @ vh, a)
    monkeypatch.setattr(torch.linalg, "svd", lambda a, full_matrices=True: float32_fails(a.float()))
    with pytest.raises(torch.linalg.LinAlgError):  # float64 failing too is not hidden
        lowrank.thin_svd(a.double())
