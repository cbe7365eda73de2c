"""SubspaceLinear, inject/densify and the subspace losses (models/subspace.py)."""

import os

import pytest
import torch
from torch import nn
from transformers import CLIPVisionModel

from fakemerge.models.backbone import tiny_config
from fakemerge.models.subspace import (
    ATTENTION,
    MLP,
    SubspaceLinear,
    densify,
    energy_loss,
    inject_subspaces,
    linear_names,
    matches,
    orthogonality_loss,
    orthonormality_loss,
    spectral_loss,
    subspace_layers,
    tail_energy_ratio,
    tail_triplets,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


def _linear(m=24, n=16, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(n, m, bias=bias)
    return lin


def _perturb(model, scale=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in subspace_layers(model).values():
            for p in (layer.U, layer.s, layer.V):
                p.add_(scale * torch.randn(p.shape, generator=g))


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return CLIPVisionModel(tiny_config(image_size=32, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=2)).eval()


@pytest.mark.parametrize("shape,k,d,bias", [((24, 16), 1, 1, True), ((16, 24), 2, 3, False),
                                             ((20, 20), 4, 4, True), ((20, 20), 1, 19, True)])
def test_layer_equals_pretrained_at_init(shape, k, d, bias):
    lin = _linear(*shape, bias=bias)
    layer = SubspaceLinear(lin, subspaces=k, rank=d)
    x = torch.randn(5, 7, shape[1])
    assert (layer(x) - lin(x)).abs().max() <= 1e-5
    assert layer.U.shape == (shape[0], k * d) and layer.V.shape == (shape[1], k * d)
    assert layer.s.shape == (k * d,)
    # The trainable tail is the smallest K·d singular triplets, in order.
    s = torch.linalg.svdvals(lin.weight.double())
    torch.testing.assert_close(layer.s.double(), s[-k * d:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(30, 20), (20, 30), (25, 25)])
def test_tail_triplets_match_the_svd(shape):
    torch.manual_seed(0)
    w = torch.randn(*shape, dtype=torch.float64)
    u, s, v = tail_triplets(w, 4)
    uu, ss, vh = torch.linalg.svd(w, full_matrices=False)
    torch.testing.assert_close(s, ss[-4:])
    torch.testing.assert_close((u * s) @ v.T, (uu[:, -4:] * ss[-4:]) @ vh[-4:])  # same tail, sign-free
    torch.testing.assert_close(u.T @ u, torch.eye(4, dtype=torch.float64))
    torch.testing.assert_close(v.T @ v, torch.eye(4, dtype=torch.float64))


def test_rank_deficient_weight_falls_back_to_the_svd():
    torch.manual_seed(0)
    lin = nn.Linear(10, 12)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(12, 3) @ torch.randn(3, 10))  # rank 3: the tail is zero
    layer = SubspaceLinear(lin, 2, 2)
    x = torch.randn(4, 10)
    assert (layer(x) - lin(x)).abs().max() <= 1e-5
    torch.testing.assert_close(layer.U.T @ layer.U, torch.eye(4), atol=1e-5, rtol=0)


def test_only_artifact_subspaces_are_parameters():
    layer = SubspaceLinear(_linear(), subspaces=2, rank=2)
    assert {n for n, _ in layer.named_parameters()} == {"U", "s", "V"}
    assert "frozen_weight" in dict(layer.named_buffers()) and "bias" in dict(layer.named_buffers())


def test_rejects_rank_beyond_weight():
    with pytest.raises(ValueError, match="subspaces"):
        SubspaceLinear(_linear(8, 6), subspaces=2, rank=3)


def test_matches_follows_peft_rule():
    assert matches("encoder.layers.0.self_attn.q_proj", ATTENTION)
    assert matches("self_attn.q_proj", ATTENTION)
    assert not matches("encoder.layers.0.self_attn.q_proj_extra", ATTENTION)
    assert not matches("encoder.layers.0.xself_attn.q_proj", ATTENTION)


def test_inject_whole_model_equals_pretrained_and_densify_roundtrip():
    model = _tiny_model()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = model(pixel_values=x).pooler_output
    names = inject_subspaces(model, ATTENTION + MLP, subspaces=2, rank=2)
    assert len(names) == 2 * 6 and names == list(subspace_layers(model))
    with torch.no_grad():
        assert (model(pixel_values=x).pooler_output - ref).abs().max() <= 1e-5
    _perturb(model)
    with torch.no_grad():
        trained = model(pixel_values=x).pooler_output
        assert (trained - ref).abs().max() > 1e-3  # the perturbation changed the model
        densify(model)
        assert not subspace_layers(model)
        assert (model(pixel_values=x).pooler_output - trained).abs().max() <= 1e-5
    # A densified model is an ordinary checkpoint of the base architecture.
    assert set(model.state_dict()) == set(_tiny_model().state_dict())
    assert all(type(model.get_submodule(n)) is nn.Linear for n in names)


def test_densified_delta_has_rank_at_most_kd_and_only_in_injected_layers():
    base = _tiny_model()
    model = _tiny_model()
    chosen = ["encoder.layers.1.self_attn.k_proj", "encoder.layers.0.mlp.fc1"]
    names = inject_subspaces(model, ATTENTION + MLP, subspaces=2, rank=2, layers=chosen)
    assert sorted(names) == sorted(chosen)
    _perturb(model)
    densify(model)
    before, after = base.state_dict(), model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {n + ".weight" for n in chosen}
    for n in chosen:
        delta = (after[n + ".weight"] - before[n + ".weight"]).double()
        # Ŵ − W = new tail − initial tail: rank ≤ 2·K·d (of 32)
        assert torch.linalg.matrix_rank(delta, rtol=1e-5).item() <= 8


def test_inject_rejects_unknown_layers():
    with pytest.raises(ValueError, match="not among"):
        inject_subspaces(_tiny_model(), ATTENTION, layers=["encoder.layers.0.mlp.fc1"])


def test_effort_trainable_parameter_count():
    model = _tiny_model()
    for p in model.parameters():
        p.requires_grad_(False)
    inject_subspaces(model)
    # 2 layers × 4 projections × (32 + 1 + 32)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * 4 * 65
    assert len(linear_names(model)) == 0  # every attention linear was replaced


def test_orthogonality_loss_zero_at_init_and_hand_computed_overlap():
    model = _tiny_model()
    inject_subspaces(model, subspaces=3, rank=2)
    assert orthogonality_loss(model).item() < 1e-6
    layer = SubspaceLinear(_linear(10, 10), subspaces=2, rank=2)
    with torch.no_grad():
        e = torch.eye(10)
        layer.U.copy_(torch.cat([e[:, :2], e[:, :2]], 1))  # both subspaces span the same plane: ‖I₂‖² = 2
        layer.V.copy_(torch.cat([e[:, :2], 2 * e[:, 2:4]], 1))  # orthogonal: 0
    holder = nn.Sequential(layer)
    assert orthogonality_loss(holder).item() == pytest.approx(2.0)
    assert orthogonality_loss(nn.Sequential(SubspaceLinear(_linear(), 1, 3))).item() == 0.0  # K = 1


def test_spectral_loss_zero_at_init_and_hand_computed():
    layer = SubspaceLinear(_linear(12, 12), subspaces=2, rank=2)
    holder = nn.Sequential(layer)
    assert spectral_loss(holder).item() == 0.0
    s0 = layer.s0.clone()
    with torch.no_grad():
        layer.s.mul_(torch.tensor([2.0, 2.0, 1.0, 1.0]))
    tail = (s0.double() ** 2).sum()  # normalised by the tail's initial energy, not by ‖W‖⁴
    expected = (3 * (s0[:2].double() ** 2).sum() / tail) ** 2
    assert spectral_loss(holder).item() == pytest.approx(expected.item(), rel=1e-4)
    assert tail_energy_ratio(holder) == pytest.approx(((layer.s.double() ** 2).sum() / tail).item(), rel=1e-6)


def test_spectral_loss_is_order_one_when_every_subspace_energy_doubles():
    """The reason for the normalisation: with ÷‖W‖⁴ this was ~1e-8 and λ_spec had no effect."""
    layer = SubspaceLinear(_linear(64, 64), subspaces=2, rank=2)
    with torch.no_grad():
        layer.s.mul_(2**0.5)  # every subspace's energy doubles
    assert spectral_loss(nn.Sequential(layer)).item() == pytest.approx(
        (((layer.s0[:2] ** 2).sum() ** 2 + (layer.s0[2:] ** 2).sum() ** 2) / (layer.s0**2).sum() ** 2).item(),
        rel=1e-4)
    assert spectral_loss(nn.Sequential(layer)).item() > 0.3


def test_energy_loss_matches_dense_computation():
    model = nn.Sequential(SubspaceLinear(_linear(16, 12), 2, 2),
                          SubspaceLinear(_linear(12, 16, seed=3), 1, 3))
    assert energy_loss(model).item() < 1e-5
    _perturb(model)
    expected = []
    for layer in model:
        w0 = layer.weight_norm2
        expected.append(((layer.dense_weight() ** 2).sum() - w0).abs() / w0)
    assert energy_loss(model).item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-4)


def test_orthonormality_loss_matches_effort_definition():
    lin = _linear(14, 10)
    layer = SubspaceLinear(lin, 2, 2, keep_basis=True)
    holder = nn.Sequential(layer)
    assert orthonormality_loss(holder).item() < 1e-8
    _perturb(holder, scale=0.1)
    expected = 0.0
    for basis, a in ((layer.semantic_U, layer.U), (layer.semantic_V, layer.V)):
        full = torch.cat([basis, a], 1)
        eye = torch.eye(full.shape[1])
        constant = ((basis.T @ basis - torch.eye(basis.shape[1])) ** 2).sum()  # not in the loss
        expected += ((full.T @ full - eye) ** 2).sum() - constant
    assert orthonormality_loss(holder).item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    with pytest.raises(ValueError, match="keep_basis"):
        orthonormality_loss(nn.Sequential(SubspaceLinear(lin, 1, 1)))


def test_losses_backpropagate_to_artifact_parameters_only():
    model = nn.Sequential(SubspaceLinear(_linear(), 2, 2, keep_basis=True))
    _perturb(model)
    total = orthogonality_loss(model) + spectral_loss(model) + energy_loss(model) + orthonormality_loss(model)
    total.backward()
    layer = model[0]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (layer.U, layer.s, layer.V))
