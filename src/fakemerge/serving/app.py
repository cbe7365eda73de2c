"""The FastAPI app: `/` (the page), `/health`, `/ready`, `/v1/model`, `POST /v1/detect`, `/docs`.

A detect request is refused as early as possible — size and type from its headers before the body is
read, a slot in the bounded pool before the upload starts, the file's type from its first bytes — then
spooled into its own temp folder (removed when its job is over, whatever happened) and analysed on a
worker thread. Every route is async and only the pool's threads run inference, so `/health` answers at
once under any load. OpenAPI pages (`/docs`, `/redoc`) load their scripts from this server, never a CDN.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.requests import ClientDisconnect

import fakemerge
from fakemerge.serving import analysis, errors
from fakemerge.serving.card import model_card
from fakemerge.serving.errors import ApiError, error_response
from fakemerge.serving.settings import ServeSettings
from fakemerge.serving.uploads import FIELD, OVERHEAD, Body, check_declared, receive_upload
from fakemerge.serving.workers import ClientGone, WorkerPool

STATIC = Path(__file__).with_name("static")
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
UPLOAD_SCHEMA = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": [FIELD],
    "properties": {FIELD: {"type": "string", "format": "binary", "description": "an image or a video"}}}}}}}


class _Headers:
    """Pure ASGI (the body is not wrapped): nosniff and no-referrer on every answer, and Server-Timing
    `app;dur=` (ms from the request's headers to its answer), which tells server time from network time."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                timing = f"app;dur={1e3 * (time.perf_counter() - t0):.1f}".encode()
                message["headers"] = [*message.get("headers", []), (b"x-content-type-options", b"nosniff"),
                                      (b"referrer-policy", b"no-referrer"), (b"server-timing", timing)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(model: str | os.PathLike, settings: ServeSettings | None = None) -> FastAPI:
    """The service for the model file at `model`; the model is loaded now, warmed up at startup."""
    settings = settings or ServeSettings()
    path = Path(model)
    detector, meta = analysis.load_model(path)
    card = model_card(path, meta, detector, settings)
    pool = WorkerPool(settings.workers, settings.queue)
    status = {"ready": False, "started": time.monotonic()}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(analysis.warm_up, detector)
        status["ready"] = True
        yield
        pool.drain()
        await asyncio.to_thread(pool.close)

    docs = "/docs" if settings.docs else None
    app = FastAPIOffline(docs_url=docs, redoc_url="/redoc" if settings.docs else None, lifespan=lifespan,
                         title="fakemerge", version=fakemerge.__version__,
                         description="Deepfake detection with a merged CLIP detector. Errors are "
                                     '`{"error": {"code", "message"}}`.')
    app.state.pool, app.state.detector = pool, detector
    errors.install(app)
    app.add_middleware(_Headers)
    app.mount("/assets", StaticFiles(directory=STATIC), name="assets")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY,
                                                             "X-Frame-Options": "DENY"})

    @app.get("/health", summary="Liveness: answered on the event loop, never queued behind inference")
    async def health() -> dict:
        return {"status": "ok", "uptime_s": round(time.monotonic() - status["started"], 1)}

    @app.get("/ready", summary="Readiness: the model is warm and the server is not shutting down")
    async def ready() -> JSONResponse:
        stats = pool.stats()
        if not status["ready"] or stats["draining"]:
            why = "shutting down" if stats["draining"] else "warming up the model"
            return error_response(503, "not_ready", f"not ready: {why}", {"Retry-After": "5"})
        return JSONResponse({"ready": True, **stats})

    @app.get("/v1/model", summary="The model card: base, families, recipe, preprocessing, threshold")
    async def model_info() -> dict:
        return card

    async def refusal(error: ApiError, body: Body) -> ApiError:
        """An answer given before the whole body was read: kept on this connection when the rest of the body
        (up to twice what an accepted upload may send: a client a little over the limit gets its 413) could
        be dropped, else it closes the connection (a 3 GiB body is never read to keep it alive)."""
        done = body.ended or await body.discard(2 * (settings.max_upload_bytes + OVERHEAD))
        return error if done else error.closing()

    @app.post("/v1/detect", openapi_extra=UPLOAD_SCHEMA,
              summary="Score an uploaded image or video (multipart field 'file')",
              responses={s: {"description": d} for s, d in {
                  400: "bad request or parameter", 408: "upload too slow", 413: "upload or image too large",
                  415: "not an image or video (judged from the bytes)", 422: "unreadable or unusable media",
                  429: "all slots taken (Retry-After)", 503: "time limit passed or shutting down"}.items()})
    async def detect_upload(
        request: Request,
        frames: int = Query(settings.frames, ge=1, le=settings.max_frames, description="frames sampled per video"),
        agg: Literal["mean", "max", "topk"] = Query(settings.agg, description="frame -> video aggregation"),
        heatmap: bool = Query(False, description="add a Grad-CAM overlay PNG (base64)"),
    ) -> Response:
        t0 = time.monotonic()
        body = Body(request)
        try:
            boundary = check_declared(request, settings.max_upload_bytes)
            slot = pool.admit()
        except ApiError as e:
            raise await refusal(e, body) from None
        folder = Path(tempfile.mkdtemp(prefix="fakemerge-serve-", dir=settings.tmp_dir))
        submitted = False

        def abandon() -> None:  # idempotent: the upload will not be analysed
            shutil.rmtree(folder, ignore_errors=True)
            slot.release()

        try:
            try:
                upload = await asyncio.wait_for(
                    receive_upload(body, boundary, folder, settings.max_upload_bytes, analysis.identify,
                                   analysis.HEAD_BYTES),
                    settings.timeout_s)
            except asyncio.TimeoutError:
                abandon()
                raise ApiError(408, "upload_timeout",
                               f"the upload did not finish within {settings.timeout_s:g} s").closing() from None
            except ApiError as e:
                abandon()  # before dropping the rest of the body: the slot is free for the next request
                raise await refusal(e, body) from None
            received = time.monotonic()
            job = partial(analysis.analyse, detector, upload, analysis.Options(frames, agg, heatmap), settings)
            future = pool.submit(slot, job, partial(shutil.rmtree, folder, ignore_errors=True))
            submitted = True
            gone = asyncio.ensure_future(_disconnected(request))
            try:
                result = await pool.result(future, settings.timeout_s - (received - t0), gone)
            finally:
                gone.cancel()
        except (ClientDisconnect, ClientGone):
            return Response(status_code=499)  # nobody is listening; the status only reaches the access log
        finally:
            if not submitted:
                abandon()
        return JSONResponse(result, headers={"Server-Timing": f"upload;dur={1e3 * (received - t0):.1f}"})

    return app


async def _disconnected(request: Request) -> None:
    """Completes when the client hangs up (the body has been read, so the next ASGI message is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
