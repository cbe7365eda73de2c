"""fakemerge's average / TA / TIES / TSV-M / Iso-C / Iso-CTS against FusionBench 0.2.33 on the same inputs.

Needs `fusion_bench` importable (install it in a throwaway venv; it is not a fakemerge dependency):
    python -m venv /tmp/fbvenv && /tmp/fbvenv/bin/pip install torch==2.13.0 transformers
    /tmp/fbvenv/bin/pip install --no-deps fusion-bench==0.2.33
    /tmp/fbvenv/bin/pip install omegaconf bidict hydra-core lightning datasets peft  # what its imports need
    /tmp/fbvenv/bin/python benchmarks/fusionbench_parity.py [--specialists 3] [--seed 0]
Prints, per method, the largest error of any tensor relative to the merged update ‖θ_fb − θ0‖ (target ≤ 1e-4)
on random full-rank task vectors (1e-2 of each tensor's scale) of a tiny CLIP ViT.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

try:
    import fakemerge  # noqa: F401
except ImportError:  # running from a venv that only has fusion_bench
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from transformers import CLIPVisionModel

from fakemerge.merging import merge
from fakemerge.models.backbone import tiny_config


def make_models(n: int, seed: int) -> tuple[CLIPVisionModel, list[CLIPVisionModel]]:
    torch.manual_seed(seed)
    base = CLIPVisionModel(tiny_config()).eval()
    specialists = []
    for _ in range(n):
        m = copy.deepcopy(base)
        with torch.no_grad():
            for p in m.parameters():
                p += 1e-2 * (p.std() if p.numel() > 1 else p.abs().mean() + 1e-2) * torch.randn_like(p)
        specialists.append(m)
    return base, specialists


def fusionbench_results(base, specialists) -> dict[str, dict[str, torch.Tensor]]:
    from fusion_bench.method import SimpleAverageAlgorithm, TaskArithmeticAlgorithm, TiesMergingAlgorithm
    from fusion_bench.method.isotropic_merging.iso_utils import iso_c, iso_cts
    from fusion_bench.method.task_singular_vector.utils.TSVM_utils import compute_and_sum_svd_mem_reduction

    def pool():
        models = {f"t{i}": copy.deepcopy(m) for i, m in enumerate(specialists)}
        return {"_pretrained_": copy.deepcopy(base), **models}

    theta0 = base.state_dict()
    taus = [{k: m.state_dict()[k] - v for k, v in theta0.items()} for m in specialists]

    def plus(delta, scale):
        return {k: theta0[k] + scale * delta[k] for k in theta0}

    def ties(scaling, density, func):
        ties_merging = TiesMergingAlgorithm(scaling_factor=scaling, threshold=density, remove_keys=[],
                                            merge_func=func)
        return ties_merging.run(pool()).state_dict()

    return {
        "average": SimpleAverageAlgorithm().run(pool()).state_dict(),
        "task_arithmetic": TaskArithmeticAlgorithm(scaling_factor=0.3).run(pool()).state_dict(),
        "ties": ties(0.3, 0.2, "sum"),
        "ties_mean": ties(1.0, 0.5, "mean"),
        "ties_max": ties(0.5, 0.1, "max"),
        "tsv": plus(compute_and_sum_svd_mem_reduction(taus, accelerator="cpu"), 1.0),
        "iso_c": plus(iso_c(taus, accelerator="cpu"), 1.0),
        "iso_cts": plus(iso_cts(taus, common_space_fraction=0.8, accelerator="cpu"), 1.0),
    }


OURS = {
    "average": ("average", {}),
    "task_arithmetic": ("task_arithmetic", {"scaling": 0.3}),
    "ties": ("ties", {"density": 0.2, "scaling": 0.3, "merge_func": "sum"}),
    "ties_mean": ("ties", {"density": 0.5, "scaling": 1.0, "merge_func": "mean"}),
    "ties_max": ("ties", {"density": 0.1, "scaling": 0.5, "merge_func": "max"}),
    "tsv": ("tsv", {"alpha": 1.0}),
    "iso_c": ("iso_c", {"scaling": 1.0}),
    "iso_cts": ("iso_cts", {"common_fraction": 0.8, "scaling": 1.0}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--specialists", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    base, specialists = make_models(args.specialists, args.seed)
    reference = fusionbench_results(base, specialists)
    theta0 = base.state_dict()
    states = [m.state_dict() for m in specialists]
    print(f"{'case':<16} {'method':<16} {'max rel. error':>14}  worst tensor")
    for case, (method, params) in OURS.items():
        ours = merge(method, theta0, states, **params)
        worst, worst_key = 0.0, ""
        for key, ref in reference[case].items():
            update = (ref.double() - theta0[key].double()).norm()
            err = float((ours[key].double() - ref.double()).norm() / update.clamp_min(1e-30))
            if err > worst:
                worst, worst_key = err, key
        print(f"{case:<16} {method:<16} {worst:>14.2e}  {worst_key}")


if __name__ == "__main__":
    main()
