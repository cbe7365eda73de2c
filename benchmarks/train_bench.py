"""Training-step cost of effort / fmsd / full / linear in float32 and bf16 autocast, as ratios to a
frozen-backbone float32 forward+backward.

Reference ("frozen f+b"): every backbone parameter frozen, the head trainable, and pixel_values with
requires_grad, so the backward runs through the whole backbone down to the patch embedding (input
gradients of every layer, no weight gradients) — the least a method that trains anything inside the
backbone must pay. Each step = forward + CE (+ the method's auxiliary loss) + backward + AdamW step +
zero_grad; the methods are built by the same registry the trainer uses (fmsd: default options with random
layer choice, so no probe pass is timed). Methods are timed in interleaved rounds (one step of each per
round, after one warm-up step each), so a shared machine's load drifts hit all of them alike. Ratios use
the best (minimum) time of the rounds, which on a machine shared with other jobs estimates the
uncontended cost far more stably than the median (also printed).

Precision: `bf16` runs the forward under `torch.autocast(device, bfloat16)` — what the trainer's
`mixed_precision: bf16` does through accelerate — with the loss and the subspace branch in float32 and
float32 weights and AdamW state; the `bf16 ÷ fp32` column is each method's own speed-up. On a CPU, bf16
autocast goes through oneDNN: whether it is faster depends on the CPU's bf16 instructions (AVX512-BF16,
AMX), which the header line reports. `--device cuda` times the same on a GPU (synchronised steps) and
reports peak GPU memory per method.

Also: trainable parameters (count and % of the backbone's), and the inference time of densified
specialists vs the base model (no_grad forward, eval mode, float32).

    python benchmarks/train_bench.py --sizes tiny vitb16 --batch 8 --rounds 3 --rounds-tiny 30 --threads 2
    python benchmarks/train_bench.py --sizes vitb16 vitl14 --device cuda --batch 32 --rounds 10
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import statistics
import time
from pathlib import Path

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
    "vitl14": lambda: CLIPVisionConfig(image_size=224, patch_size=14, hidden_size=1024, num_hidden_layers=24,
                                       num_attention_heads=16, intermediate_size=4096),
}
METHODS = ("linear", "full", "effort", "fmsd")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_flags() -> str:
    """The CPU's bf16-relevant instruction sets (Linux), for the header line."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "cpu flags unknown"
    found = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    return "cpu flags: " + (" ".join(found) or "none of avx2/avx512/bf16/amx")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Setup:
    """One method's model, optimizer and auxiliary loss, ready to step at any precision (the precisions share
    the model: a step's cost does not depend on the weights' values, and one copy per method halves memory)."""

    def __init__(self, name: str, base: Detector, device: torch.device):
        self.name, self.device = name, device
        self.model = copy.deepcopy(base).to(device).train()
        self.reference = name == "frozen f+b"
        self.peak_mb: dict[str, float] = {}
        if self.reference:
            prepared = methods.get("linear").fn(self.model, {}, [])
        else:
            options = {"score": "random", "warmup_steps": 0} if name == "fmsd" else {}  # step time only
            prepared = methods.get(name).fn(self.model, options, [])
        self.prepared = prepared
        self.aux = prepared.aux_loss
        self.optimizer = torch.optim.AdamW(prepared.params, lr=1e-4)
        self.trainable = sum(p.numel() for p in prepared.params)

    def step(self, pixels: torch.Tensor, labels: torch.Tensor, precision: str) -> float:
        dtype = PRECISIONS[precision]
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        _sync(self.device)
        start = time.perf_counter()
        if self.reference:
            pixels = pixels.detach().requires_grad_()
        with torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            logits = self.model(pixels)
        loss = F.cross_entropy(logits.float(), labels)
        if self.aux is not None:
            loss = loss + self.aux()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        _sync(self.device)
        elapsed = time.perf_counter() - start
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.peak_mb[precision] = max(self.peak_mb.get(precision, 0.0), peak)
        return elapsed


