"""R²M against a dense, literal implementation of the spec, plus its invariants and streaming behaviour."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from fakemerge.keys import is_bias_or_norm, is_linear_weight
from fakemerge.merging import lowrank, merge, merge_iter, r2m
from fakemerge.merging.lowrank import truncated_svd, truncation_rank

SHAPES = {
    "embeddings.class_embedding": (6,),
    "embeddings.position_embedding.weight": (5, 6),
    "encoder.layers.0.layer_norm1.weight": (6,),
    "encoder.layers.0.self_attn.q_proj.weight": (6, 6),
    "encoder.layers.0.self_attn.q_proj.bias": (6,),
    "encoder.layers.0.mlp.fc1.weight": (12, 6),
    "encoder.layers.0.mlp.fc2.weight": (6, 12),
}


def merged(*args, **params) -> tuple[dict, dict]:
    """The merge and its diagnostics."""
    run = merge_iter(*args, **params)
    return dict(run), run.diagnostics


def models(n: int, seed: int = 0, shared: float = 0.0, dtype=torch.float64, noise: float = 0.1):
    """A base and n specialists; with `shared` > 0 every task vector is shared·s + noise (s returned)."""
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g, dtype=dtype) for k, s in SHAPES.items()}
    planted = {k: torch.randn(s, generator=g, dtype=dtype) for k, s in SHAPES.items()}
    specs = [{k: v + shared * planted[k] + noise * torch.randn(v.shape, generator=g, dtype=dtype)
              for k, v in base.items()} for _ in range(n)]
    return base, specs, planted


def reference(base, specs, k=1, rank_ratio=0.05, alpha=0.8, center=False, block_norm="none",
              residual="subtract", eta="script", rank_round="up", norm_of="truncated"):
    """The spec, literally: dense SVD of the weighted N×D core matrix, exact SVD truncation."""
    n = len(specs)
    taus = {key: torch.stack([s[key] - base[key] for s in specs]).reshape(n, -1) for key in base}
    core_keys = [key for key in base if not is_bias_or_norm(key)]
    balanced = block_norm == "balanced"
    gamma = {key: math.sqrt(taus[key].shape[1]) / float(taus[key].norm()) if balanced else 1.0
             for key in core_keys}
    m = torch.cat([gamma[key] ** 0.5 * taus[key] for key in core_keys], 1)
    mean_w = m.mean(0)
    x = m - mean_w if center else m
    _, sv, vh = torch.linalg.svd(x, full_matrices=False)
    v = vh[:k][sv[:k] > sv[0] * 1e-6]

    def unweight(vec):  # weighted core vector → per-tensor dict
        out, i = {}, 0
        for key in core_keys:
            p = taus[key].shape[1]
            out[key] = vec[i:i + p] / gamma[key] ** 0.5
            i += p
        return out

    core = unweight((mean_w @ v.T) @ v)
    proj = [unweight((m[i] @ v.T) @ v) for i in range(n)]
    core_all = {key: core.get(key, taus[key].mean(0)) for key in base}
    res, untruncated = [], []
    for i in range(n):
        r_i, whole = {}, {}
        for key in base:
            orthogonal = residual == "orthogonal" and key in core
            full = whole[key] = taus[key][i] - (proj[i][key] if orthogonal else core_all[key])
            if is_linear_weight(key, base[key]):
                mat = full.reshape(base[key].shape)
                u, s, wh = torch.linalg.svd(mat, full_matrices=False)
                x = rank_ratio * min(mat.shape)
                r = math.ceil(x) if rank_round == "up" else max(1, math.floor(x))
                full = ((u[:, :r] * s[:r]) @ wh[:r]).reshape(-1)
            r_i[key] = full
        res.append(r_i)
        untruncated.append(whole)
    measured = res if norm_of == "truncated" else untruncated
    norms = torch.tensor([math.sqrt(sum(float(r[key].square().sum()) for key in base)) for r in measured],
                         dtype=torch.float64)
    weights = [(norms.mean() / nm if nm > 0 else 0.0) / n for nm in norms]
    tau_res = {key: sum(w * r[key] for w, r in zip(weights, res, strict=True)) for key in base}
    core_norm = math.sqrt(sum(float(c.square().sum()) for c in core_all.values()))
    res_norm = math.sqrt(sum(float(t.square().sum()) for t in tau_res.values()))
    scale = alpha * core_norm / (res_norm if eta == "relative" else 1.0)
    return {key: base[key] + (core_all[key] + scale * tau_res[key]).reshape(base[key].shape) for key in base}


CHOICES = {"center": (False, True), "block_norm": ("none", "balanced"),
           "residual": ("subtract", "orthogonal"), "eta": ("script", "relative")}
OPTIONS = [dict(zip(CHOICES, combo, strict=True)) for combo in itertools.product(*CHOICES.values())]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_matches_the_dense_spec_for_every_option(options):
    base, specs, _ = models(4, shared=1.0)
    for k, rank_ratio in ((1, 0.2), (2, 0.5)):
        expected = reference(base, specs, k=k, rank_ratio=rank_ratio, **options)
        out = merge("r2m", base, specs, k=k, rank_ratio=rank_ratio, **options)
        for key in base:
            update = (expected[key] - base[key]).norm()
            assert float((out[key] - expected[key]).norm() / update) < 1e-8, key


def test_planted_shared_component_is_recovered_as_the_core():
    base, specs, planted = models(5, shared=1.0, noise=0.5)
    out = merge("r2m", base, specs, alpha=0.0)  # θ* = θ0 + τ_core

    def flat(d):
        return torch.cat([d[key].reshape(-1) for key in base if not is_bias_or_norm(key)])

    core = flat({key: out[key] - base[key] for key in base})
    s = flat(planted)
    assert float(core @ s / (core.norm() * s.norm())) > 0.98
    assert float(core.norm() / s.norm()) == pytest.approx(1.0, abs=0.05)
    residual = merge("r2m", base, specs, alpha=1.0, eta="relative")  # ‖τ_res‖ = ‖τ_core‖ ...
    fake = flat({key: residual[key] - out[key] for key in base})
    assert abs(float(fake @ s / (fake.norm() * s.norm()))) < 0.2  # ... and it is not the shared direction


@pytest.mark.parametrize("rank_round, norm_of", list(itertools.product(("up", "down"), ("truncated", "residual"))))
@pytest.mark.parametrize("options", OPTIONS[::5], ids=lambda o: "-".join(str(v) for v in o.values()))
def test_rank_rounding_and_where_norms_are_measured_match_the_spec(options, rank_round, norm_of):
    base, specs, _ = models(4, shared=1.0)
    for k, rank_ratio in ((1, 0.2), (2, 0.3)):  # 0.2 · 6 = 1.2 and 0.3 · 6 = 1.8: up gives 2, down 1
        expected = reference(base, specs, k=k, rank_ratio=rank_ratio, rank_round=rank_round, norm_of=norm_of,
                             **options)
        out, d = merged("r2m", base, specs, k=k, rank_ratio=rank_ratio, rank_round=rank_round, norm_of=norm_of,
                        **options)
        assert set(d["r2m_residual_ranks"]["encoder.layers.0.mlp.fc1.weight"]) == {2 if rank_round == "up" else 1}
        for key in base:
            update = (expected[key] - base[key]).norm()
            assert float((out[key] - expected[key]).norm() / update) < 1e-8, key


@pytest.mark.parametrize("options", OPTIONS[:8], ids=lambda o: "-".join(str(v) for v in o.values()))
def test_identical_specialists_and_a_single_specialist_give_that_specialist(options):
    base, specs, _ = models(1)
    for group in ([specs[0]] * 3, specs):
        out = merge("r2m", base, group, **options)
        assert all(torch.allclose(out[key], specs[0][key], atol=1e-10) for key in base)


def test_order_does_not_matter_and_float32_is_close_to_float64():
    base, specs, _ = models(3, shared=0.5)
    a = merge("r2m", base, specs, eta="relative")
    b = merge("r2m", base, specs[::-1], eta="relative")
    assert all(torch.allclose(a[key], b[key], atol=1e-10) for key in base)
    c = merge("r2m", {k: v.float() for k, v in base.items()},
              [{k: v.float() for k, v in s.items()} for s in specs], eta="relative")
    assert all(c[key].dtype == torch.float32 for key in base)
    assert all(torch.allclose(c[key].double(), a[key], atol=1e-5) for key in base)


def with_large_linear(n: int, seed: int = 1):
    """Tiny models plus one 300 × 280 MLP weight, whose truncations take the randomized path (> EXACT_UP_TO)."""
    base, specs, _ = models(n, shared=0.5, dtype=torch.float32)
    key = "encoder.layers.0.mlp.fc1.weight"
    g = torch.Generator().manual_seed(seed)
    base[key] = torch.randn(300, 280, generator=g)
    shared = 0.01 * torch.randn(300, 280, generator=g)
    for s in specs:
        s[key] = base[key] + shared + 0.01 * torch.randn(300, 280, generator=g)
    return base, specs, key


def test_factor_cache_and_recomputation_give_identical_tensors(monkeypatch):
    base, specs, _ = with_large_linear(3)
    cached = merge("r2m", base, specs)
    monkeypatch.setattr(r2m, "FACTOR_CACHE_LIMIT", 0.0)
    recomputed = merge("r2m", base, specs)
    assert all(torch.equal(cached[key], recomputed[key]) for key in base)


def test_randomized_truncation_is_seeded_and_near_optimal():
    g = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(400, 300, generator=g)).Q
    v = torch.linalg.qr(torch.randn(300, 300, generator=g)).Q
    spectrum = torch.logspace(0, -3, 300)
    a = (u * spectrum) @ v.T
    left, right = truncated_svd(a, 20, seed=5)
    again = truncated_svd(a, 20, seed=5)
    assert torch.equal(left, again[0]) and torch.equal(right, again[1])
    best = float(spectrum[20:].square().sum().sqrt())
    assert float((a - left @ right).norm()) < 1.01 * best


@pytest.mark.parametrize("shape", [(4, 9), (9, 4)])
def test_full_rank_truncation_factors_do_not_share_the_input_memory(shape):
    """R²M's residuals live in a scratch buffer reused for the next key: a factor that viewed it would change."""
    t = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    left, right = truncated_svd(t, 4, seed=0)
    product = left @ right
    t.fill_(7.0)
    assert torch.equal(left @ right, product)


