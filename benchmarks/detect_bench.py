"""Detection throughput end to end vs the bare model forward on the same tensors; face detector cost; memory.

For each model size (the ForgeryLab tiny ViT and a ViT-B/16-size CLIP tower, random init):
  * "bare forward": `detector(batch)` over exactly the tensors detect() builds for the inputs (decoded,
    cropped and normalised once beforehand), in the same batch size — what the model alone costs;
  * "end to end": `detect()` with `--face none` from the files: sniffing, decoding (JPEG photos, H.264
    videos with seeking), cropping, normalising, batching and the forward, as a user runs it.
Both are timed in interleaved rounds on the same inputs; the table shows the best round of each (a shared
machine's load drifts hit both alike; the best estimates the uncontended cost) and the ratio end to end /
bare (throughputs; target >= 0.9 with --face none). Images/s and video frames/s are reported separately.
The face detector (dlib HOG + 68 landmarks + alignment) is timed alone per frame, on the same frames.
Memory: the peak RSS (VmHWM) of `fakemerge detect` in a fresh process on the largest inputs tried.

    python benchmarks/detect_bench.py --images 32 --videos 4 --rounds 3 --threads 1 --workers 2

(On a machine shared with other jobs, one torch thread: with two, OpenMP barriers under contention make
the tiny model 3× slower and its timings meaningless.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import av  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import CLIPVisionConfig, CLIPVisionModel  # noqa: E402

from fakemerge.data import faces, media  # noqa: E402
from fakemerge.inference import DetectOptions, detect  # noqa: E402
from fakemerge.models.backbone import tiny_config  # noqa: E402
from fakemerge.models.detector import Detector, ModelMeta, save_detector  # noqa: E402
from fakemerge.models.preprocessing import to_input  # noqa: E402

SIZES = {
    "tiny": tiny_config,
    "vitb16": lambda: CLIPVisionConfig(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12,
                                       num_attention_heads=12, intermediate_size=3072),
}


def photo() -> np.ndarray:
    import matplotlib.cbook

    return media.read_image(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def make_inputs(root: Path, n_images: int, n_videos: int, video_frames: int) -> tuple[list[Path], list[Path]]:
    """640×480 JPEG photos (crops of a real portrait) and 640×360 H.264 videos (a slow pan over it)."""
    rng = np.random.default_rng(0)
    base = cv2.resize(photo(), (1024, 1200), interpolation=cv2.INTER_CUBIC)
    images = []
    for i in range(n_images):
        y, x = rng.integers(0, 1200 - 720), rng.integers(0, 1024 - 960)
        im = cv2.resize(base[y:y + 720, x:x + 960], (640, 480), interpolation=cv2.INTER_AREA)
        images.append(root / f"photo_{i:03d}.jpg")
        cv2.imwrite(str(images[-1]), im[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    videos = []
    for v in range(n_videos):
        path = root / f"clip_{v}.mp4"
        with av.open(str(path), "w") as c:
            s = c.add_stream("libx264", rate=30)
            s.width, s.height, s.pix_fmt = 640, 360, "yuv420p"
            s.options = {"g": "60", "preset": "veryfast", "crf": "23"}
            for t in range(video_frames):
                x = int(20 + 300 * t / video_frames) + 10 * v
                frame = cv2.resize(base[200:740, x:x + 960], (640, 360), interpolation=cv2.INTER_AREA)
                for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        videos.append(path)
    return images, videos


def model_tensors(detector: Detector, paths: list[Path], frames: int) -> list[np.ndarray]:
    """Exactly what detect() feeds the model for these inputs (`--face none`)."""
    policy = faces.CropPolicy("none", detector.preprocessing.size)
    out = []
    for path in paths:
        for frame in media.read_frames(path, frames):
            (crop,) = faces.crop_frame(frame.image, policy)
            out.append(to_input(crop.image, detector.preprocessing))
    return out


def bare(detector: Detector, tensors: list[np.ndarray], batch: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(tensors), batch):
            detector(torch.from_numpy(np.stack(tensors[i:i + batch]))).softmax(-1)
    return time.perf_counter() - start


def end_to_end(detector: Detector, paths: list[Path], options: DetectOptions) -> float:
    start = time.perf_counter()
    results = list(detect(detector, paths, options))
    elapsed = time.perf_counter() - start
    assert not any(r.error for r in results), [r.error for r in results if r.error]
    return elapsed


def throughput_rows(args, images, videos) -> list[dict]:
    rows = []
    for size in args.sizes:
        torch.manual_seed(0)
        detector = Detector(CLIPVisionModel(SIZES[size]())).eval()
        options = DetectOptions(frames=args.frames, batch_size=args.batch, workers=args.workers)
        for kind, paths, per in (("images", images, 1), ("video frames", videos, args.frames)):
            tensors = model_tensors(detector, paths, args.frames)
            count = len(tensors)
            assert count == len(paths) * per
            end_to_end(detector, paths[:2], options)  # warm-up: threads, allocator, first forwards
            bare(detector, tensors[:args.batch], args.batch)
            times = {"bare": [], "e2e": []}
            for _ in range(args.rounds):
                times["bare"].append(bare(detector, tensors, args.batch))
                times["e2e"].append(end_to_end(detector, paths, options))
            b, e = min(times["bare"]), min(times["e2e"])
            rows.append({"model": size, "kind": kind, "n": count, "bare_per_s": count / b, "e2e_per_s": count / e,
                         "ratio": b / e})
    return rows


def face_cost(images, videos, frames: int, n: int) -> list[dict]:
    if "dlib" not in faces.available_backends():
        return []
    policy = faces.CropPolicy("dlib", 224)
    faces.get_backend("dlib")  # loading the landmark model is not per-frame cost
    rows = []
    for kind, source in (("photo 640×480", [media.read_image(p) for p in images[:n]]),
                         ("video frame 640×360", [f.image for f in media.read_frames(videos[0], frames)][:n])):
        found, start = 0, time.perf_counter()
        for frame in source:
            found += faces.crop_frame(frame, policy)[0].status == "face"
        elapsed = (time.perf_counter() - start) / len(source)
        rows.append({"input": kind, "ms": 1000 * elapsed, "per_s": 1 / elapsed, "found": f"{found}/{len(source)}"})
    return rows


def memory_rows(root: Path) -> list[dict]:
    """Peak RSS of `fakemerge detect` (tiny model) in fresh processes, vs the same on a small photo."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from mediafiles import huge_png

    model = root / "tiny.safetensors"
    torch.manual_seed(0)
    save_detector(Detector(CLIPVisionModel(tiny_config())), model, ModelMeta(kind="merged"))
    small = root / "small.jpg"
    cv2.imwrite(str(small), photo()[..., ::-1])
    (root / "png400mp.png").write_bytes(huge_png(20000, 20000))
    jpeg48 = root / "jpeg48mp.jpg"
    cv2.imwrite(str(jpeg48), cv2.resize(photo(), (8000, 6000), interpolation=cv2.INTER_LINEAR)[..., ::-1],
                [cv2.IMWRITE_JPEG_QUALITY, 85])
    png30 = root / "png30mp.png"
    cv2.imwrite(str(png30), cv2.resize(photo(), (6000, 5000), interpolation=cv2.INTER_LINEAR)[..., ::-1])
    uhd = root / "video4k.mp4"
    with av.open(str(uhd), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt, s.options = 3840, 2160, "yuv420p", {"preset": "ultrafast", "g": "30"}
        big = cv2.resize(photo(), (3840, 2160))
        for _ in range(60):
            for p in s.encode(av.VideoFrame.from_ndarray(big, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    code = ("import sys\nfrom fakemerge.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n"
            "    pass\nprint(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')))")
    rows = []
    for label, path, extra in (("small photo 600×512 JPEG (baseline)", small, []),
                               ("20000×20000 PNG, 48 kB (400 MP: refused)", root / "png400mp.png", []),
                               ("8000×6000 JPEG (48 MP: decoded at 1/2)", jpeg48, []),
                               ("6000×5000 PNG (30 MP: decoded in full)", png30, []),
                               ("4K H.264 video, 8 frames", uhd, []),
                               ("8000×6000 JPEG with --face dlib", jpeg48, ["--face", "dlib"])):
        if "--face" in extra and "dlib" not in faces.available_backends():
            continue
        run = subprocess.run([sys.executable, "-c", code, "detect", str(model), str(path), "--format", "json",
                              *extra], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        lines = run.stdout.strip().splitlines()
        result = json.loads(lines[0])
        outcome = result["error"] or f"scored, {len(result['notes'])} note(s)"
        rows.append({"input": label, "size": path.stat().st_size, "peak_mb": int(lines[-1]) / 1024,
                     "outcome": outcome})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--video-frames", type=int, default=120, help="frames per generated video")
    p.add_argument("--frames", type=int, default=8, help="frames sampled per video")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--face-frames", type=int, default=8)
    p.add_argument("--skip-memory", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# detect_bench: torch {torch.__version__}, {args.threads} torch threads, {args.workers} decode "
          f"workers, batch {args.batch}, {platform.processor() or platform.machine()}, "
          f"load {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="detect-bench-") as tmp:
        root = Path(tmp)
        images, videos = make_inputs(root, args.images, args.videos, args.video_frames)
        rows = throughput_rows(args, images, videos)
        print("\n| model | input | n | bare forward (/s) | end to end, --face none (/s) | end to end / bare |")
        print("|---|---|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['model']} | {r['kind']} | {r['n']} | {r['bare_per_s']:.1f} | {r['e2e_per_s']:.1f} | "
                  f"{r['ratio']:.2f} |")
        cost = face_cost(images, videos, args.frames, args.face_frames)
        if cost:
            print("\n| face detector (dlib HOG, upsample 1, 68 landmarks, alignment) | ms per frame | frames/s "
                  "| faces found |")
            print("|---|---:|---:|---:|")
            for r in cost:
                print(f"| {r['input']} | {r['ms']:.0f} | {r['per_s']:.1f} | {r['found']} |")
        if not args.skip_memory:
            print("\n| fakemerge detect (tiny model) on | file size | peak RSS (MB) | outcome |")
            print("|---|---:|---:|---|")
            for r in memory_rows(root):
                print(f"| {r['input']} | {r['size']:,} B | {r['peak_mb']:.0f} | {r['outcome'][:90]} |")
    print(f"\nload {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
