"""What a file is, from its first bytes: the formats the media layer reads, and the names they go by."""

from __future__ import annotations

HEAD_BYTES = 512  # enough for every signature `sniff` knows (MPEG-TS needs byte 188)

# sniffed format -> Pillow plugin id
IMAGE_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF", "gif": "GIF",
                 "avif": "AVIF"}
VIDEO_FORMATS = ("mp4", "mov", "3gp", "mkv", "webm", "avi", "mpeg", "mpegts", "flv", "asf", "ogg")
UNSUPPORTED = {
    "heif": "HEIC/HEIF images are not supported (convert to JPEG or PNG first)",
    "m4a": "an audio file (M4A): no video stream",
    "wav": "an audio file (WAV): no video stream",
    "mp3": "an audio file (MP3): no video stream",
    "flac": "an audio file (FLAC): no video stream",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".avif")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".3gp", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv",
                  ".wmv", ".ogv")
# what a suffix promises, for the note when the content differs (containers of one family count as one)
SUFFIX_FAMILY = {".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".m4v": "mp4", ".mov": "mp4", ".3gp": "mp4",
                 ".mpg": "mpeg", ".ts": "mpegts", ".wmv": "asf", ".ogv": "ogg", ".webm": "mkv"}
FORMAT_FAMILY = {"mov": "mp4", "3gp": "mp4", "webm": "mkv"}


def sniff(head: bytes) -> str | None:
    """The container/format named by a file's first bytes (`HEAD_BYTES` suffice), or None if unknown."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in (12, 40, 52, 56, 64,
                                                                                         108, 124):
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:4] == b"RIFF" and len(head) >= 12:
        return {b"WEBP": "webp", b"AVI ": "avi", b"WAVE": "wav"}.get(head[8:12])
    if head[4:8] == b"ftyp":
        return _iso_brand(head)
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"):
        return "mov"  # QuickTime files older than the ftyp box
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm" if b"webm" in head[:64] else "mkv"
    if head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):
        return "mpeg"
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:
        return "mpegts"
    if head.startswith(b"FLV\x01"):
        return "flv"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return "asf"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"ID3") or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "mp3"
    return None


def _iso_brand(head: bytes) -> str:
    """ISO base media files: the ftyp brands say video (mp4, mov, 3gp), image (HEIF, AVIF) or audio (M4A)."""
    size = int.from_bytes(head[:4], "big")
    brands = [head[8:12]] + [head[i:i + 4] for i in range(16, min(size, len(head)) - 3, 4)]
    if brands[0] in (b"avif", b"avis") or (brands[0] in (b"mif1", b"msf1") and b"avif" in brands):
        return "avif"
    if brands[0] in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"):
        return "heif"
    if brands[0] in (b"M4A ", b"M4B "):
        return "m4a"
    if brands[0] == b"qt  ":
        return "mov"
    if brands[0].startswith((b"3gp", b"3g2")):
        return "3gp"
    return "mp4"


def kind_of(fmt: str | None) -> str | None:
    """'image', 'video' or None (unknown or unsupported)."""
    return "image" if fmt in IMAGE_FORMATS else "video" if fmt in VIDEO_FORMATS else None
