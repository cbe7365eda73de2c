"""`fakemerge serve MODEL`: REST API under /v1, /health, /ready, docs and an upload page at /.

Every setting is a CLI option and an environment variable (FAKEMERGE_*), for containers.
"""

from __future__ import annotations

from pathlib import Path

import typer


def serve_command(
    model: Path = typer.Argument(..., envvar="FAKEMERGE_MODEL",
                                 help="A detector: fakemerge file, exported HF folder or checkpoint."),
    host: str = typer.Option("127.0.0.1", "--host", envvar="FAKEMERGE_HOST",
                             help="Interface to listen on (0.0.0.0: every interface — put a proxy in front)."),
    port: int = typer.Option(8000, "--port", envvar="FAKEMERGE_PORT"),
    workers: int = typer.Option(1, "--workers", envvar="FAKEMERGE_WORKERS", help="Inference threads."),
    queue: int = typer.Option(8, "--queue", envvar="FAKEMERGE_QUEUE",
                              help="Requests admitted beyond the running ones; more get 429 + Retry-After."),
    max_upload_mb: float = typer.Option(100, "--max-upload-mb", envvar="FAKEMERGE_MAX_UPLOAD_MB",
                                        help="Largest upload (MiB); refused before it reaches the disk."),
    max_pixels: int = typer.Option(40_000_000, "--max-pixels", envvar="FAKEMERGE_MAX_PIXELS",
                                   help="Largest image / video frame (width × height), checked before decoding."),
    timeout: float = typer.Option(60, "--timeout", envvar="FAKEMERGE_TIMEOUT",
                                  help="Seconds per request: upload, wait and analysis."),
    frames: int = typer.Option(8, "--frames", envvar="FAKEMERGE_FRAMES", help="Default frames sampled per video."),
    max_frames: int = typer.Option(64, "--max-frames", envvar="FAKEMERGE_MAX_FRAMES",
                                   help="Most frames a request may ask for."),
    agg: str = typer.Option("mean", "--agg", envvar="FAKEMERGE_AGG",
                            help="Default frame→video aggregation: mean | max | topk."),
    topk: int = typer.Option(3, "--topk", envvar="FAKEMERGE_TOPK", help="k for --agg topk."),
    face: str = typer.Option("none", "--face", envvar="FAKEMERGE_FACE", help="Face backend: none | dlib."),
    no_face: str = typer.Option("whole", "--no-face", envvar="FAKEMERGE_NO_FACE",
                                help="When no face is found: whole | skip | error."),
    tmp_dir: Path = typer.Option(None, "--tmp-dir", envvar="FAKEMERGE_TMP_DIR",
                                 help="Where uploads are spooled (default: the system temp folder)."),
    docs: bool = typer.Option(True, "--docs/--no-docs", envvar="FAKEMERGE_DOCS",
                              help="Serve the OpenAPI pages /docs and /redoc (assets from this server)."),
    log_level: str = typer.Option("info", "--log-level", envvar="FAKEMERGE_LOG_LEVEL"),
) -> None:
    """Serve the detector over HTTP: an upload page with verdict, heatmap and frame plot, and a JSON API."""
    from fakemerge.data.faces import get_backend
    from fakemerge.serving import build_settings, create_app
    from fakemerge.serving.server import serve

    settings = build_settings(workers=workers, queue=queue, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
                              timeout_s=timeout, frames=frames, max_frames=max_frames, agg=agg, topk=topk,
                              face=face, no_face=no_face, tmp_dir=tmp_dir, docs=docs)
    get_backend(face)  # fail now (exit 2) rather than on the first request
    serve(create_app(model, settings), settings, host, port, log_level)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
