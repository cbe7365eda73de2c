"""Forgery-aware layer masking: GSNR scores, selection, plot (models/layer_mask.py)."""

import pytest
import torch
from torch import nn

from fakemerge.models.layer_mask import gradient_scores, plot_layer_scores, select_layers
from fakemerge.models.subspace import SubspaceLinear

torch.set_num_threads(1)


class Branches(nn.Module):
    """n parallel linears on separate input slices, summed through a fixed readout into one logit."""

    def __init__(self, n=6, dim=8, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.branches = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(n))
        with torch.no_grad():
            for b in self.branches:
                b.weight.copy_(0.3 * torch.randn(dim, dim, generator=g))
        self.register_buffer("readout", torch.randn(n, dim, generator=g) / dim**0.5)

    def forward(self, x):
        h = torch.stack([b(x[:, i]) for i, b in enumerate(self.branches)], 1)
        return (h * self.readout).sum((1, 2))


def planted_batches(planted, n_batches=8, n=6, dim=8, batch=64, seed=0):
    """Only the planted slices carry the label (weakly); the others are loud label-free noise."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(n, dim, generator=g)
    out = []
    for _ in range(n_batches):
        y = torch.randint(0, 2, (batch,), generator=g).float()
        x = 5.0 * torch.randn(batch, n, dim, generator=g)
        for j in planted:
            x[:, j] = torch.randn(batch, dim, generator=g) + (2 * y - 1)[:, None] * direction[j]
        out.append((x, y))
    return out


def bce(model, batch):
    x, y = batch
    return nn.functional.binary_cross_entropy_with_logits(model(x), y)


NAMES = [f"branches.{i}" for i in range(6)]


@pytest.mark.parametrize("seed", range(4))
def test_gsnr_finds_the_layers_where_the_signal_is_planted(seed):
    model = Branches(seed=seed)
    batches = planted_batches([1, 4], seed=100 + seed)
    scores = gradient_scores(model, NAMES, bce, batches, "gsnr")
    assert select_layers(scores, top_k=2) == ["branches.1", "branches.4"]
    assert select_layers(scores, ratio=1 / 3) == ["branches.1", "branches.4"]


def test_planted_data_fools_the_gradient_norm():
    """The noise slices are loud, so ranking by gradient norm alone mostly misses the planted layers."""
    hits = 0
    for seed in range(4):
        scores = gradient_scores(Branches(seed=seed), NAMES, bce, planted_batches([1, 4], seed=100 + seed),
                                 "gradnorm")
        hits += select_layers(scores, top_k=2) == ["branches.1", "branches.4"]
    assert hits < 4


def _linear_loss(targets):
    """loss = Σ ⟨W, G_b⟩ over the two layers, so the gradient of batch b is exactly G_b."""

    def loss(model, b):
        return sum((model[i].weight * targets[i][b]).sum() for i in range(2))

    return loss


def test_gsnr_and_gradnorm_hand_computed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(3, 2, bias=False))
    targets = [torch.randn(5, 2, 3), torch.randn(5, 2, 3) + 3.0]
    names = ["0", "1"]
    gsnr = gradient_scores(model, names, _linear_loss(targets), range(5), "gsnr", eps=0.0)
    gnorm = gradient_scores(model, names, _linear_loss(targets), range(5), "gradnorm")
    for name, g in zip(names, targets, strict=True):
        g = g.double()
        mu = g.mean(0)
        var = ((g - mu) ** 2).sum((1, 2)).mean()
        assert gsnr[name] == pytest.approx(((mu**2).sum() / var).item(), rel=1e-5)
        assert gnorm[name] == pytest.approx(g.flatten(1).norm(dim=1).mean().item(), rel=1e-5)
    assert gsnr["1"] > gsnr["0"]
    # Flags restored, no .grad left behind.
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_scores_subspace_layers_by_their_artifact_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(SubspaceLinear(nn.Linear(6, 6), 2, 1), SubspaceLinear(nn.Linear(6, 6), 2, 1))
    for p in model.parameters():
        p.requires_grad_(False)
    batches = [torch.randn(4, 6) for _ in range(3)]

    def loss(m, x):
        return (m(x) ** 2).mean()

    scores = gradient_scores(model, ["0", "1"], loss, batches, "gsnr", eps=0.0)
    grads = {n: [] for n in ("0", "1")}
    for x in batches:
        for n in grads:
            layer = model.get_submodule(n)
            ps = [layer.U, layer.s, layer.V]
            for p in ps:
                p.requires_grad_(True)
            flat = [g.flatten() for g in torch.autograd.grad(loss(model, x), ps)]
            grads[n].append(torch.cat(flat).double())
            for p in ps:
                p.requires_grad_(False)
    for n, gs in grads.items():
        g = torch.stack(gs)
        mu = g.mean(0)
        assert scores[n] == pytest.approx(((mu**2).sum() / ((g - mu) ** 2).sum(1).mean()).item(), rel=1e-4)
    assert not any(p.requires_grad for p in model.parameters())


def test_random_and_all_scores():
    model = Branches()
    r1 = gradient_scores(model, NAMES, bce, [], "random", seed=3)
    assert r1 == gradient_scores(model, NAMES, bce, [], "random", seed=3)
    assert r1 != gradient_scores(model, NAMES, bce, [], "random", seed=4)
    everything = gradient_scores(model, NAMES, bce, [], "all")
    assert select_layers(everything, ratio=1.0) == NAMES
    assert select_layers(everything, ratio=0.5) == NAMES[:3]  # ties keep module order


def test_gradient_scores_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown layer score"):
        gradient_scores(Branches(), NAMES, bce, [], "magic")
    with pytest.raises(ValueError, match="at least 2"):
        gradient_scores(Branches(), NAMES, bce, planted_batches([1], n_batches=1), "gsnr")


def test_select_layers_counts_and_order():
    scores = {"a": 0.1, "b": 5.0, "c": 3.0, "d": 4.0, "e": 0.0}
    assert select_layers(scores, ratio=0.5) == ["b", "c", "d"]  # ⌈2.5⌉ = 3, in the scores' order
    assert select_layers(scores, ratio=0.4) == ["b", "d"]
    assert select_layers(scores, ratio=0.01) == ["b"]  # at least one
    assert select_layers(scores, ratio=None, top_k=4) == ["a", "b", "c", "d"]
    for bad in ({"ratio": 0.0}, {"ratio": 1.5}, {"top_k": 0}, {"top_k": 6}):
        with pytest.raises(ValueError):
            select_layers(scores, **bad)


def test_plot_layer_scores_writes_png(tmp_path):
    path = tmp_path / "plots" / "scores.png"
    plot_layer_scores({f"vision_model.encoder.layers.{i}.self_attn.q_proj": 10.0**i for i in range(5)},
                      ["vision_model.encoder.layers.4.self_attn.q_proj"], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["scores.png"]  # no temp file left
