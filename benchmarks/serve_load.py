"""Load on `fakemerge serve` (127.0.0.1 only): N concurrent clients x M requests of images, videos and bad uploads.

Starts the real CLI server in a subprocess, then for each client count runs every client's M requests
(a mix of a real photo with and without heatmap, a video, and four kinds of bad upload; one thread and
one keep-alive connection per client) while a separate process polls `/health` every 20 ms. Prints per
run: throughput, latency percentiles of the analysed uploads as the clients saw them and as the server
did (Server-Timing), counts per status, `/health` latency, the server's RSS and the temp files left
after; then ratios against a 1-client run measured in the same session. Bounded: every client sends
exactly M requests (a 429 makes it wait Retry-After, capped at 1 s, before its next one), each request
has a time limit, the whole benchmark a deadline; the server is stopped (SIGTERM) at the end.

    python benchmarks/serve_load.py --clients 16 64 --requests 8 --workers 1 --queue 8

Targets (DESIGN.md): 0 5xx, 0 leaked temp files, /health p95 <= 50 ms under load, RSS bounded by workers.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlencode

import av
import cv2
import httpx
import matplotlib
import numpy as np
import psutil

PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
HEALTH_TARGET_S = 0.050


def make_inputs(folder: Path) -> dict[str, tuple[str, bytes, dict]]:
    """name -> (file name sent, bytes, query): the request kinds the clients cycle through."""
    photo = PHOTO.read_bytes()
    video = folder / "zoom.mp4"
    image = cv2.cvtColor(cv2.imread(str(PHOTO)), cv2.COLOR_BGR2RGB)
    with av.open(str(video), "w") as out:
        stream = out.add_stream("mpeg4", rate=24)
        stream.width = stream.height = 160
        stream.pix_fmt = "yuv420p"
        for i in range(48):  # a slow zoom onto the face, 2 s
            half = 250 - 3 * i
            crop = image[220 - half // 2:220 + half, 256 - half:256 + half]
            frame = cv2.resize(np.ascontiguousarray(crop), (160, 160), interpolation=cv2.INTER_AREA)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    clip = video.read_bytes()
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))
    return {
        "photo": ("grace_hopper.jpg", photo, {}),
        "photo+heatmap": ("grace_hopper.jpg", photo, {"heatmap": "true"}),
        "video": ("zoom.mp4", clip, {"frames": "8"}),
        "text as .png": ("notes.png", b"definitely not an image\n" * 400, {}),
        "huge dimensions": ("bomb.png", bomb, {}),
        "truncated video": ("cut.mp4", clip[:len(clip) // 3], {}),
        "oversize": ("big.jpg", photo + b"\0" * (3 << 19), {}),  # 1.6 MB: over the 1 MiB limit the server gets
    }


MIX = ["photo", "photo+heatmap", "video", "photo", "text as .png", "photo", "video", "huge dimensions",
       "photo+heatmap", "truncated video", "photo", "oversize"]


def make_model(path: Path) -> Path:
    """A randomly initialised detector of ForgeryLab's tiny-base shape (64 px ViT, 0.83 M parameters)."""
    import torch
    from transformers import CLIPVisionModel

    from fakemerge.models.backbone import tiny_config
    from fakemerge.models.detector import Detector, ModelMeta, save_detector

    torch.manual_seed(0)
    save_detector(Detector(CLIPVisionModel(tiny_config())).eval(), path, ModelMeta(kind="merged", method="r2m"))
    return path