def test_auto_rank_keeps_the_requested_energy():
    spectrum = torch.tensor([3.0, 2.0, 1.0, 0.5])  # energies 9, 4, 1, .25 of 14.25
    assert [r2m._energy_rank(spectrum, e) for e in (0.5, 0.9, 0.95, 1.0)] == [1, 2, 3, 4]
    base, specs, _ = models(3, shared=1.0)
    auto, d = merged("r2m", base, specs, rank_ratio="auto", energy=1.0)
    full = merge("r2m", base, specs, rank_ratio=1.0)
    assert all(torch.allclose(auto[key], full[key], atol=1e-10) for key in base)
    assert d["r2m_residual_ranks"]["encoder.layers.0.mlp.fc1.weight"] == [6, 6, 6]
    _, d = merged("r2m", base, specs, rank_ratio="auto", energy=0.5)
    assert all(1 <= r < 6 for ranks in d["r2m_residual_ranks"].values() for r in ranks)


def test_diagnostics_report_the_core_and_residual():
    base, specs, _ = models(3, shared=1.0)
    _, d = merged("r2m", base, specs, eta="relative", alpha=0.5)
    assert len(d["r2m_eigenvalues"]) == 3 and d["r2m_eigenvalues"][0] >= d["r2m_eigenvalues"][1] >= 0
    assert d["r2m_eta"] == pytest.approx(0.5 * d["r2m_core_norm"] / d["r2m_residual_norm"])
    assert all(e >= 0 for e in d["r2m_core_energy"].values())
    assert sum(d["r2m_core_energy"].values()) / len(d["r2m_core_energy"]) > 0.5  # planted core dominates
    assert set(d["r2m_residual_ranks"]) == {k for k in SHAPES if is_linear_weight(k, torch.zeros(SHAPES[k]))}
    weights = torch.tensor(d["r2m_norm_weights"]) * torch.tensor(d["r2m_residual_task_norms"])
    assert torch.allclose(weights, weights.mean())  # every residual contributes the same norm
    assert len(d["task_cosine"]) == 3


