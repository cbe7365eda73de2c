"""Training methods `effort` and `fmsd`: SVD subspace fine-tuning of the backbone + the head (FMSD, Zhang et
al., arXiv 2601.01041; Effort, Yan et al., ICML 2025).

effort: K = 1, d = 1 on every attention projection; CE only by default (as Effort's released code), the
        paper's orthonormality / energy terms available with their own weights.
fmsd:   forgery-aware layer masking (a head warm-up, then score candidates on other probe batches, keep the
        top ρ or top-k) + K artifact subspaces of rank d in the selected layers + orthogonality and spectral
        losses. Every layer selection (gsnr, gradnorm, random, all, explicit layers) starts training from
        the same warmed-up head, so an ablation of the selection changes the selection only. Defaults
        (K=2, d=4, ρ=0.5, gsnr, λ_orth=λ_spec=0.1) are compared with their alternatives on validation by
        benchmarks/quality.py. With rescore_every_epoch, every candidate carries subspaces and the
        selection is re-made at the start of each epoch from the artifact parameters' own gradients
        (`_LayerMask`).
Both densify in `finalize`, so a specialist is an ordinary checkpoint of the base architecture whose
task vector is nonzero only in decomposed layers, with rank ≤ 2·K·d per matrix. K = d = 1 on every
attention layer with no warm-up and no losses is Effort exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from torch import nn

from fakemerge.config import first_error
from fakemerge.errors import InputError
from fakemerge.keys import PREFIX
from fakemerge.models.detector import Detector
from fakemerge.models.layer_mask import gradient_scores, plot_layer_scores, select_layers
from fakemerge.models.subspace import (
    ATTENTION,
    MLP,
    densify,
    energy_loss,
    inject_subspaces,
    linear_names,
    orthogonality_loss,
    orthonormality_loss,
    spectral_loss,
    subspace_layers,
    tail_energy_ratio,
)
from fakemerge.training.prepared import Prepared, freeze_all_but, register_method


class EffortOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lambda_orthonormal: float = 0.0  # Effort paper's L_orth (released code: off)
    lambda_energy: float = 0.0  # relative form of Effort's L_ksv (released code: off)


class FmsdOptions(EffortOptions):
    subspaces: int = 2  # K
    rank: int = 4  # d
    layer_ratio: float = 0.5  # ρ, used when top_k is not given
    top_k: int | None = None
    score: Literal["gsnr", "gradnorm", "random", "all"] = "gsnr"  # "all" ignores layer_ratio / top_k
    probe_batches: int = 8  # B: the batches the layers are scored on
    warmup_batches: int = 8  # the head warm-up's batches, drawn before (and disjoint from) the scored ones
    warmup_steps: int = 50  # head-only steps on the warm-up batches' cached features (0: no warm-up)
    warmup_lr: float = 1e-3
    include_mlp: bool = False
    lambda_orth: float = 0.1
    lambda_spec: float = 0.1
    rescore_every_epoch: bool = False
    layers: list[str] | None = None  # explicit selection (canonical names): skips scoring
    seed: int = 0  # for score="random"

    @model_validator(mode="after")
    def _check(self):
        if self.rescore_every_epoch and (self.score not in ("gsnr", "gradnorm") or self.layers is not None):
            raise ValueError("rescore_every_epoch needs score gsnr or gradnorm and no explicit layers")
        if self.subspaces < 1 or self.rank < 1 or self.probe_batches < 2 or self.warmup_steps < 0 \
                or self.warmup_batches < 1:
            raise ValueError("subspaces and rank must be >= 1, probe_batches >= 2, warmup_batches >= 1, "
                             "warmup_steps >= 0")
        if not 0 < self.layer_ratio <= 1:
            raise ValueError(f"layer_ratio must be in (0, 1], got {self.layer_ratio}")
        return self


def _parse(cls: type[BaseModel], method: str, options: dict):
    try:
        return cls(**options)
    except ValidationError as e:
        where, msg = first_error(e, "options")
        raise InputError(f"--method {method} option {where}: {msg}") from None


def canonical_name(name: str) -> str:
    """Backbone module name in the hub spelling used by model files (`vision_model.encoder...`)."""
    return name if name.startswith(PREFIX) else PREFIX + name


def _pixels_labels(batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels, labels[, indices]) from the training loader; rows of unreadable images (label -1) dropped."""
    pixels, labels = batch[0], batch[1]
    good = labels >= 0
    return pixels[good].to(device), labels[good].to(device)


Batches = list[tuple[torch.Tensor, torch.Tensor]]


def _probe(detector: Detector, probe_loader: Iterable, warm: int, scored: int) -> tuple[Batches, Batches]:
    """`warm` head warm-up batches, then `scored` other batches for the layer scores (one pass, disjoint)."""
    device = next(detector.parameters()).device
    batches = [_pixels_labels(b, device) for b in itertools.islice(probe_loader, warm + scored)]
    batches = [b for b in batches if len(b[1])]
    if len(batches) < warm + scored:
        raise InputError(f"layer masking: needs {warm} warm-up + {scored} probe batches of training data, "
                         f"the training split gives {len(batches)} (lower warmup_batches or probe_batches)")
    return batches[:warm], batches[warm:]