@torch.no_grad()
def _infer(model: Detector, pixels: torch.Tensor) -> float:
    _sync(pixels.device)
    start = time.perf_counter()
    model(pixels)
    _sync(pixels.device)
    return time.perf_counter() - start


def bench_size(size: str, batch: int, rounds: int, infer_rounds: int, precisions: list[str],
               device: torch.device, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    config = SIZES[size]()
    base = Detector(CLIPVisionModel(config)).eval()
    backbone_params = sum(p.numel() for p in base.backbone.parameters())
    pixels = torch.randn(batch, 3, config.image_size, config.image_size, device=device)
    labels = torch.arange(batch, device=device) % 2

    t0 = time.perf_counter()
    setups = [Setup(name, base, device) for name in ("frozen f+b", *METHODS)]
    setup_s = time.perf_counter() - t0
    for s in setups:  # warm-up step at each precision
        for precision in precisions:
            s.step(pixels, labels, precision)
    times: dict[tuple[str, str], list[float]] = {(s.name, p): [] for p in precisions for s in setups}
    for _ in range(rounds):
        for precision in precisions:
            for s in setups:
                times[s.name, precision].append(s.step(pixels, labels, precision))
    ref = min(times["frozen f+b", precisions[0]])
    rows = []
    for precision in precisions:
        for s in setups:
            best = min(times[s.name, precision])
            own_fp32 = times.get((s.name, "fp32"))
            rows.append({"method": s.name, "precision": precision, "step_s": best,
                         "median_s": statistics.median(times[s.name, precision]), "ratio": best / ref,
                         "vs_fp32": best / min(own_fp32) if own_fp32 else None,
                         "peak_mb": s.peak_mb.get(precision), "trainable": s.trainable,
                         "trainable_percent": 100.0 * s.trainable / backbone_params})

    # Inference: base vs densified specialists (interleaved rounds, medians), float32.
    dense = {}
    for s in setups:
        if s.name in ("effort", "fmsd"):
            s.prepared.finalize(s.model)
            dense[s.name] = s.model.eval()
    base = base.to(device)
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
            "backbone_params": backbone_params, "device": str(device),
            "setup_s": setup_s, "steps": rows, "inference": inference}


def _print(result: dict) -> None:
    print(f"\n## {result['size']}  (batch {result['batch']}, {result['rounds']} rounds, backbone "
          f"{result['backbone_params'] / 1e6:.2f} M params, setup incl. SVDs {result['setup_s']:.1f} s)")
    gpu = result["device"].startswith("cuda")
    ref = result["steps"][0]["precision"]
    print(f"| method | precision | step (s, best) | step (s, median) | × frozen f+b {ref} (best) | ÷ own fp32 | "
          + ("peak GPU MiB | " if gpu else "") + "trainable params | % of backbone |")
    print("|---|---|---:|---:|---:|---:|" + ("---:|" if gpu else "") + "---:|---:|")
    for r in result["steps"]:
        speed = "" if r["precision"] == "fp32" or r["vs_fp32"] is None else f"{r['vs_fp32']:.2f}"
        peak = f" {r['peak_mb']:.0f} |" if gpu else ""
        print(f"| {r['method']} | {r['precision']} | {r['step_s']:.4f} | {r['median_s']:.4f} | {r['ratio']:.2f} | "
              f"{speed} |{peak} {r['trainable']:,} | {r['trainable_percent']:.3f} |")
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
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=list(PRECISIONS),
                        help="the first is the reference of the × column (fp16 needs a GPU)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda" else
             f"{platform.processor() or platform.machine()}, {cpu_flags()}")
    print(f"torch {torch.__version__}, {args.threads} threads, {where}, load average {os.getloadavg()[0]:.2f}")
    results = [bench_size(size, args.batch, args.rounds_tiny if size == "tiny" else args.rounds,
                          args.infer_rounds, args.precisions, device) for size in args.sizes]
    for r in results:
        _print(r)
    if args.json:
        from fakemerge.io import write_json

        write_json(args.json, {"threads": args.threads, "torch": torch.__version__, "device": where,
                               "results": results})
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
