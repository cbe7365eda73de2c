"""`fakemerge serve MODEL --port 8000`: REST API (POST /detect, GET /health) and an upload page at /."""

from __future__ import annotations

from pathlib import Path

import typer


def serve_command(
    model: Path = typer.Argument(..., help="A fakemerge model file (.safetensors)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 for all)."),
    port: int = typer.Option(8000, "--port"),
    frames: int = typer.Option(8, "--frames", help="Default frames sampled per video."),
    agg: str = typer.Option("mean", "--agg", help="Default frame→video aggregation: mean | max | topk."),
    face: str = typer.Option("none", "--face", help="Face backend: none | dlib."),
    no_face: str = typer.Option("whole", "--no-face", help="When no face is found: whole | skip | error."),
) -> None:
    """Serve the detector over HTTP, with a small web page to upload a file and see score and heatmap."""
    import uvicorn

    from fakemerge.data.faces import get_backend
    from fakemerge.serving.app import create_app

    get_backend(face)  # fail now (exit 2) rather than on the first request
    app = create_app(model, frames=frames, agg=agg, face=face, no_face=no_face)
    uvicorn.run(app, host=host, port=port, log_level="info")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