def _warm_up_head(detector: Detector, batches: Batches, steps: int, lr: float) -> None:
    """Train the head alone on the warm-up batches' features (computed once), so the scored gradients carry
    a forgery signal instead of a random head's. Training then starts from this warmed-up head, whatever
    the layer selection; the scored batches are other ones, so the scores do not reward the warm-up's fit."""
    if steps == 0:
        return
    with torch.no_grad():
        feats = [(detector.features(x), y) for x, y in batches]
    for p in detector.head.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(detector.head.parameters(), lr=lr)
    for step in range(steps):
        f, y = feats[step % len(feats)]
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(detector.head(f), y).backward()
        opt.step()
    for p in detector.head.parameters():
        p.grad = None


def _ce(detector: Detector, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(detector(x), y)


def _choose_layers(detector: Detector, opts: FmsdOptions, candidates: list[str],
                   probe_loader: Iterable) -> tuple[list[str], dict[str, float], Batches]:
    """Warm up the head, then the selected candidate names (relative to the backbone), every candidate's
    score, the scored batches."""
    by_canonical = {canonical_name(n): n for n in candidates}
    if opts.layers is not None:
        unknown = [n for n in opts.layers if n not in by_canonical]
        if unknown or not opts.layers:
            raise InputError(f"--method fmsd option layers: not candidate layers: {unknown[:3] or '[]'}")
    gradient = opts.layers is None and opts.score in ("gsnr", "gradnorm")
    was_training = detector.training
    detector.eval()  # deterministic warm-up and probe (no dropout); the trainer sets its own mode afterwards
    warm, batches = _probe(detector, probe_loader, opts.warmup_batches if opts.warmup_steps else 0,
                           opts.probe_batches if gradient else 0)
    _warm_up_head(detector, warm, opts.warmup_steps, opts.warmup_lr)
    if opts.layers is not None:
        selected, scores = [n for n in candidates if canonical_name(n) in set(opts.layers)], {}
    elif opts.score == "all":  # every candidate, whatever the ratio (with attention only: Effort's layers)
        selected, scores = list(candidates), {}
    else:
        loss = _ce if opts.score == "random" else (lambda _, b: _ce(detector, b))
        scores = gradient_scores(detector.backbone, candidates, loss, batches, opts.score, seed=opts.seed)
        selected = select_layers(scores, ratio=opts.layer_ratio, top_k=opts.top_k)
    detector.train(was_training)
    return selected, scores, batches


def _prepare(detector: Detector, layers: list[str], opts: EffortOptions, subspaces: int, rank: int,
             lambdas: dict[str, float], extra: dict, mask: _LayerMask | None = None) -> Prepared:
    """Inject subspaces into `layers` (with a mask: into all its candidates, training only the selected)."""
    freeze_all_but(detector, [])
    backbone_size = sum(p.numel() for p in detector.backbone.parameters())  # before the SVD split
    targets = layers if mask is None else mask.candidates
    originals = {n: detector.backbone.get_submodule(n) for n in targets}  # kept only by a mask
    try:
        inject_subspaces(detector.backbone, ATTENTION + MLP, subspaces=subspaces, rank=rank, layers=targets,
                         keep_basis=opts.lambda_orthonormal > 0)
    except ValueError as e:
        raise InputError(f"--subspaces/--rank: {e}") from None
    params = [p for layer in subspace_layers(detector.backbone).values() for p in layer.parameters()]
    params += list(detector.head.parameters())
    freeze_all_but(detector, params)
    terms = {"orth": orthogonality_loss, "spec": spectral_loss, "orthonormal": orthonormality_loss,
             "energy": energy_loss}
    active = {k: w for k, w in lambdas.items() if w}
    decomposed = nn.ModuleList(subspace_layers(detector.backbone).values())  # not a tree walk per step
    if mask is not None:
        mask.attach(detector, originals)

    def aux_loss() -> torch.Tensor:
        trained = decomposed if mask is None else mask.selected_modules  # masked layers do not train
        return sum(w * terms[k](trained) for k, w in active.items())

    meta = {"selected_layers": [canonical_name(n) for n in layers], "subspaces": subspaces, "rank": rank,
            **extra}

    def finalize(model: Detector) -> dict:
        trained = decomposed if mask is None else mask.selected_modules
        with torch.no_grad():  # what the losses hold, measured on the saved weights (unweighted)
            spectrum = {"tail_energy_ratio": tail_energy_ratio(trained),
                        **{f"loss_{k}": float(terms[k](trained)) for k in ("orth", "spec")}}
        if mask is not None:
            mask.restore_untouched(model)
        densify(model.backbone)
        for p in model.parameters():
            p.requires_grad_(False)
        return {**meta, "spectrum": spectrum}

    trainable = sum(p.numel() for p in params)
    info = {"trainable_params": trainable, "backbone_params": backbone_size,
            "trainable_percent": 100.0 * trainable / backbone_size,
            "selected_layers": meta["selected_layers"]}
    hooks = {"on_epoch": mask.on_epoch, "before_step": mask.before_step} if mask is not None else {}
    return Prepared(params=params, aux_loss=aux_loss if active else None, finalize=finalize, info=info,
                    write_artifacts=_plot_scores, **hooks)


def _plot_scores(out, extra: dict) -> None:
    """FMSD's artefact: the layer scores of the saved weights, selected layers highlighted (OUT.layers.png)."""
    if extra.get("layer_scores"):
        plot_layer_scores(extra["layer_scores"], extra["selected_layers"], out.with_suffix(".layers.png"))


class _LayerMask:
    """Layer masking re-scored every epoch. Every candidate carries subspaces; only the selected ones train.

    An unselected layer keeps its initial U, s, V: its gradients are dropped before each optimizer step, and
    a layer that leaves the selection is reset to its initial values with its optimizer state cleared (so
    one that re-enters starts from its init). Each epoch's selection is a function of the trainable tensors
    and the fixed probe batches alone, so a resumed run re-makes it exactly. `finalize` puts the original
    Linear back in every layer still at its init: the specialist equals the base there bit for bit.
    """

    def __init__(self, candidates: list[str], selected: list[str], scores: dict[str, float], batches: list,
                 opts: FmsdOptions):
        self.candidates, self.selected, self.scores = candidates, selected, scores
        self.batches, self.opts = batches, opts

    def attach(self, detector: Detector, originals: dict[str, nn.Linear]) -> None:
        self.detector, self.originals = detector, originals
        self.layers = {n: detector.backbone.get_submodule(n) for n in self.candidates}
        self.init = {n: [p.detach().clone() for p in layer.parameters()] for n, layer in self.layers.items()}
        self._apply()

    def _apply(self) -> None:
        chosen = set(self.selected)
        self.selected_modules = nn.ModuleList(self.layers[n] for n in self.selected)
        self.masked = [p for n, layer in self.layers.items() if n not in chosen for p in layer.parameters()]

    def on_epoch(self, epoch: int, optimizer: torch.optim.Optimizer) -> dict:
        if epoch > 0:  # epoch 0 trains the selection made at preparation
            self._rescore(optimizer)
        return {"selected_layers": [canonical_name(n) for n in self.selected],
                "layer_scores": {canonical_name(n): s for n, s in self.scores.items()}}

    def _rescore(self, optimizer: torch.optim.Optimizer) -> None:
        detector = self.detector
        device = next(detector.parameters()).device
        batches = [(x.to(device), y.to(device)) for x, y in self.batches]
        was_training = detector.training
        detector.eval()
        self.scores = gradient_scores(detector.backbone, self.candidates, lambda _, b: _ce(detector, b),
                                      batches, self.opts.score)
        detector.train(was_training)
        self.selected = select_layers(self.scores, ratio=self.opts.layer_ratio, top_k=self.opts.top_k)
        self._apply()
        with torch.no_grad():  # every unselected layer back to its init (a no-op for those already there)
            for n in set(self.candidates) - set(self.selected):
                for p, p0 in zip(self.layers[n].parameters(), self.init[n], strict=True):
                    p.copy_(p0)
                    optimizer.state.pop(p, None)

    def before_step(self) -> None:
        for p in self.masked:
            p.grad = None

    def restore_untouched(self, model: Detector) -> None:
        for n, layer in self.layers.items():
            params = layer.parameters()
            if all(torch.equal(p.detach(), p0) for p, p0 in zip(params, self.init[n], strict=True)):
                parent, _, child = n.rpartition(".")
                setattr(model.backbone.get_submodule(parent), child, self.originals[n].to(layer.U.device))


@register_method("effort", default_lr=2e-4)
def effort(detector: Detector, options: dict, probe_loader: Iterable) -> Prepared:
    """Effort: rank-1 residual subspace (the smallest singular triplet) in every attention projection."""
    opts = _parse(EffortOptions, "effort", options)
    layers = linear_names(detector.backbone, ATTENTION)
    lambdas = {"orthonormal": opts.lambda_orthonormal, "energy": opts.lambda_energy}
    return _prepare(detector, layers, opts, 1, 1, lambdas, {})


@register_method("fmsd", default_lr=2e-4)
def fmsd(detector: Detector, options: dict, probe_loader: Iterable) -> Prepared:
    """FMSD: layer masking by gradient signal-to-noise, then K rank-d artifact subspaces per chosen layer."""
    opts = _parse(FmsdOptions, "fmsd", options)
    candidates = linear_names(detector.backbone, ATTENTION + MLP if opts.include_mlp else ATTENTION)
    freeze_all_but(detector, [])
    selected, scores, batches = _choose_layers(detector, opts, candidates, probe_loader)
    lambdas = {"orth": opts.lambda_orth, "spec": opts.lambda_spec, "orthonormal": opts.lambda_orthonormal,
               "energy": opts.lambda_energy}
    extra = {"score": opts.score if opts.layers is None else "given",
             "layer_scores": {canonical_name(n): s for n, s in scores.items()}}
    mask = _LayerMask(candidates, selected, scores, batches, opts) if opts.rescore_every_epoch else None
    return _prepare(detector, selected, opts, opts.subspaces, opts.rank, lambdas, extra, mask)
