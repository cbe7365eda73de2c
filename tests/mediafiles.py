"""Media files built by the tests (nothing binary is committed): videos written with PyAV, images with
Pillow, and files whose headers claim huge dimensions (small valid encodings with patched size fields)."""

from __future__ import annotations

import io
import struct
import zlib
from fractions import Fraction

import av
import numpy as np
from PIL import Image


def write_video(path, n=30, codec="mpeg4", gop=5, size=32, rotation=None, frames=None, pts=None,
                faststart=False, rate=30):
    """Frame i is a flat grey of brightness 8*i (so a decoded frame tells its own index), or `frames[i]`.
    `rotation`: display-matrix angle (counter-clockwise degrees, as PyAV/FFmpeg); `pts`: explicit
    timestamps in milliseconds (a variable frame rate)."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as c:
        s = c.add_stream(codec, rate=rate)
        first = frames[0] if frames is not None else None
        s.height, s.width = first.shape[:2] if first is not None else (size, size)
        s.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        s.gop_size = gop
        if pts is not None:
            s.time_base = s.codec_context.time_base = Fraction(1, 1000)
        if codec == "libx264":
            s.options = {"g": str(gop), "keyint_min": str(gop), "bf": "0", "crf": "0"}
        if rotation is not None:
            s.set_display_rotation(rotation)
        count = len(frames) if frames is not None else n
        for i in range(count):
            image = frames[i] if frames is not None else np.full((size, size, 3), 8 * i, np.uint8)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def encode(image: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt, **kw)
    return buf.getvalue()


def huge_png(w: int, h: int) -> bytes:
    """A complete, valid 1-bit PNG of w×h pixels, all black: a few kB that decode to w*h pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\x00" * (1 + (w + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def claim_size(data: bytes, fmt: str, w: int, h: int) -> bytes:
    """A small valid encoding whose header now claims w×h (the pixels that follow are too few)."""
    b = bytearray(data)
    if fmt == "jpeg":
        i = next(i for i in range(2, len(b) - 1) if b[i] == 0xFF and b[i + 1] in (0xC0, 0xC1, 0xC2))
        b[i + 5:i + 9] = struct.pack(">HH", h, w)
    elif fmt == "bmp":
        b[18:26] = struct.pack("<ii", w, h)
    elif fmt == "gif":
        b[6:10] = struct.pack("<HH", w, h)
        i = b.index(0x2C, 13)
        b[i + 5:i + 9] = struct.pack("<HH", w, h)
    elif fmt == "tiff":
        (ifd,) = struct.unpack("<I", b[4:8])
        (count,) = struct.unpack("<H", b[ifd:ifd + 2])
        for k in range(count):
            e = ifd + 2 + 12 * k
            tag = struct.unpack("<H", b[e:e + 2])[0]
            if tag in (256, 257):
                b[e + 2:e + 12] = struct.pack("<HII", 4, 1, w if tag == 256 else h)
    elif fmt == "webp":
        assert b[12:16] == b"VP8 ", "lossy simple-format WebP expected"
        b[26:30] = struct.pack("<HH", w & 0x3FFF, h & 0x3FFF)
    elif fmt == "avif":
        i = b.index(b"ispe")
        b[i + 8:i + 16] = struct.pack(">II", w, h)
    else:
        raise ValueError(fmt)
    return bytes(b)
