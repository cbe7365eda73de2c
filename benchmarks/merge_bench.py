"""Merge benchmark: time and peak memory of every method on ViT-B/16-sized specialists (random weights).

Each merge runs in its own subprocess (clean peak RSS, `resource.getrusage`), through the real file engine
(`merge_files`: lazy reads, scan pass, streamed write). Reported as ratios to `average` measured in the same
run, plus the `--add` re-merge (3 → 4 specialists from the stored recipe) against the first 4-way R²M merge,
and one R²M merge at ViT-L/14 size. Targets (DESIGN.md): R²M ≤ 2× average at ViT-B/16, ViT-L/14 ≤ 60 s,
memory streamed (≈ base + one specialist + a few tensors, never N models).

    .venv/bin/python benchmarks/merge_bench.py                 # everything (~5 min on 2 cores)
    .venv/bin/python benchmarks/merge_bench.py --methods average r2m --no-large
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

SIZES = {"ViT-B/16": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                          num_attention_heads=12, patch_size=16, image_size=224),
         "ViT-L/14": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                          num_attention_heads=16, patch_size=14, image_size=224)}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def make_files(directory: Path, size: str, n: int) -> tuple[Path, list[Path]]:
    """A random base and n specialists (base + 1e-3 noise), written tensor by tensor (low memory)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from fakemerge.io import atomic_path
    from fakemerge.io.safetensors import LazyState, SafetensorsWriter, tensors_sha256
    from fakemerge.keys import canonical
    from fakemerge.models.backbone import config_to_dict
    from fakemerge.models.detector import ModelMeta

    directory.mkdir(parents=True, exist_ok=True)
    config = CLIPVisionConfig(**SIZES[size], projection_dim=SIZES[size]["hidden_size"])
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in canonical(CLIPVisionModel(config).state_dict()).items()}
    hidden = config.hidden_size
    layout = {k: (torch.float32, s) for k, s in shapes.items()}
    layout |= {"head.weight": (torch.float32, (2, hidden)), "head.bias": (torch.float32, (2,))}

    def write(path: Path, meta: ModelMeta, seed: int | None) -> None:
        if path.is_file():
            return
        with atomic_path(path) as tmp, SafetensorsWriter(tmp, layout, meta.to_header()) as w:
            for i, (k, shape) in enumerate(shapes.items()):
                t = torch.randn(shape, generator=torch.Generator().manual_seed(i)) * 0.02
                if seed is not None:
                    g = torch.Generator().manual_seed(seed * 100_000 + i)
                    t += torch.randn(shape, generator=g) * 1e-3
                w.write(k, t)
            g = torch.Generator().manual_seed(seed or 0)
            w.write("head.weight", torch.randn(2, hidden, generator=g))
            w.write("head.bias", torch.randn(2, generator=g))

    cfg = config_to_dict(config)
    base = directory / "base.safetensors"
    write(base, ModelMeta(kind="base", base_id=f"random-{size}", backbone_config=cfg), None)
    base_hash = tensors_sha256(LazyState(base))
    specs = [directory / f"spec{i}.safetensors" for i in range(n)]
    for i, p in enumerate(specs):
        meta = ModelMeta(kind="specialist", families=[f"F{i}"], base_id=f"random-{size}", base_hash=base_hash,
                         backbone_config=cfg)
        write(p, meta, i + 1)
    return base, specs


def child(args: argparse.Namespace) -> None:
    """One measured merge; prints a JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    from fakemerge.merging.engine import add_specialists, merge_files
    from fakemerge.merging.recipe import Recipe

    start_rss = rss_mb()
    t0 = time.perf_counter()
    if args.add_from:
        add_specialists(args.add_from, args.specs, args.out)
    else:
        merge_files(Recipe(args.method, args.base, args.specs, json.loads(args.params)), args.out)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_rss_mb": rss_mb(), "start_rss_mb": start_rss}))


def measure(method: str, base: Path, specs: list[Path], out: Path, threads: int, params: dict | None = None,
            add_from: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", "--method", method, "--base", str(base), "--out", str(out),
           "--threads", str(threads), "--params", json.dumps(params or {}), "--specs", *map(str, specs)]
    if add_from:
        cmd += ["--add-from", str(add_from)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{method} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as f:
        cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    return f"{cpu}, {os.cpu_count()} cores visible"


def main() -> None:
    from fakemerge.merging import METHODS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--specialists", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/fakemerge_merge_bench"))
    p.add_argument("--no-large", action="store_true", help="skip the ViT-L/14 run")
    p.add_argument("--add-method", default="r2m", help="method of the --add re-merge ('' skips it)")
    p.add_argument("--large-method", default="r2m", help="method of the ViT-L/14 run")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    p.add_argument("--specs", nargs="*", default=[], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--add-from", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    methods = ["average", *[m for m in args.methods if m != "average"]]
    print(f"machine: {machine()}; torch threads {args.threads}", flush=True)
    t0 = time.perf_counter()
    base, specs = make_files(args.workdir / "vit_b16", "ViT-B/16", args.specialists)
    size_mb = specs[0].stat().st_size / 2**20
    print(f"ViT-B/16 files ready ({size_mb:.0f} MB each) in {time.perf_counter() - t0:.0f} s", flush=True)
    out = args.workdir / "out.safetensors"
    rows = {}
    for m in methods:
        rows[m] = measure(m, base, specs, out, args.threads)
        print(f"  {m}: {rows[m]['seconds']:.1f} s", flush=True)
    if args.add_method and len(specs) > 1:
        first = args.workdir / "first.safetensors"
        measure(args.add_method, base, specs[:-1], first, args.threads)
        rows[f"{args.add_method} --add"] = measure(args.add_method, base, specs[-1:], out, args.threads,
                                                   add_from=first)
    if not args.no_large:
        lbase, lspecs = make_files(args.workdir / "vit_l14", "ViT-L/14", args.specialists)
        rows[f"{args.large_method} ViT-L/14"] = measure(args.large_method, lbase, lspecs, out, args.threads)
    avg = rows["average"]
    print(f"\n{args.specialists} ViT-B/16 specialists ({size_mb:.0f} MB each); ratios to this run's average")
    print(f"{'method':<18}{'seconds':>9}{'× avg':>8}{'peak RSS MB':>13}{'× avg':>8}")
    for name, r in rows.items():
        print(f"{name:<18}{r['seconds']:>9.2f}{r['seconds'] / avg['seconds']:>8.2f}"
              f"{r['peak_rss_mb']:>13.0f}{r['peak_rss_mb'] / avg['peak_rss_mb']:>8.2f}")
    print(f"(process RSS after imports ≈ {avg['start_rss_mb']:.0f} MB; one specialist = {size_mb:.0f} MB)")
    if args.json:
        results = {"machine": machine(), "threads": args.threads, "results": rows}
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
