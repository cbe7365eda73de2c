"""Training-step cost of effort / fmsd / full / linear, as ratios to a frozen-backbone forward+backward.

Reference ("frozen f+b"): every backbone parameter frozen, the head trainable, and pixel_values with
requires_grad, so the backward runs through the whole backbone down to the patch embedding (input
gradients of every layer, no weight gradients) — the least a method that trains anything inside the
backbone must pay. Each step = forward + CE (+ the method's auxiliary loss) + backward + AdamW step +
zero_grad; the methods are built by the same registry the trainer uses (fmsd: default options with random
layer choice, so no probe pass is timed). Methods are timed in interleaved rounds (one step of each per
round, after one warm-up step each), so a shared machine's load drifts hit all of them alike. Ratios use
the best (minimum) time of the rounds, which on a machine shared with other jobs estimates the
uncontended cost far more stably than the median (also printed).

Also: trainable parameters (count and % of the backbone's), and the inference time of densified
specialists vs the base model (no_grad forward, eval mode).

    python benchmarks/train_bench.py --sizes tiny vitb16 --batch 8 --rounds 3 --rounds-tiny 30 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from transformers import CLIPVisionConfig, CLIPVisionModel  # noqa: E402

from fakemerge.models.backbone import tiny_config  # noqa: E402
from fakemerge.models.detector import Detector  # noqa: E402
from fakemerge.training import methods  # noqa: E402

SIZES = {
    "tiny": tiny_config,
    "vitb16": lambda: CLIPVisionConfig(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12,
                                       num_attention_heads=12, intermediate_size=3072),
}
METHODS = ("linear", "full", "effort", "fmsd")


class Setup:
    """One method's model, optimizer and auxiliary loss, ready to step."""

    def __init__(self, name: str, base: Detector):
        self.name = name
        self.model = copy.deepcopy(base).train()
        self.reference = name == "frozen f+b"
        if self.reference:
            prepared = methods.get("linear").fn(self.model, {}, [])
        else:
            options = {"score": "random"} if name == "fmsd" else {}
            prepared = methods.get(name).fn(self.model, options, [])
        self.prepared = prepared
        self.aux = prepared.aux_loss
        self.optimizer = torch.optim.AdamW(prepared.params, lr=1e-4)
        self.trainable = sum(p.numel() for p in prepared.params)

    def step(self, pixels: torch.Tensor, labels: torch.Tensor) -> float:
        start = time.perf_counter()
        if self.reference:
            pixels = pixels.detach().requires_grad_()
        loss = F.cross_entropy(self.model(pixels), labels)
        if self.aux is not None:
            loss = loss + self.aux()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start


@torch.no_grad()
def _infer(model: Detector, pixels: torch.Tensor) -> float:
    start = time.perf_counter()
    model(pixels)
    return time.perf_counter() - start


def bench_size(size: str, batch: int, rounds: int, infer_rounds: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    config = SIZES[size]()
    base = Detector(CLIPVisionModel(config)).eval()
    backbone_params = sum(p.numel() for p in base.backbone.parameters())
    pixels = torch.randn(batch, 3, config.image_size, config.image_size)
    labels = torch.arange(batch) % 2

    t0 = time.perf_counter()
    setups = [Setup(name, base) for name in ("frozen f+b", *METHODS)]
    setup_s = time.perf_counter() - t0
    for s in setups:  # warm-up step
        s.step(pixels, labels)
    times: dict[str, list[float]] = {s.name: [] for s in setups}
    for _ in range(rounds):
        for s in setups:
            times[s.name].append(s.step(pixels, labels))
    ref = min(times["frozen f+b"])
    rows = []
    for s in setups:
        best = min(times[s.name])
        rows.append({"method": s.name, "step_s": best, "median_s": statistics.median(times[s.name]),
                     "ratio": best / ref, "trainable": s.trainable,
                     "trainable_percent": 100.0 * s.trainable / backbone_params})

    # Inference: base vs densified specialists (interleaved rounds, medians).
    dense = {}
    for s in setups:
        if s.name in ("effort", "fmsd"):
            s.prepared.finalize(s.model)
            dense[s.name] = s.model.eval()
    infer_models = {"base": base, **dense}
    for m in infer_models.values():
        _infer(m, pixels)
    infer: dict[str, list[float]] = {k: [] for k in infer_models}
    for _ in range(infer_rounds):
        for k, m in infer_models.items():
            infer[k].append(_infer(m, pixels))
    base_inf = min(infer["base"])
    inference = {k: {"forward_s": min(v), "median_s": statistics.median(v), "ratio": min(v) / base_inf}
                 for k, v in infer.items()}
    return {"size": size, "batch": batch, "rounds": rounds, "infer_rounds": infer_rounds,
            "backbone_params": backbone_params,
            "setup_s": setup_s, "steps": rows, "inference": inference}


def _print(result: dict) -> None:
    print(f"\n## {result['size']}  (batch {result['batch']}, {result['rounds']} rounds, backbone "
          f"{result['backbone_params'] / 1e6:.2f} M params, setup incl. SVDs {result['setup_s']:.1f} s)")
    print("| method | step (s, best) | step (s, median) | × frozen f+b (best) | trainable params | "
          "% of backbone |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in result["steps"]:
        print(f"| {r['method']} | {r['step_s']:.4f} | {r['median_s']:.4f} | {r['ratio']:.2f} | "
              f"{r['trainable']:,} | {r['trainable_percent']:.3f} |")
    print(f"\n| inference model ({result['infer_rounds']} rounds) | forward (s, best) | median | "
          "× base (best) |")
    print("|---|---:|---:|---:|")
    for name, r in result["inference"].items():
        label = name if name == "base" else f"{name} (densified)"
        print(f"| {label} | {r['forward_s']:.4f} | {r['median_s']:.4f} | {r['ratio']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "vitb16"], choices=list(SIZES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds at ViT-B/16 size")
    parser.add_argument("--rounds-tiny", type=int, default=30, help="timed rounds at the tiny size")
    parser.add_argument("--infer-rounds", type=int, default=10, help="timed inference rounds (both sizes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}")
    results = [bench_size(size, args.batch, args.rounds_tiny if size == "tiny" else args.rounds,
                          args.infer_rounds) for size in args.sizes]
    for r in results:
        _print(r)
    if args.json:
        from fakemerge.io import write_json

        write_json(args.json, {"threads": args.threads, "torch": torch.__version__, "results": results})


if __name__ == "__main__":
    main()