@pytest.mark.parametrize("shape", [(300, 600), (600, 300)])
def test_randomized_truncation_is_near_optimal_on_a_flat_spectrum(shape):
    a = torch.randn(shape, generator=torch.Generator().manual_seed(2))  # full rank, no spectral gap
    left, right = truncated_svd(a, 30, seed=0)
    assert left.shape == (shape[0], 30) and right.shape == (30, shape[1])
    sv = torch.linalg.svdvals(a.double())
    best = float(sv[30:].square().sum().sqrt())
    assert float((a - left @ right).norm()) < 1.01 * best


def test_residual_gram_from_factors_equals_the_dense_gram():
    g = torch.Generator().manual_seed(3)
    factors = [(torch.randn(7, r, generator=g, dtype=torch.float64),
                torch.randn(r, 5, generator=g, dtype=torch.float64)) for r in (2, 3, 1)]
    flat = torch.stack([(left @ right).reshape(-1) for left, right in factors])
    assert torch.allclose(r2m._factor_gram(factors), flat @ flat.T, atol=1e-12)


@pytest.mark.parametrize("method, params", [("r2m", {}), ("r2m", {"rank_ratio": 0.1, "eta": "relative"}),
                                            ("cart", {}), ("cart", {"rank_ratio": 0.05})])
