"""Inputs and servers for the serving tests: a real photo that ships with matplotlib, a video made from
it, hostile files, a tiny model file, and a uvicorn server on 127.0.0.1 in a thread (port chosen by the OS).
"""

from __future__ import annotations

import contextlib
import struct
import threading
import time
import zlib
from pathlib import Path

import av
import cv2
import matplotlib
import numpy as np
import torch
from transformers import CLIPVisionModel

from fakemerge.models.backbone import tiny_config
from fakemerge.models.detector import Detector, ModelMeta, save_detector

PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"  # 512x600 JPEG, a real face
TINY = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64)


def save_model(path: Path, seed: int = 0, meta: ModelMeta | None = None, threshold: float | None = None,
               **config) -> Path:
    torch.manual_seed(seed)
    detector = Detector(CLIPVisionModel(tiny_config(**(config or TINY))), threshold=threshold).eval()
    save_detector(detector, path, meta or ModelMeta(kind="merged", method="r2m", families=["FS", "FR"]))
    return path


def photo_video(path: Path, n: int = 12, size: int = 128) -> Path:
    """An mp4 whose frames are a window panning down the photo (mpeg4, keyframe every 4 frames)."""
    photo = cv2.cvtColor(cv2.imread(str(PHOTO)), cv2.COLOR_BGR2RGB)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.gop_size = 4
        for i in range(n):
            top = int(i * (photo.shape[0] - 400) / max(n - 1, 1))
            frame = cv2.resize(photo[top:top + 400, 56:456], (size, size), interpolation=cv2.INTER_AREA)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(width: int = 60_000, height: int = 60_000) -> bytes:
    """A few hundred bytes whose header claims width x height (10.8 GB of RGB if it were decoded)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
            + _chunk(b"IEND", b""))


@contextlib.contextmanager
def live_server(app):
    """The app under uvicorn (with the draining shutdown) on 127.0.0.1; yields (base URL, server)."""
    import uvicorn

    from fakemerge.serving.server import DrainingServer

    server = DrainingServer(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(30)
