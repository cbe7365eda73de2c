"""Ablations that change one thing each, trained on one family (ABLATION_FAMILY) beside the default.

FMSD (default: K=2, d=4, ρ=0.5, gsnr, λ_orth=λ_spec=0.1, head warm-up on batches that are not scored):
- layer selection at equal budget (the same ρ, the same warm-up): gradnorm, random; `all` = no masking;
- the sweep of the spec's open sizes and weights: K ∈ {1, 4}, d ∈ {1, 8}, λ_spec ∈ {0, 1}, λ_orth ∈ {0, 1}, and
  both losses off.
Effort's own optimizer (Adam with weight decay 5e-4 as an L2 term, constant lr; config.EFFORT_RECIPE) against
the default (AdamW, no decay, cosine): once at the demo's subspace lr, once with Effort's lr 2e-4 as well.
Defaults are compared on the training family's validation AUC (what the trainer selects on); test numbers,
cross-family included, are only reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fakemerge.config import EFFORT_RECIPE

ABLATION_FAMILY = "FS"


@dataclass(frozen=True)
class Variant:
    name: str  # entry name: <name>-<family>
    method: str  # training method
    options: dict = field(default_factory=dict)  # method options
    settings: dict = field(default_factory=dict)  # TrainConfig overrides (optimizer, schedule, lr, ...)
    question: str = ""  # what the comparison with the default answers


def variants(seed: int) -> list[Variant]:
    """Every ablation variant; `random` layer selection draws its layers from the run's seed."""
    fmsd = [
        Variant("fmsd-gradnorm", "fmsd", {"score": "gradnorm"}, question="selection: gradient norm vs GSNR"),
        Variant("fmsd-random", "fmsd", {"score": "random", "seed": seed}, question="selection: random vs GSNR"),
        Variant("fmsd-all", "fmsd", {"score": "all"}, question="masking off (all layers) vs GSNR"),
        Variant("fmsd-K1", "fmsd", {"subspaces": 1}, question="K = 1 vs 2"),
        Variant("fmsd-K4", "fmsd", {"subspaces": 4}, question="K = 4 vs 2"),
        Variant("fmsd-d1", "fmsd", {"rank": 1}, question="d = 1 vs 4"),
        Variant("fmsd-d8", "fmsd", {"rank": 8}, question="d = 8 vs 4"),
        Variant("fmsd-spec0", "fmsd", {"lambda_spec": 0.0}, question="λ_spec = 0 vs 0.1"),
        Variant("fmsd-spec1", "fmsd", {"lambda_spec": 1.0}, question="λ_spec = 1 vs 0.1"),
        Variant("fmsd-orth0", "fmsd", {"lambda_orth": 0.0}, question="λ_orth = 0 vs 0.1"),
        Variant("fmsd-orth1", "fmsd", {"lambda_orth": 1.0}, question="λ_orth = 1 vs 0.1"),
        Variant("fmsd-no_losses", "fmsd", {"lambda_orth": 0.0, "lambda_spec": 0.0}, question="both losses off"),
    ]
    optimizer = {k: v for k, v in EFFORT_RECIPE.items() if k != "lr"}
    effort = [
        Variant("effort-adam_l2", "effort", settings=optimizer,
                question="Effort's optimizer (Adam, L2 5e-4, constant lr) at the demo's lr vs AdamW + cosine"),
        Variant("effort-recipe", "effort", settings=dict(EFFORT_RECIPE),
                question="Effort's whole recipe (lr 2e-4 too) vs the demo's default"),
    ]
    return fmsd + effort


def reference(variant: Variant) -> str:
    """The default model a variant is compared with: its method's specialist on ABLATION_FAMILY."""
    from fakemerge.study.entries import prefix

    return f"{prefix(variant.method)}{ABLATION_FAMILY}"