def probe_health(url: str, stop, out, period: float) -> None:
    """In its own process (so the clients' event loop does not delay it): GET /health every `period` s."""
    latencies = []
    with httpx.Client(base_url=url, timeout=5) as client:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                ok = client.get("/health").status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - t0 if ok else float("inf"))
            time.sleep(max(0.0, period - (time.perf_counter() - t0)))
    out.put(latencies)


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "loadtestboundary7d3f"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n'.encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def run_clients(port: int, inputs: dict, clients: int, requests: int, deadline: float) -> dict:
    """`clients` threads, each on its own keep-alive connection (stdlib http.client: a light client, so
    that the latencies are the server's, not a Python HTTP client's), `requests` requests each."""
    bodies = {kind: (multipart(name, data), urlencode(query)) for kind, (name, data, query) in inputs.items()}
    results: list[tuple[str, int | str, float, float | None]] = []  # kind, status, seconds, server seconds
    lock = threading.Lock()

    def client(number: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in range(requests):
            if time.monotonic() > deadline:
                break
            kind = MIX[(number * requests + i) % len(MIX)]
            (body, content_type), query = bodies[kind]
            t0 = time.perf_counter()
            served, wait = None, 0.0
            try:
                connection.request("POST", "/v1/detect?" + query, body, {"Content-Type": content_type})
                response = connection.getresponse()
                response.read()
                status = response.status
                timing = response.getheader("server-timing", "")
                if "app;dur=" in timing:
                    served = float(timing.split("app;dur=")[1].split(",")[0]) / 1e3
                if status == 429:
                    wait = min(1.0, float(response.getheader("retry-after", "1")))
                if response.getheader("connection", "") == "close":
                    connection.close()
            except (OSError, http.client.HTTPException) as e:
                status = type(e).__name__
                connection.close()
            with lock:
                results.append((kind, status, time.perf_counter() - t0, served))
            time.sleep(wait)
        connection.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"results": results, "wall": time.perf_counter() - t0, "cut": time.monotonic() > deadline}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


class RssSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process, self.samples, self.stopped = psutil.Process(pid), [], threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.samples.append(self.process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_idle(url: str, seconds: float = 60) -> None:
    """Until the server holds no admitted request (jobs that outlived their request end too)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if httpx.get(f"{url}/ready", timeout=5).json().get("admitted") == 0:
            return
        time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--requests", type=int, default=8, help="requests per client")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--queue", type=int, default=8)
    ap.add_argument("--deadline", type=float, default=420, help="seconds for the whole benchmark")
    ap.add_argument("--model", type=Path, help="a fakemerge model file (default: a random lab-size one)")
    args = ap.parse_args()
    end = time.monotonic() + args.deadline

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        tmp = Path(tmp)
        spool = tmp / "spool"
        spool.mkdir()
        model = args.model or make_model(tmp / "model.safetensors")
        inputs = make_inputs(tmp)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "fakemerge", "serve", str(model), "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(args.workers), "--queue", str(args.queue), "--tmp-dir", str(spool),
               "--max-upload-mb", "1", "--timeout", "30", "--log-level", "warning"]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            while True:
                try:
                    if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.monotonic() > end:
                    sys.exit(f"server did not start: {server.stderr.read().decode()[-2000:]}")
                time.sleep(0.2)
            rss_ready = psutil.Process(server.pid).memory_info().rss
            sampler = RssSampler(server.pid)
            sampler.start()
            rows = []
            for clients in [1, *args.clients]:
                first = len(sampler.samples)
                requests = args.requests * 2 if clients == 1 else args.requests
                stop, out = mp.Event(), mp.Queue()
                prober = mp.Process(target=probe_health, args=(url, stop, out, 0.02))
                prober.start()
                run = run_clients(port, inputs, clients, requests, end)
                stop.set()
                health = out.get(timeout=30)
                prober.join(10)
                wait_idle(url)
                rows.append((clients, run, health, max(sampler.samples[first:] or [0]), len(list(spool.iterdir()))))
            sampler.stopped.set()
            hwm = peak_rss(server.pid) or max(sampler.samples)
            server.send_signal(signal.SIGTERM)
            code = server.wait(60)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        leaked_end = len(list(spool.iterdir()))
    report(rows, args, rss_ready, hwm, code, leaked_end)


def peak_rss(pid: int) -> int | None:
    """The kernel's high-water mark of the process's RSS (Linux), which 100 ms samples could miss."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) << 10
    except OSError:
        pass
    return None


def report(rows, args, rss_ready: int, hwm: int, code: int, leaked_end: int) -> None:
    mb = 1 << 20
    load = os.getloadavg()
    print(f"fakemerge serve under load: workers {args.workers}, queue {args.queue}, {args.requests} requests per "
          f"client (1-client baseline: {2 * args.requests}), mix of {len(MIX)} kinds; {os.cpu_count()} CPUs, "
          f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    head = (f"{'clients':>7} {'sent':>5} {'wall s':>7} {'req/s':>6} {'ok/s':>6} {'p50 ms':>7} {'p95 ms':>7} "
            f"{'p99 ms':>7} {'srv p95':>7} {'429 p95':>8} {'srv':>5} | {'200':>4} {'413':>4} {'415':>4} {'422':>4} "
            f"{'429':>4} {'5xx':>4} {'other':>5} | {'health p50':>10} {'p95':>6} {'max':>6} | {'RSS MB':>7} {'tmp':>4}")
    print(head)
    base_ok = None
    summary = []
    for clients, run, health, rss_peak, leaked in rows:
        results = run["results"]
        statuses = Counter(s for _, s, _, _ in results)
        ok = [t for _, s, t, _ in results if s == 200]
        served = [t for _, s, _, t in results if s == 200 and t is not None]
        busy = [t for _, s, t, _ in results if s == 429]
        busy_served = [t for _, s, _, t in results if s == 429 and t is not None]
        fivexx = sum(n for s, n in statuses.items() if isinstance(s, int) and s >= 500)
        other = sum(n for s, n in statuses.items() if s not in (200, 413, 415, 422, 429) and not (
            isinstance(s, int) and s >= 500))
        ok_rate = len(ok) / run["wall"]
        base_ok = ok_rate if base_ok is None else base_ok
        hp = [1e3 * h for h in health]
        print(f"{clients:>7} {len(results):>5} {run['wall']:>7.1f} {len(results) / run['wall']:>6.1f} {ok_rate:>6.1f} "
              f"{1e3 * percentile(ok, 50):>7.0f} {1e3 * percentile(ok, 95):>7.0f} {1e3 * percentile(ok, 99):>7.0f} "
              f"{1e3 * percentile(served, 95):>7.0f} "
              f"{1e3 * percentile(busy, 95):>8.1f} {1e3 * percentile(busy_served, 95):>5.0f} | "
              f"{statuses[200]:>4} {statuses[413]:>4} {statuses[415]:>4} "
              f"{statuses[422]:>4} {statuses[429]:>4} {fivexx:>4} {other:>5} | {percentile(hp, 50):>10.1f} "
              f"{percentile(hp, 95):>6.1f} {max(hp):>6.1f} | {rss_peak / mb:>7.0f} {leaked:>4}"
              + ("  (cut by deadline)" if run["cut"] else ""))
        summary.append((clients, ok_rate / base_ok, percentile(hp, 95) / 1e3 / HEALTH_TARGET_S, rss_peak / rss_ready,
                        fivexx, leaked))
    for clients, run, *_ in rows:
        odd = Counter((kind, s) for kind, s, _, _ in run["results"] if not isinstance(s, int) or s not in
                      (200, 413, 415, 422, 429))
        if odd:
            print(f"  {clients} clients, other outcomes: " + ", ".join(f"{n} x {s} ({k})" for (k, s), n in odd.items()))
    print(f"\nratios (same session): RSS after warm-up {rss_ready / mb:.0f} MB, peak (VmHWM) {hwm / mb:.0f} MB; "
          f"server exit after SIGTERM: {code} "
          f"({'graceful' if code in (0, -signal.SIGTERM) else 'NOT graceful'}); temp files at the end: {leaked_end}")
    print(f"{'clients':>7} {'ok/s vs 1 client':>17} {'health p95 / 50 ms':>19} {'peak RSS / ready':>17} "
          f"{'5xx':>4} {'leaked':>6}")
    for clients, speed, health, rss, fivexx, leaked in summary:
        print(f"{clients:>7} {speed:>17.2f} {health:>19.2f} {rss:>17.2f} {fivexx:>4} {leaked:>6}")


if __name__ == "__main__":
    main()
