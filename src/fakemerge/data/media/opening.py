"""Opening files and uploads for the readers: one file object per input, and one-line reasons for failures."""

from __future__ import annotations

import contextlib
import errno
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from fakemerge.data.media.formats import (
    FORMAT_FAMILY,
    HEAD_BYTES,
    IMAGE_SUFFIXES,
    SUFFIX_FAMILY,
    UNSUPPORTED,
    VIDEO_SUFFIXES,
    kind_of,
    sniff,
)
from fakemerge.errors import InputError

Source = str | os.PathLike | bytes


def display_name(path: str | os.PathLike | bytes) -> str:
    """A path as printable text: bytes that are not UTF-8 are shown as \\xNN (JSON and consoles accept it)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@contextlib.contextmanager
def opened(source: Source, name: str | None) -> Iterator[tuple[BinaryIO, str]]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield io.BytesIO(source), name or "<bytes>"
        return
    name = name or display_name(source)
    try:
        f = open(source, "rb")  # noqa: SIM115 (closed below; errors must be told apart from the block's)
    except OSError as e:
        raise InputError(f"{name}: {os_reason(e)}") from None
    with f:
        yield f, name


def os_reason(e: OSError) -> str:
    known = {errno.ENOENT: "file not found", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
             errno.ELOOP: "symbolic link loop", errno.EISDIR: "is a folder, not a file",
             errno.ENAMETOOLONG: "file name too long"}
    return known.get(e.errno, f"cannot read ({e.strerror or e})")


def identify(f: BinaryIO, name: str, notes: list[str] | None) -> str:
    """The sniffed format of an open file (rewound), or an InputError saying what the file is instead."""
    try:
        head = f.read(HEAD_BYTES)
        f.seek(0)
    except OSError as e:
        raise InputError(f"{name}: {os_reason(e)}") from None
    fmt = sniff(head)
    if fmt in UNSUPPORTED:
        raise InputError(f"{name}: {UNSUPPORTED[fmt]}")
    if fmt is None:
        raise InputError(f"{name}: {_describe_unknown(head)}")
    suffix = Path(name).suffix.lower()
    promised = SUFFIX_FAMILY.get(suffix, suffix.lstrip("."))
    if notes is not None and suffix in IMAGE_SUFFIXES + VIDEO_SUFFIXES and promised != FORMAT_FAMILY.get(fmt,
                                                                                                          fmt):
        notes.append(f"{name}: content is a {fmt.upper()} {kind_of(fmt)}, not what the name ({suffix}) says; "
                     "read as its content")
    return fmt


def _describe_unknown(head: bytes) -> str:
    if not head:
        return "empty file (0 bytes)"
    try:
        text = head.decode("utf-8")
        if all(c.isprintable() or c.isspace() for c in text[:-4] or text):
            return "not an image or video (the file holds text)"
    except UnicodeDecodeError:
        pass
    return f"not an image or video (unrecognised content starting {head[:8].hex(' ')})"


def note(notes: list[str] | None, text: str) -> None:
    if notes is not None:
        notes.append(text)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
