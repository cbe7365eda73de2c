"""One error shape for every failure: `{"error": {"code": ..., "message": ...}}` with the right status.

FastAPI's own errors (a string `detail`, or a list for validation) are rewritten into it too, so a client
parses one shape. Messages name the upload by its display name, never a server path, and an unexpected
exception becomes a 500 that says nothing about the server's internals.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger("fakemerge.serving")

CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
         415: "unsupported_media_type", 422: "unprocessable", 429: "busy", 503: "unavailable"}


class ApiError(Exception):
    """An answer to send as the error shape; `headers` e.g. Retry-After."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def closing(self) -> ApiError:
        """The same answer, closing the connection: sent before the body was read, it spares the server
        from reading (and discarding) the rest of the body just to keep the connection alive."""
        self.headers["Connection"] = "close"
        return self


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.code, e.message, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"][1:]) or "request"
        return error_response(400, "invalid_parameter", f"{where}: {err['msg']}")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException) -> JSONResponse:
        return error_response(e.status_code, CODES.get(e.status_code, "error"), str(e.detail), e.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal error (logged on the server)")
