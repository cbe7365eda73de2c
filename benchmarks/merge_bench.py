"""Merge benchmark: time and peak memory of every method on ViT-B/16-sized specialists (random weights).

Every merge runs in its own process (clean peak RSS) through the real file engine (`merge_files`: lazy reads,
inputs hashed as they are read, streamed write). Reported in one run, as ratios:
- to the IO floor: a process that imports torch and safetensors, reads every input file once and writes one
  output of the base's size (target: average / task arithmetic / DARE ≤ 1.5×); the floor also runs once
  ending as the merge CLI does (its final garbage collection skipped, ~0.4 s with torch loaded), so what that
  exit saves is visible rather than counted as merge speed;
- to `average` (R²M ≤ 2×; TIES' peak memory ≤ 1.2×);
- to FusionBench 0.2.33 on the same files (`--fusionbench PYTHON`: a python that imports fusion_bench; it
  holds every model in memory): TSV-M, Iso-C and Iso-CTS ≤ 0.5× its time, R²M ≤ 0.1× its TSV-M, and the
  parity of our output against its (≤ 1e-4 of the merged update);
- to its bound: the IO floor plus the seconds spent inside decompositions (torch.linalg's, and our randomized
  truncations) divided by the threads: what the same arithmetic costs perfectly scheduled. Against
  FusionBench's time (`bound/fb`) it is the lowest ratio a target can ask of the same decompositions;
- the `--add` re-merge (3 → 4 specialists from the stored recipe) against the first 4-way merge;
- R²M and every truncating method at ViT-L/14 size (R²M ≤ 60 s), exact vs randomized truncations at
  ViT-B/16 and ViT-L/14 shapes, and whether merging the specialists in reverse order gives the same bytes.
`steal %` is the share of the machine's CPU time the hypervisor took during a run (/proc/stat): on a shared
virtual machine it moves every time, and multi-threaded LAPACK (FusionBench's) more than independent workers.
Process times are wall-clock seconds of the whole process (imports included, as a user pays them); `work`
is the time inside `merge_files`. The machine's load is printed: other processes make every time noisy,
the ratios of one run less so; each ViT-B/16 and FusionBench row is the median of `--repeats` runs (page
cache warmed first).

    python benchmarks/merge_bench.py                          # everything (~15 min on 2 busy cores)
    python benchmarks/merge_bench.py --methods average r2m --no-large --fusionbench /tmp/fbvenv/bin/python
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"ViT-B/16": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                          num_attention_heads=12, patch_size=16, image_size=224),
         "ViT-L/14": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                          num_attention_heads=16, patch_size=14, image_size=224)}
FUSIONBENCH = ("average", "task_arithmetic", "tsv", "iso_c", "iso_cts")  # what it is timed on


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def make_files(directory: Path, size: str, n: int) -> tuple[Path, list[Path]]:
    """A random base and n specialists (base + 1e-3 noise: full-rank task vectors), written tensor by tensor."""
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


# ---------------------------------------------------------------- the measured processes

DECOMPOSITIONS = ("svd", "svdvals", "qr", "eigh", "eigvalsh")  # torch.linalg's, as every SVD method calls them


def time_decompositions(ours: bool) -> dict[str, float]:
    """Sum the wall seconds that calling threads spend inside torch.linalg's decompositions (and, for ours, in
    `truncated_svd` as a whole: its thin products are most of a randomized truncation), outermost calls only.
    Divided by the threads that call them side by side, it is the time no scheduling can save: what a method
    could reach with the same arithmetic (IO floor + that)."""
    import threading

    import torch

    spent = {"s": 0.0}
    depth = threading.local()
    lock = threading.Lock()

    def timed(fn):
        def wrapper(*a, **k):
            if getattr(depth, "n", 0):
                return fn(*a, **k)
            depth.n, t0 = 1, time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                depth.n = 0
                with lock:
                    spent["s"] += time.perf_counter() - t0
        return wrapper

    for name in DECOMPOSITIONS:
        setattr(torch.linalg, name, timed(getattr(torch.linalg, name)))
    if ours:
        import fakemerge.merging  # noqa: F401 -- every method module, so each one holding the name is found
        from fakemerge.merging import lowrank

        original, truncate = lowrank.truncated_svd, timed(lowrank.truncated_svd)
        for module in list(sys.modules.values()):
            ours_too = getattr(module, "__name__", "").startswith("fakemerge.")
            if ours_too and getattr(module, "truncated_svd", None) is original:
                module.truncated_svd = truncate
    return spent

def time_stages() -> dict[str, float]:
    """Wall seconds of each pass over the stream (`TaskStream.each`: the driver's and a method's own), by stage."""
    from fakemerge.merging.streams import TaskStream

    seconds: dict[str, float] = {}
    each = TaskStream.each

    def timed_each(self, stage, keys):
        t0 = time.perf_counter()
        yield from each(self, stage, keys)
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - t0

    TaskStream.each = timed_each
    return seconds


def child_merge(args: argparse.Namespace) -> dict:
    """`fakemerge merge` itself, as a user runs it (its imports, checks, bars and atomic write included)."""
    from fakemerge.cli import main

    spent, stages = time_decompositions(ours=True), time_stages()
    argv = ["merge", "--out", args.out, "--device", args.device]
    if args.add_from:
        argv += ["--from", args.add_from, "--add", *args.specs]
    else:
        argv += ["--method", args.method, "--base", args.base, *args.specs]
        for k, v in json.loads(args.params).items():
            argv += ["--set", f"{k}={v}"]
    t0 = time.perf_counter()
    main(argv)
    return {"work": time.perf_counter() - t0, "linalg": spent["s"], "stages": stages}


def child_floor(args: argparse.Namespace) -> dict:
    """Read every input once (the base as tensors, the specialists as bytes) and write the base's size."""
    from safetensors.torch import load_file, save_file

    t0 = time.perf_counter()
    base = load_file(args.base)
    buffer = bytearray(64 << 20)
    for path in args.specs:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass
    save_file(base, args.out)
    return {"work": time.perf_counter() - t0}


