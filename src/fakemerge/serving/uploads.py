"""Receive one multipart upload onto disk, refusing it as early as the bytes allow.

The body is parsed as it streams in (never buffered whole): the declared Content-Length is checked before
any byte is read, the file part's size while it streams (nothing past the limit reaches the disk), and its
type is sniffed from its first bytes, so a text file named `.png` is refused after a few bytes, not after
the whole body. The file lands under a name the server chooses; the client's file name is only ever
shown, as plain text, after `display_name` has made it harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from fakemerge.serving.errors import ApiError

FIELD = "file"
OVERHEAD = 64 << 10  # multipart boundaries and part headers allowed beyond the file's own size
DISCARD_S = 5.0  # at most this long reading (and dropping) a refused body, so that the answer is delivered


@dataclass
class Upload:
    name: str  # the client's file name made safe to show (never used on the file system)
    path: Path
    size: int
    format: str  # what the first bytes are, e.g. "png" or "mp4"


def display_name(raw: bytes | str | None) -> str:
    """The last path component, printable characters only, at most 200: safe in any message."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else (raw or "")
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(c for c in text if unicodedata.category(c)[0] != "C")[:200].strip()
    return text or "upload"


def too_large(limit: int) -> ApiError:
    return ApiError(413, "too_large", f"upload larger than the limit of {limit / (1 << 20):g} MiB")


def check_declared(request: Request, limit: int) -> str:
    """Before reading the body: refuse a declared length over the limit; returns the multipart boundary."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad_request", f"Content-Length {declared[:40]!r} is not a number")
        if int(declared) > limit + OVERHEAD:
            raise too_large(limit)
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise ApiError(415, "unsupported_media_type",
                       f"send multipart/form-data with the image or video in a field named '{FIELD}'")
    return boundary.decode("latin-1")


class _Receiver:
    """MultipartParser callbacks: writes the `file` part to `path`, refuses anything else."""

    def __init__(self, path: Path, limit: int, identify: Callable[[bytes, str], str], head: int):
        self.path, self.limit, self.identify, self.head_bytes = path, limit, identify, head
        self.headers: dict[bytes, bytes] = {}
        self.field = self.value = b""
        self.name: str | None = None
        self.writing = False
        self.fd: int | None = None
        self.size = 0
        self.head = b""
        self.format: str | None = None

    def callbacks(self) -> dict:
        return {"on_part_begin": self.part_begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.part_data,
                "on_part_end": self.part_end}

    def part_begin(self) -> None:
        self.headers, self.field, self.value = {}, b"", b""

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def header_end(self) -> None:
        self.headers[self.field.lower()] = self.value
        self.field, self.value = b"", b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        field = options.get(b"name", b"").decode("latin-1")
        if field != FIELD:
            raise ApiError(400, "bad_request", f"unknown form field {display_name(field)!r}: send the file as "
                                               f"'{FIELD}' and options as query parameters")
        if self.name is not None:
            raise ApiError(400, "bad_request", f"one file per request (a second '{FIELD}' part was sent)")
        if b"filename" not in options:
            raise ApiError(400, "bad_request", f"'{FIELD}' must be a file upload, not a text field")
        self.name = display_name(options[b"filename"])
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.writing = True

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if not self.writing:
            return
        chunk = data[start:end]
        self.size += len(chunk)
        if self.size > self.limit:
            raise too_large(self.limit)
        if self.format is None:
            self.head += chunk[:self.head_bytes - len(self.head)]
            if len(self.head) >= self.head_bytes:
                self.format = self.identify(self.head, self.name)
        os.write(self.fd, chunk)

    def part_end(self) -> None:
        if self.writing:
            self.writing = False
            self.close()
            if self.size and self.format is None:
                self.format = self.identify(self.head, self.name)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Body:
    """The request body as it arrives (ASGI messages), remembering how much was read and whether it ended."""

    def __init__(self, request: Request):
        self._receive, self.declared = request.receive, request.headers.get("content-length", "")
        self.ended, self.read = False, 0

    async def chunks(self):
        while not self.ended:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            self.ended = not message.get("more_body", False)
            chunk = message.get("body", b"")
            self.read += len(chunk)
            if chunk:
                yield chunk

    async def discard(self, limit: int) -> bool:
        """Read and drop the rest of the body if it is at most `limit` bytes and arrives within DISCARD_S
        (nothing is stored), so that an answer sent before the body was read reaches
        a client that is still sending (closing with unread data makes TCP reset the connection, and the
        client may lose the answer); True when the body ended. Otherwise the answer closes the connection."""
        if self.declared.isdigit() and int(self.declared) - self.read > limit:
            return False

        async def drop() -> None:
            start = self.read
            async for _ in self.chunks():
                if self.read - start > limit:
                    return

        with contextlib.suppress(asyncio.TimeoutError, ClientDisconnect):
            await asyncio.wait_for(drop(), DISCARD_S)
        return self.ended


async def receive_upload(body: Body, boundary: str, folder: Path, limit: int,
                         identify: Callable[[bytes, str], str], head: int) -> Upload:
    """Stream the body into `folder/upload`; raises ApiError (400/413/415) as soon as the bytes say so.
    `identify(first head bytes, display name)` names the format or raises ApiError 415."""
    receiver = _Receiver(folder / "upload", limit, identify, head)
    try:
        parser = MultipartParser(boundary, receiver.callbacks())
        async for chunk in body.chunks():
            if body.read > limit + OVERHEAD:
                raise too_large(limit)
            parser.write(chunk)
        parser.finalize()
    except FormParserError as e:
        raise ApiError(400, "bad_request", f"malformed multipart body ({e})") from None
    finally:
        receiver.close()
    if receiver.name is None:
        raise ApiError(400, "bad_request", f"no '{FIELD}' field in the form")
    if receiver.writing:
        raise ApiError(400, "bad_request", "the multipart body ended inside the file")
    if receiver.size == 0:
        raise ApiError(400, "bad_request", f"{receiver.name}: empty upload")
    return Upload(receiver.name, receiver.path, receiver.size, receiver.format)
