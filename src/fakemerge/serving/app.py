"""Web service: POST /detect (image or video upload -> scores + optional heatmap), GET /health, GET /.

The model is loaded once per process; uploads go to a temp file (videos need a seekable file for PyAV)
and through the same `detect()` as the CLI, so the service and the CLI always agree.
"""

from __future__ import annotations

import base64
import os
import tempfile
from pathlib import Path

from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.responses import HTMLResponse

from fakemerge.data.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from fakemerge.errors import FakemergeError
from fakemerge.inference import DetectOptions, detect
from fakemerge.models.detector import Detector
from fakemerge.models.loading import load_detector

STATIC = Path(__file__).with_name("static")
MAX_UPLOAD_BYTES = 512 << 20


def create_app(model: str | os.PathLike | Detector, *, frames: int = 8, agg: str = "mean",
               face: str = "none", no_face: str = "whole") -> FastAPI:
    if isinstance(model, Detector):
        detector, info = model, {"name": "model"}
    else:
        detector, meta = load_detector(model)
        info = {"name": Path(model).name, "kind": meta.kind, "method": meta.method, "families": meta.families,
                "base_id": meta.base_id, "version": meta.version}
    app = FastAPI(title="fakemerge", description="Deepfake detection with a merged CLIP detector.")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": info, "image_size": detector.config.image_size,
                "defaults": {"frames": frames, "agg": agg, "face": face, "no_face": no_face}}

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return (STATIC / "index.html").read_text()

    @app.post("/detect")
    def detect_upload(file: UploadFile = File(...), heatmap: bool = Query(False),
                      n_frames: int = Query(frames, alias="frames", ge=1, le=256),
                      aggregation: str = Query(agg, alias="agg")) -> dict:
        name = Path(file.filename or "upload").name
        suffix = Path(name).suffix.lower()
        if suffix not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
            kinds = f"an image ({', '.join(IMAGE_SUFFIXES)}) or a video ({', '.join(VIDEO_SUFFIXES)})"
            raise HTTPException(415, f"{name}: unsupported file type {suffix or '(none)'}; send {kinds}")
        with tempfile.TemporaryDirectory(prefix="fakemerge-") as tmp:
            path = Path(tmp) / f"upload{suffix}"
            size = _save_upload(file, path)
            if size == 0:
                raise HTTPException(400, f"{name}: empty upload")
            try:
                options = DetectOptions(frames=n_frames, agg=aggregation, face=face, no_face=no_face,
                                        heatmap_dir=Path(tmp) / "maps" if heatmap else None, workers=0)
                (result,) = detect(detector, [path], options)
            except FakemergeError as e:
                raise HTTPException(400, str(e).replace(str(path), name)) from None
            if result.error:
                raise HTTPException(422, result.error.replace(str(path), name))
            body = {**result.to_dict(), "input": name, "model": info["name"]}
            body["notes"] = [n.replace(str(path), name) for n in result.notes]
            body["heatmap"] = None  # the file lived in the request's temp folder; the PNG itself follows
            body["heatmap_png_base64"] = (base64.b64encode(Path(result.heatmap).read_bytes()).decode()
                                          if result.heatmap else None)
            return body

    return app


def _save_upload(file: UploadFile, path: Path) -> int:
    size = 0
    with open(path, "wb") as f:
        while chunk := file.file.read(1 << 20):
            size += len(chunk)
            if size > MAX_UPLOAD_BYTES:
                raise HTTPException(413, f"upload larger than {MAX_UPLOAD_BYTES >> 20} MiB")
            f.write(chunk)
    return size