def child_floor_fast_exit(args: argparse.Namespace) -> dict:
    """The floor, ending as the merge CLI does: the interpreter's last garbage collection skipped (gc.freeze)."""
    import atexit
    import gc

    atexit.register(gc.freeze)
    return child_floor(args)


def child_fusionbench(args: argparse.Namespace) -> dict:
    """FusionBench's merge of the same files, all in memory; its time, and its parity against our output."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from fakemerge.keys import PREFIX, canonical, strip_prefix

    torch.set_num_threads(args.threads)
    spent = time_decompositions(ours=False)
    t0 = time.perf_counter()
    base = {k: v for k, v in load_file(args.base).items() if not k.startswith("head.")}
    models = [{k: v for k, v in load_file(p).items() if not k.startswith("head.")} for p in args.specs]
    loaded = time.perf_counter()
    taus = [{k: m[k] - v for k, v in base.items()} for m in models]
    if args.method in ("average", "task_arithmetic"):
        from fusion_bench.method import SimpleAverageAlgorithm, TaskArithmeticAlgorithm
        from transformers import CLIPVisionConfig, CLIPVisionModel

        with safe_open(args.base, "pt") as f:
            config = CLIPVisionConfig(**json.loads(f.metadata()["backbone_config"]))

        def module(state):
            with torch.device("meta"):
                m = CLIPVisionModel(config)
            wants_prefix = next(iter(m.state_dict())).startswith(PREFIX)
            m.load_state_dict(canonical(state) if wants_prefix else strip_prefix(state), assign=True)
            return m

        # copies: FusionBench's task arithmetic updates the pretrained module in place, which would move `base`
        pool = {"_pretrained_": module({k: v.clone() for k, v in base.items()}),
                **{f"t{i}": module(m) for i, m in enumerate(models)}}
        start = time.perf_counter()
        algorithm = SimpleAverageAlgorithm() if args.method == "average" else \
            TaskArithmeticAlgorithm(scaling_factor=0.3)
        merged = canonical(algorithm.run(pool).state_dict())
    else:
        from fusion_bench.method.isotropic_merging.iso_utils import iso_c, iso_cts
        from fusion_bench.method.task_singular_vector.utils.TSVM_utils import compute_and_sum_svd_mem_reduction

        start = time.perf_counter()
        if args.method == "tsv":
            delta = compute_and_sum_svd_mem_reduction(taus, accelerator="cpu")
        elif args.method == "iso_c":
            delta = iso_c(taus, accelerator="cpu")
        else:
            delta = iso_cts(taus, common_space_fraction=0.8, accelerator="cpu")
        merged = {k: base[k] + delta[k] for k in base}
    seconds = time.perf_counter() - start
    ours = load_file(args.out)
    worst, worst_key = max((float((ours[k].double() - v.double()).norm()
                                  / (v.double() - base[k].double()).norm().clamp_min(1e-30)), k)
                           for k, v in merged.items())
    return {"work": seconds, "load": loaded - t0, "linalg": spent["s"], "parity": worst, "parity_key": worst_key}


def child_truncations(args: argparse.Namespace) -> dict:
    """Exact vs randomized truncations on ViT-shaped residuals with a realistic (decaying + flat) spectrum."""
    import torch

    from fakemerge.merging.lowrank import truncated_svd, truncation_rank

    torch.set_num_threads(args.threads)
    rows = []
    for size, shapes in (("ViT-B/16", [(768, 768), (3072, 768), (768, 3072)]),
                         ("ViT-L/14", [(1024, 1024), (4096, 1024), (1024, 4096)])):
        for shape in shapes:
            g = torch.Generator().manual_seed(0)
            k = min(shape)
            u = torch.linalg.qr(torch.randn(shape[0], k, generator=g)).Q
            v = torch.linalg.qr(torch.randn(shape[1], k, generator=g)).Q
            spectrum = torch.arange(1, k + 1, dtype=torch.float32) ** -0.5 + 0.05  # decaying, then flat
            a = (u * spectrum) @ v.T
            for ratio in (0.05, 0.1):
                r = truncation_rank(shape, ratio)
                timed = {}
                for mode in ("exact", "randomized"):
                    t0 = time.perf_counter()
                    left, right = truncated_svd(a, r, seed=0, svd=mode)
                    timed[mode] = (time.perf_counter() - t0, left @ right)
                best = float(spectrum[r:].square().sum().sqrt())
                rows.append({"size": size, "shape": list(shape), "rank": r,
                             "exact_s": timed["exact"][0], "randomized_s": timed["randomized"][0],
                             "error_vs_optimal": float((a - timed["randomized"][1]).norm()) / best,
                             "difference": float((timed["randomized"][1] - timed["exact"][1]).norm()
                                                 / timed["exact"][1].norm())})
    return {"rows": rows}


def same_bytes(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


# ---------------------------------------------------------------- the parent

def cpu_ticks() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs from /proc/stat ((0, 0) where there is none)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def run_child(args: argparse.Namespace, kind: str, python: str = sys.executable, **fields) -> dict:
    cmd = [python, __file__, "--child", kind, "--threads", str(args.threads), "--device", args.device]
    for k, v in fields.items():
        if v is None:
            continue
        cmd += [f"--{k.replace('_', '-')}", *(map(str, v) if isinstance(v, list) else [str(v)])]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    before, ticks = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_ticks()
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after, (steal, total) = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_ticks()
    steal_pct = 100 * (steal - ticks[0]) / max(total - ticks[1], 1)
    if done.returncode and kind == "fusionbench":  # the peer's own failure is a finding, not the end of the run
        lines = [line.strip(" │") for line in done.stderr.strip().splitlines() if line.strip(" │╰─╯")]
        return {"failed": " ".join(lines[-3:])[:300], "seconds": wall, "steal %": steal_pct}
    if done.returncode:
        raise SystemExit(f"{kind} {fields.get('method', '')} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**result, "seconds": wall, "cpu_s": cpu, "steal %": steal_pct}


def run_median(args: argparse.Namespace, kind: str, python: str = sys.executable, **fields) -> dict:
    """`run_child` `--repeats` times back to back; each number is the median over the runs (a run slowed by
    another process on the machine does not set the row), `runs` lists every run's wall time."""
    runs = [run_child(args, kind, python, **fields) for _ in range(args.repeats)]
    if any("failed" in r for r in runs):
        return next(r for r in runs if "failed" in r)
    numeric = [k for k, v in runs[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
    return {**runs[-1], **{k: statistics.median(r[k] for r in runs) for k in numeric},
            "runs": [round(r["seconds"], 2) for r in runs]}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as f:
        cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    return f"{cpu}, {os.cpu_count()} cores visible"


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def table(title: str, rows: dict[str, dict], columns: list[tuple[str, str, str]]) -> None:
    """Print rows under (header, key, format) columns; a missing value shows as '-'."""
    print(f"\n{title}\n{'':<22}" + "".join(f"{header:>11}" for header, _, _ in columns))
    for name, r in rows.items():
        cells = [format(r[key], fmt) if isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool)
                 else str(r.get(key, "-")) for _, key, fmt in columns]
        print(f"{name:<22}" + "".join(f"{c:>11}" for c in cells))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--specialists", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto: where the merges run their arithmetic")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/fakemerge_merge_bench"))
    p.add_argument("--no-large", action="store_true", help="skip the ViT-L/14 runs")
    p.add_argument("--large-methods", nargs="+", default=["r2m", "cart"], help="methods run at ViT-L/14")
    p.add_argument("--fusionbench", help="python of a venv with fusion_bench: run it side by side")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--repeats", type=int, default=3, help="runs per ViT-B/16 and FusionBench row (median)")
    p.add_argument("--child", choices=["merge", "floor", "floor_fast_exit", "fusionbench", "truncations"],
                   help=argparse.SUPPRESS)
    for hidden in ("--method", "--base", "--out", "--add-from"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    p.add_argument("--specs", nargs="*", default=[], help=argparse.SUPPRESS)
    p.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        result = {"merge": child_merge, "floor": child_floor, "floor_fast_exit": child_floor_fast_exit,
                  "fusionbench": child_fusionbench,
                  "truncations": child_truncations}[args.child](args)
        print(json.dumps({**result, "peak_rss_mb": rss_mb()}))  # this process's own peak
        return

    from fakemerge.merging import METHODS

    methods = ["average", *[m for m in (args.methods or METHODS) if m != "average"]]
    print(f"machine: {machine()}; torch threads {args.threads}; device {args.device}; {load()}", flush=True)
    base, specs = make_files(args.workdir / "vit_b16", "ViT-B/16", args.specialists)
    size_mb = specs[0].stat().st_size / 2**20
    out = args.workdir / "out.safetensors"
    subprocess.run(["cat", str(base), *map(str, specs)], stdout=subprocess.DEVNULL, check=True)  # page cache warm
    rows: dict[str, dict] = {"IO floor": run_median(args, "floor", base=base, specs=specs, out=out),
                             "floor, fast exit": run_median(args, "floor_fast_exit", base=base, specs=specs,
                                                            out=out)}
    for m in methods:
        out_m = args.workdir / f"out-{m}.safetensors"
        rows[m] = run_median(args, "merge", method=m, base=base, specs=specs, out=out_m)
        print(f"  {m}: {rows[m]['seconds']:.1f} s ({load()})", flush=True)
    for m in [m for m in ("r2m", "cart", "dare") if m in methods]:  # the randomized ones at real size
        reverse = args.workdir / f"out-{m}-reversed.safetensors"
        run_child(args, "merge", method=m, base=base, specs=specs[::-1], out=reverse)
        rows[m]["reversed order: same bytes"] = same_bytes(args.workdir / f"out-{m}.safetensors", reverse)
        reverse.unlink()
    if "r2m" in methods and len(specs) > 1:
        first = args.workdir / "first.safetensors"
        run_child(args, "merge", method="r2m", base=base, specs=specs[:-1], out=first)
        rows["r2m --add"] = run_child(args, "merge", method="r2m", base=base, specs=specs[-1:], out=out,
                                      add_from=first)
        rows["r2m --add"]["same bytes as r2m"] = same_bytes(out, args.workdir / "out-r2m.safetensors")
    floor, avg = rows["IO floor"], rows["average"]
    for r in rows.values():
        r["x floor"], r["x avg"] = r["seconds"] / floor["seconds"], r["seconds"] / avg["seconds"]
        r["work x floor"], r["work x avg"] = r["work"] / floor["work"], r["work"] / avg["work"]
        r["rss x avg"] = r["peak_rss_mb"] / avg["peak_rss_mb"]
        r["bound"] = floor["seconds"] + r.get("linalg", 0.0) / args.threads
        r["x bound"] = r["seconds"] / r["bound"]
    table(f"{args.specialists} ViT-B/16 specialists ({size_mb:.0f} MB each), median of {args.repeats} runs, "
          f"{load()}", rows,
          [("seconds", "seconds", ".2f"), ("× floor", "x floor", ".2f"), ("× avg", "x avg", ".2f"),
           ("work s", "work", ".2f"), ("work×floor", "work x floor", ".2f"), ("work×avg", "work x avg", ".2f"),
           ("cpu s", "cpu_s", ".1f"), ("linalg s", "linalg", ".1f"), ("bound s", "bound", ".2f"),
           ("× bound", "x bound", ".2f"), ("peak MB", "peak_rss_mb", ".0f"), ("MB × avg", "rss x avg", ".2f"),
           ("steal %", "steal %", ".0f")])
    print("targets: average/task_arithmetic/dare ≤ 1.5× floor; r2m ≤ 2× average; ties memory ≤ 1.2× average")
    print(f"linalg s: seconds inside decompositions and truncations, summed over threads; bound = IO floor + "
          f"linalg / {args.threads} threads (the same arithmetic, perfectly scheduled)")
    for name, r in rows.items():
        if len(r.get("stages", {})) > 1:  # the passes of a multi-pass method, in seconds
            passes = ", ".join(f"{stage} {sec:.2f}" for stage, sec in r["stages"].items())
            print(f"{name} passes (s, last run): {passes}; linalg / {args.threads}: "
                  f"{r['linalg'] / args.threads:.2f}")
    for name in ("r2m", "cart", "dare"):
        if "reversed order: same bytes" in rows.get(name, {}):
            print(f"{name}: specialists in reverse order give the same bytes: "
                  f"{rows[name]['reversed order: same bytes']}")
    if "r2m --add" in rows:
        print(f"r2m --add (3 merged + 1 added) gives the same bytes as merging all 4: "
              f"{rows['r2m --add']['same bytes as r2m']}")

    peers: dict[str, dict] = {}
    if args.fusionbench:
        for m in [m for m in FUSIONBENCH if m in methods]:
            peers[m] = run_median(args, "fusionbench", python=args.fusionbench, method=m, base=base, specs=specs,
                                 out=args.workdir / f"out-{m}.safetensors")
            peers[m]["ours s"] = rows[m]["seconds"]
            if "failed" in peers[m]:
                print(f"  fusionbench {m} failed: {peers[m]['failed']}", flush=True)
                peers[m]["seconds until it failed"] = peers[m].pop("seconds")  # no time for the table
                continue
            peers[m]["ours / fb"] = rows[m]["seconds"] / peers[m]["seconds"]
            peers[m]["ours / fb work"] = rows[m]["work"] / peers[m]["work"]
            peers[m]["bound / fb"] = rows[m]["bound"] / peers[m]["seconds"]
            print(f"  fusionbench {m}: {peers[m]['seconds']:.1f} s ({load()})", flush=True)
        if "tsv" in peers and "failed" not in peers["tsv"] and "r2m" in rows:
            peers["r2m vs fb tsv"] = {"ours s": rows["r2m"]["seconds"], "seconds": peers["tsv"]["seconds"],
                                      "ours / fb": rows["r2m"]["seconds"] / peers["tsv"]["seconds"],
                                      "ours / fb work": rows["r2m"]["work"] / peers["tsv"]["work"],
                                      "bound / fb": rows["r2m"]["bound"] / peers["tsv"]["seconds"]}
        table(f"FusionBench 0.2.33 on the same files (process seconds; fb work = its merge only, {load()})", peers,
              [("fb s", "seconds", ".1f"), ("fb work", "work", ".1f"), ("fb MB", "peak_rss_mb", ".0f"),
               ("ours s", "ours s", ".1f"), ("ours/fb", "ours / fb", ".2f"),
               ("work/work", "ours / fb work", ".2f"), ("fb linalg", "linalg", ".1f"),
               ("bound/fb", "bound / fb", ".2f"), ("parity", "parity", ".1e"), ("fb steal %", "steal %", ".0f")])
        print("targets: tsv, iso_c, iso_cts ≤ 0.5× FusionBench; r2m ≤ 0.1× FusionBench's tsv; parity ≤ 1e-4")
        print("bound/fb: our bound (above) over FusionBench's seconds: the lowest ratio the same decompositions "
              "allow on these threads")
        for m, r in peers.items():
            if r.get("parity_key"):
                print(f"{m}: worst tensor {r['parity_key']}")

    large: dict[str, dict] = {}
    if not args.no_large:
        lbase, lspecs = make_files(args.workdir / "vit_l14", "ViT-L/14", args.specialists)
        for m in ["average", *args.large_methods]:
            large[m] = run_child(args, "merge", method=m, base=lbase, specs=lspecs, out=out)
            large[m]["x avg"] = large[m]["seconds"] / large["average"]["seconds"]
            print(f"  ViT-L/14 {m}: {large[m]['seconds']:.1f} s ({load()})", flush=True)
        table(f"{args.specialists} ViT-L/14 specialists, one run ({load()})", large,
              [("seconds", "seconds", ".1f"), ("work s", "work", ".1f"), ("× avg", "x avg", ".2f"),
               ("peak MB", "peak_rss_mb", ".0f"), ("steal %", "steal %", ".0f")])
        print("target: r2m at ViT-L/14 ≤ 60 s")
    truncations = run_child(args, "truncations")["rows"]
    print(f"\nexact vs randomized truncation (svd=exact|randomized; residuals with a decaying-then-flat spectrum; "
          f"{load()})")
    print(f"{'size':<10}{'shape':>12}{'rank':>6}{'exact s':>9}{'random s':>10}{'× exact':>9}"
          f"{'err/optimal':>12}{'Δ vs exact':>12}")
    for r in truncations:
        print(f"{r['size']:<10}{'×'.join(map(str, r['shape'])):>12}{r['rank']:>6}{r['exact_s']:>9.3f}"
              f"{r['randomized_s']:>10.3f}{r['randomized_s'] / r['exact_s']:>9.2f}{r['error_vs_optimal']:>12.4f}"
              f"{r['difference']:>12.3f}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "threads": args.threads, "device": args.device,
                                         "vit_b16": rows, "fusionbench": peers, "vit_l14": large,
                                         "truncations": truncations}, indent=2, default=str))


if __name__ == "__main__":
    main()