def test_randomized_truncations_give_the_same_bytes_in_any_order(method, params):
    base, specs, key = with_large_linear(3)
    assert truncation_rank((300, 280), params.get("rank_ratio", 0.1)) * 4 < 280 < 300  # the randomized path
    first = merge(method, base, specs, **params)
    for order in ([2, 0, 1], [1, 2, 0], [2, 1, 0]):
        other = merge(method, base, [specs[i] for i in order], **params)
        assert all(torch.equal(first[k], other[k]) for k in base), order


@pytest.mark.parametrize("method", ["r2m", "cart"])
def test_randomized_truncation_against_the_exact_one(method):
    """On a flat spectrum the best rank-r subspace is ill-determined: the randomized merge differs from the
    exact one although each truncation is within 1 % of the optimal error (`test_truncated_svd_modes`)."""
    base, specs, key = with_large_linear(3)
    exact = merge(method, base, specs, svd="exact")
    randomized = merge(method, base, specs, svd="randomized")
    update = (exact[key] - base[key]).norm()
    assert 1e-4 < float((randomized[key] - exact[key]).norm() / update) < 0.5
    if method == "cart":  # per tensor: auto is randomized above EXACT_UP_TO, exact below
        auto = merge(method, base, specs)
        small = "encoder.layers.0.self_attn.q_proj.weight"
        assert torch.equal(auto[key], randomized[key]) and torch.equal(auto[small], exact[small])


@pytest.mark.parametrize("shape, rank", [((300, 280), 14), ((280, 300), 28), ((6, 6), 2)])
def test_truncated_svd_modes(shape, rank):
    g = torch.Generator().manual_seed(4)
    k = min(shape)
    u = torch.linalg.qr(torch.randn(shape[0], k, generator=g)).Q
    vh = torch.linalg.qr(torch.randn(shape[1], k, generator=g)).Q.T
    sv = torch.linspace(2, 1, k) * (torch.arange(k) < rank) + 0.5 * torch.linspace(1, 0.1, k)  # a gap at rank
    a = (u * sv) @ vh
    best = (u[:, :rank] * sv[:rank]) @ vh[:rank]
    left, right = truncated_svd(a, rank, seed=1, svd="exact")
    assert torch.allclose(left @ right, best, atol=1e-5)
    left, right = truncated_svd(a, rank, seed=1, svd="randomized")
    again = truncated_svd(a, rank, seed=1, svd="randomized")
    assert torch.equal(left, again[0]) and torch.equal(right, again[1])
    assert float((a - left @ right).norm()) < 1.01 * float((a - best).norm())


@pytest.mark.parametrize("shape", [(120, 300), (300, 120)])
def test_randomized_truncation_is_the_plain_subspace_iteration(shape):
    """Against a float64 subspace iteration written as in Halko et al., from the same seeded sketch: pins the
    power iterations, the oversampling and the side it runs on, whatever order the products are taken in."""
    a = torch.randn(shape, generator=torch.Generator().manual_seed(6))
    rank, seed = 12, 3
    left, right = truncated_svd(a, rank, seed=seed, svd="randomized")
    x = (a if shape[0] <= shape[1] else a.T).double()
    omega = torch.randn(x.shape[1], rank + lowrank.OVERSAMPLE, generator=torch.Generator().manual_seed(seed))
    q = torch.linalg.qr(x @ omega.double()).Q
    for _ in range(lowrank.POWER_ITERATIONS):
        q = torch.linalg.qr(x @ (x.T @ q)).Q
    u, _, _ = torch.linalg.svd(q.T @ x, full_matrices=False)
    reference = q @ u[:, :rank] @ u[:, :rank].T @ q.T @ x
    reference = reference if shape[0] <= shape[1] else reference.T
    assert torch.allclose((left @ right).double(), reference, atol=1e-4 * float(reference.abs().max()))
