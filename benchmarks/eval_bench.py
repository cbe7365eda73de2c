"""Evaluation throughput: images/s of the eval pipeline against the bare model forward on the same batches.

The pipeline is `evaluation.runner.predict` over PNG crops on disk: read + decode + preprocess (optionally in
data-loader workers, overlapped with the forward), batch, forward, scores streamed to a CSV. The reference
("bare forward") is the same model on the same batches, already decoded and preprocessed into tensors in
memory: what evaluation would cost if decoding were free. Target (issue 13.7): pipeline ≥ 0.9× the bare
forward. Also timed alone: decoding + preprocessing (the dataset iterated without a model), so the table
shows where the time goes. The in-process decoded-image cache is off (a real test set does not fit in it).

`--device cuda` runs the forward on a GPU (the bare forward's batches already there; the pipeline's
batches pinned and copied without blocking, decoding in the workers).

Two ratios. "× bare forward": the pipeline's images/s over the separate bare-forward passes' (variants
timed in interleaved rounds, one pass of each per round after a warm-up pass each; best round, median also
printed). "forward share": within each pipeline pass, the time spent in the model's forward (the same
batches) over the pass's wall time — measured in one and the same pass, so it is immune to the load drifts
of a shared machine that make separate passes differ by 2× there; it is the fraction of the bare-forward
speed the pipeline keeps (best round) — but only where nothing else of ours runs on the forward's cores:
loader workers on the same CPU cores slow the forward itself, which only "× bare forward" shows. On a GPU
the timed forward ends with a synchronisation.

    python benchmarks/eval_bench.py --sizes tiny vitb16 --threads 2 --workers 0 1
    python benchmarks/eval_bench.py --sizes vitb16 --device cuda --workers 0 4 8 --images 2048 --batch 128
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import CLIPVisionConfig, CLIPVisionModel  # noqa: E402

from fakemerge.config import EvalOptions  # noqa: E402
from fakemerge.data import dataset as dataset_module  # noqa: E402
from fakemerge.data.records import Record  # noqa: E402
from fakemerge.evaluation.runner import predict  # noqa: E402
from fakemerge.models.backbone import tiny_config  # noqa: E402
from fakemerge.models.detector import Detector  # noqa: E402

SIZES = {  # model config, stored crop size (px), images, batch
    "tiny": (lambda: tiny_config(), 64, 512, 128),
    "vitb16": (lambda: CLIPVisionConfig(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12,
                                        num_attention_heads=12, intermediate_size=3072), 256, 32, 8),
}


def write_crops(directory: Path, n: int, size: int) -> list[Record]:
    """n face-crop-like PNGs (smooth colour fields + sensor noise, so they compress like photos)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    records = []
    for i in range(n):
        a = rng.uniform(0, 1, (3, 4))
        image = np.stack([a[c, 0] * xx + a[c, 1] * yy + a[c, 2] * np.sin(6 * xx * a[c, 3]) for c in range(3)], -1)
        image = np.clip(image * 180 + 40 + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
        rel = f"img/{i:05d}.png"
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(directory / rel), image)
        records.append(Record(rel, i % 2, "real" if i % 2 == 0 else "FS", f"v{i // 4}", "test"))
    return records


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward(detector: Detector, batches: list[torch.Tensor]) -> float:
    device = batches[0].device
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for x in batches:
            detector.predict_proba(x).cpu()  # the scores come back, as in the pipeline
    _sync(device)
    return time.perf_counter() - start


def decode_only(root: Path, records: list[Record], detector: Detector, batch: int, workers: int) -> float:
    data = dataset_module.ImageDataset(root, records, detector.preprocessing)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, num_workers=workers)
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def pipeline(root: Path, records: list[Record], detector: Detector, batch: int, workers: int,
             out: Path) -> tuple[float, float]:
    """(pass wall time, time inside the model's forward during the pass)."""
    device = next(detector.parameters()).device
    options = EvalOptions(batch_size=batch, num_workers=workers, device=str(device))
    inside = [0.0]
    forward = detector.predict_proba

    def timed(x):
        t0 = time.perf_counter()
        scores = forward(x)
        _sync(device)
        inside[0] += time.perf_counter() - t0
        return scores

    detector.predict_proba = timed
    try:
        start = time.perf_counter()
        predict(detector, root, records, out, options=options)
        return time.perf_counter() - start, inside[0]
    finally:
        del detector.predict_proba  # back to the class's method


def bench_size(size: str, workers: list[int], rounds: int, tmp: Path, device: torch.device,
               images: int | None = None, batch: int | None = None) -> dict:
    make_config, crop, n, default_batch = SIZES[size]
    n, batch = images or n, batch or default_batch
    torch.manual_seed(0)
    detector = Detector(CLIPVisionModel(make_config())).eval().to(device)
    root = tmp / size
    records = write_crops(root, n, crop)
    data = dataset_module.ImageDataset(root, records, detector.preprocessing)
    tensors = [torch.stack([data[i][0] for i in range(s, min(s + batch, n))]).to(device) for s in range(0, n, batch)]
    variants = {"bare forward": lambda: bare_forward(detector, tensors)}
    variants["decode only, 0 workers"] = lambda: decode_only(root, records, detector, batch, 0)
    for w in workers:
        variants[f"eval pipeline, {w} workers"] = lambda w=w: pipeline(root, records, detector, batch, w,
                                                                       tmp / f"{size}-{w}.csv")
    times: dict[str, list[float]] = {k: [] for k in variants}
    shares: dict[str, list[float]] = {k: [] for k in variants if k.startswith("eval")}
    for fn in variants.values():  # warm-up (page cache, allocator, worker start paths)
        fn()
    for _ in range(rounds):
        for name, fn in variants.items():
            t = fn()
            if name in shares:
                t, inside = t
                shares[name].append(inside / t)
            times[name].append(t)
    ref = min(times["bare forward"])
    rows = [{"variant": k, "best_s": min(v), "median_s": statistics.median(v), "images_per_s": n / min(v),
             "vs_forward": ref / min(v), "forward_share": max(shares[k]) if k in shares else None}
            for k, v in times.items()]
    return {"size": size, "images": n, "crop": crop, "batch": batch, "rounds": rounds, "device": str(device),
            "rows": rows}


def _print(result: dict) -> None:
    print(f"\n## {result['size']} on {result['device']}  ({result['images']} PNG crops of {result['crop']} px, "
          f"batch {result['batch']}, {result['rounds']} rounds)")
    print("| variant | pass (s, best) | median (s) | images/s | × bare forward | forward share (same pass) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        share = "" if r["forward_share"] is None else f"{r['forward_share']:.3f}"
        print(f"| {r['variant']} | {r['best_s']:.3f} | {r['median_s']:.3f} | {r['images_per_s']:.3g} | "
              f"{r['vs_forward']:.2f} | {share} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--images", type=int, help="images per pass (default by size)")
    parser.add_argument("--batch", type=int, help="batch size (default by size)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset_module.DECODED.max_bytes = 0  # decode every pass, as on a test set larger than the cache
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} cores, {where}, "
          f"load average {os.getloadavg()[0]:.2f}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            results.append(bench_size(size, args.workers, args.rounds, Path(tmp), device, args.images, args.batch))
            _print(results[-1])
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        from fakemerge.io import write_json

        write_json(args.json, {"threads": args.threads, "torch": torch.__version__, "results": results})


if __name__ == "__main__":
    main()
