"""The media layer: sniffing, probing, bounded decoding, normalisation, video sampling, bad inputs."""

import ctypes
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from mediafiles import claim_size, encode, huge_png, write_video
from PIL import Image

from fakemerge.data import media
from fakemerge.data.media import video
from fakemerge.data.media.opening import os_reason
from fakemerge.errors import InputError

RNG = np.random.default_rng(0)
PHOTO = RNG.integers(0, 255, (30, 40, 3), dtype=np.uint8)
PIL_NAMES = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF", "gif": "GIF",
             "avif": "AVIF"}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return {suffix: write_video(root / f"v{suffix}", n=30, codec=codec)
            for suffix, codec in ((".mp4", "mpeg4"), (".avi", "mpeg4"), (".mkv", "libx264"), (".webm", "libvpx"),
                                  (".mov", "mpeg4"))}


# -------------------------------------------------------------------------------------------- sniffing

@pytest.mark.parametrize("fmt", sorted(PIL_NAMES))
def test_sniff_names_every_image_format_from_its_bytes(fmt):
    assert media.sniff(encode(PHOTO, PIL_NAMES[fmt])[:media.HEAD_BYTES]) == fmt
    assert media.kind_of(fmt) == "image"


def test_sniff_names_video_containers_and_refuses_the_rest(videos):
    expected = {".mp4": "mp4", ".avi": "avi", ".mkv": "mkv", ".webm": "webm", ".mov": "mov"}
    for suffix, path in videos.items():
        assert media.sniff(path.read_bytes()[:media.HEAD_BYTES]) == expected[suffix]
    assert media.sniff(b"") is None and media.sniff(b"hello, world") is None
    assert media.sniff(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic") == "heif"
    assert media.sniff(b"\x00\x00\x00\x18ftypM4A \x00\x00\x00\x00M4A isom") == "m4a"
    assert media.sniff(b"BM" + b"\x00" * 30) is None  # "BM" text is not a bitmap without its header size


def test_probe_reads_headers_only(videos, tmp_path):
    assert media.probe(encode(PHOTO, "PNG")) == media.MediaInfo("image", "png", 40, 30, 1)
    info = media.probe(videos[".mp4"])
    assert (info.kind, info.format, info.width, info.height, info.frames) == ("video", "mp4", 32, 32, 30)
    assert media.probe(huge_png(20000, 20000)).pixels == 400_000_000  # no pixel decoded (a 400 MP image)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    rotated = encode(PHOTO, "JPEG", exif=exif.tobytes())
    assert (media.probe(rotated).width, media.probe(rotated).height) == (30, 40)
    with pytest.raises(InputError, match="empty file"):
        media.probe(b"", name="e.png")


# ----------------------------------------------------------------------------------------------- images

def test_images_normalise_to_upright_8_bit_rgb():
    grey = RNG.integers(0, 255, (20, 24), dtype=np.uint8)
    for mode in ("L", "LA", "P", "RGBA", "1"):
        im = Image.fromarray(grey).convert(mode)
        buf = encode(np.asarray(im), "PNG") if mode != "1" else _save(im, "PNG")
        out = media.read_image(buf)
        assert out.shape == (20, 24, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, np.asarray(Image.open(_io(buf)).convert("RGB")))
    rgba = np.dstack([PHOTO, np.zeros((30, 40), np.uint8)])  # fully transparent: the stored colour is kept
    np.testing.assert_array_equal(media.read_image(encode(rgba, "PNG")), PHOTO)
    deep = (RNG.integers(0, 65535, (20, 24))).astype(np.uint16)
    np.testing.assert_array_equal(media.read_image(encode(deep, "PNG"))[..., 0], deep >> 8)
    deep_rgb = cv2.imencode(".png", np.dstack([deep] * 3))[1].tobytes()  # 48-bit RGB: as OpenCV reads it
    np.testing.assert_array_equal(media.read_image(deep_rgb), cv2.imdecode(
        np.frombuffer(deep_rgb, np.uint8), cv2.IMREAD_COLOR)[..., ::-1])
    cmyk = _save(Image.fromarray(PHOTO).convert("CMYK"), "JPEG", quality=95)
    assert np.abs(media.read_image(cmyk).astype(int) - PHOTO).mean() < 12
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = media.read_image(encode(PHOTO, "PNG", exif=exif.tobytes()))
    np.testing.assert_array_equal(turned, np.rot90(PHOTO, -1))
    with pytest.raises(InputError, match="floating-point samples"):
        media.read_image(_save(Image.fromarray(RNG.random((8, 8)).astype(np.float32), "F"), "TIFF"))


def _io(data):
    import io

    return io.BytesIO(data)


def _save(im, fmt, **kw):
    buf = _io(b"")
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def test_jpeg_decodes_the_same_as_opencv():
    data = encode(RNG.integers(0, 255, (64, 48, 3), dtype=np.uint8), "JPEG", quality=80)
    cv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    np.testing.assert_array_equal(media.read_image(data), cv)  # DeepfakeBench crops were read by OpenCV


@pytest.mark.parametrize("fmt,w,h", [("png", 20000, 20000), ("jpeg", 60000, 60000), ("bmp", 30000, 30000),
                                     ("gif", 65535, 65535), ("tiff", 30000, 30000), ("webp", 16383, 16383)])
def test_huge_dimensions_are_refused_before_decoding(fmt, w, h):
    data = huge_png(w, h) if fmt == "png" else claim_size(encode(PHOTO, PIL_NAMES[fmt]), fmt, w, h)
    assert len(data) < 100_000
    with pytest.raises(InputError, match=rf"x\.{fmt}: {w}×{h} {fmt.upper()} image is over the pixel limit"):
        media.read_image(data, name=f"x.{fmt}")


def test_avif_over_a_lowered_limit_is_refused():
    with pytest.raises(InputError, match="over the pixel limit"):
        media.read_image(encode(PHOTO, "AVIF"), max_pixels=1000)
    assert media.read_image(encode(PHOTO, "AVIF")).shape == (30, 40, 3)


def test_peak_memory_stays_bounded_on_huge_claims(tmp_path):
    """All the huge files in a fresh process: its peak RSS stays far below one decoded image (1.2 GB)."""
    files = [tmp_path / "big.png"]
    files[0].write_bytes(huge_png(20000, 20000))
    for fmt, w, h in (("jpeg", 60000, 60000), ("tiff", 30000, 30000), ("webp", 16383, 16383)):
        files.append(tmp_path / f"big.{fmt}")
        files[-1].write_bytes(claim_size(encode(PHOTO, PIL_NAMES[fmt]), fmt, w, h))
    code = ("import sys\nfrom fakemerge.data import media\nfor p in sys.argv[1:]:\n"
            "    media.probe(p)\n    try:\n        media.read_image(p)\n    except Exception as e:\n"
            "        print(e)\nprint(next(int(line.split()[1]) for line in open('/proc/self/status')"
            " if line.startswith('VmHWM')))")  # the peak of this process (ru_maxrss counts the parent's)
    out = subprocess.run([sys.executable, "-c", code, *map(str, files)], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).stdout.split("\n")
    assert sum("over the pixel limit" in line for line in out) == 4
    assert int(out[-2]) < 300_000, out  # kB


def test_large_jpeg_is_decoded_reduced_with_a_note():
    big = cv2.resize(PHOTO, (1600, 1200), interpolation=cv2.INTER_LINEAR)
    data = encode(big, "JPEG", quality=90)
    notes = []
    out = media.read_image(data, name="big.jpg", max_pixels=500_000, notes=notes)
    assert out.shape == (600, 800, 3) and "decoded at 1/2 scale (800×600)" in notes[0]
    full = cv2.resize(media.read_image(data), (800, 600), interpolation=cv2.INTER_AREA)
    assert np.abs(out.astype(int) - full).mean() < 3
    with pytest.raises(InputError, match="over the pixel limit"):
        media.read_image(encode(big, "PNG"), max_pixels=500_000)  # only JPEG decodes reduced


def test_truncated_and_corrupt_images_are_errors(tmp_path):
    jpeg, png = encode(PHOTO, "JPEG"), encode(PHOTO, "PNG")
    for data, name in ((jpeg[: len(jpeg) // 2], "half.jpg"), (jpeg[:-2], "no-end-marker.jpg"),
                       (png[: len(png) - 40], "cut.png")):
        with pytest.raises(InputError, match=rf"{name}: truncated (JPEG|PNG) data"):
            media.read_image(data, name=name)
    with pytest.raises(InputError, match="bad.png: corrupt PNG"):
        media.read_image(png[:8] + b"\x00" * 40, name="bad.png")
    with pytest.raises(InputError, match="v: a MP4 video, not an image"):
        media.read_image(write_video(tmp_path / "v.mp4", n=3).read_bytes(), name="v")


def test_misnamed_files_are_read_as_their_content_with_a_note(tmp_path, videos):
    png = tmp_path / "photo.mp4"
    png.write_bytes(encode(PHOTO, "PNG"))
    notes, stats = [], {}
    (frame,) = media.read_frames(png, 8, notes=notes, stats=stats)
    assert stats["kind"] == "image" and frame.image.shape == (30, 40, 3)
    assert "content is a PNG image, not what the name (.mp4) says" in notes[0]
    clip = tmp_path / "clip.png"
    clip.write_bytes(videos[".mp4"].read_bytes())
    notes = []
    assert len(list(media.read_frames(clip, 4, notes=notes))) == 4 and "MP4 video" in notes[0]
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo\n")
    with pytest.raises(InputError, match=r"notes\.jpg: not an image or video \(the file holds text\)"):
        media.read_image(text)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.jpg: empty file \(0 bytes\)"):
        media.read_image(empty)
    heic = tmp_path / "phone.heic"
    heic.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)
    with pytest.raises(InputError, match="HEIC/HEIF images are not supported"):
        media.read_image(heic)


def test_any_file_name_the_os_allows(tmp_path):
    data = encode(PHOTO, "PNG")
    names = [b"with space.png", "ünïcødé 写真.png".encode(), b"bad-\xff\xfe-bytes.png"]
    for raw in names:
        path = os.path.join(os.fsencode(tmp_path), raw)
        with open(path, "wb") as f:
            f.write(data)
        np.testing.assert_array_equal(media.read_image(os.fsdecode(path)), PHOTO)
    items = media.find_media([tmp_path])
    shown = sorted(Path(item.name).name for item in items)
    assert shown == sorted(["with space.png", "ünïcødé 写真.png", "bad-\\xff\\xfe-bytes.png"])
    json.dumps(shown)  # printable and storable
    assert all(item.error is None for item in items)


def test_unreadable_file_is_one_clear_line(tmp_path):
    """Permissions: root reads everything, so as root the read runs in a child that drops its capabilities."""
    path = tmp_path / "locked.png"
    path.write_bytes(encode(PHOTO, "PNG"))
    path.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(InputError, match=r"locked\.png: permission denied"):
            media.read_image(path)
        return
    message = _in_child_without_capabilities(lambda: media.read_image(path))
    if message is None:
        pytest.skip("running as root and capabilities cannot be dropped here (capset refused)")
    assert message.endswith("locked.png: permission denied"), message


def _in_child_without_capabilities(fn) -> str | None:
    """Run fn in a forked child whose effective capabilities are cleared; its error message, or None if the
    capabilities could not be dropped."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns to pytest
        os.close(read)
        try:
            header = (ctypes.c_uint32 * 2)(0x20080522, 0)
            data = (ctypes.c_uint32 * 6)()
            libc = ctypes.CDLL(None, use_errno=True)
            text = "\0capset failed"
            if libc.capset(header, data) == 0:
                try:
                    fn()
                    text = "read succeeded"
                except InputError as e:
                    text = str(e)
            os.write(write, text.encode())
        finally:
            os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 4096):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    text = b"".join(chunks).decode()
    return None if text.startswith("\0") else text


def test_listing_reports_empty_folders_links_and_skipped_files(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "a.png").write_bytes(encode(PHOTO, "PNG"))
    (tmp_path / "tree" / "no-suffix").write_bytes(encode(PHOTO, "JPEG"))  # found by its content
    (tmp_path / "tree" / "readme.txt").write_text("hello")
    (tmp_path / "tree" / "sub" / "up").symlink_to("..")  # a folder loop
    (tmp_path / "tree" / "self.png").symlink_to("self.png")  # a file loop
    (tmp_path / "tree" / "gone.png").symlink_to("nowhere.png")
    notes = []
    items = media.find_media([tmp_path / "empty", tmp_path / "tree", tmp_path / "missing.png"], notes=notes)
    by_name = {Path(i.name).name: i for i in items}
    assert "empty: folder has no images or videos" in by_name["empty"].error
    assert by_name["a.png"].error is None and by_name["no-suffix"].error is None
    assert "symbolic link loop" in by_name["self.png"].error
    assert "broken symbolic link" in by_name["gone.png"].error
    assert "symbolic link loop" in by_name["up"].error and "not searched twice" in by_name["up"].error
    assert by_name["missing.png"].error is None  # reading it says "file not found"
    with pytest.raises(InputError, match="missing.png: file not found"):
        media.read_image(by_name["missing.png"].source)
    with pytest.raises(InputError, match="self.png: symbolic link loop"):
        media.read_image(tmp_path / "tree" / "self.png")
    assert len(notes) == 1 and "skipped 1 file(s)" in notes[0] and "readme.txt" in notes[0]


def test_folder_as_video_lists_frame_folders(tmp_path):
    for name in ("v1", "v2"):
        (tmp_path / name).mkdir()
        for i in (1, 2, 10):
            (tmp_path / name / f"{i}.png").write_bytes(encode(np.full((20, 20, 3), i * 20, np.uint8), "PNG"))
    write_video(tmp_path / "clip.mp4", n=3)
    items = media.find_media([tmp_path], folder_as_video=True)
    assert [Path(i.name).name for i in items] == ["clip.mp4", "v1", "v2"]
    assert [p.name for p in media.frame_files(tmp_path / "v1")] == ["1.png", "2.png", "10.png"]
    stats = {}
    frames = list(media.read_frames(tmp_path / "v1", 2, stats=stats))
    assert stats["kind"] == "frames" and [f.index for f in frames] == [0, 2]
    assert frames[1].image.mean() == 200  # "10.png", the last frame by number (not by name)


# ----------------------------------------------------------------------------------------------- videos

def test_even_indices():
    assert media.even_indices(30, 4) == [0, 10, 19, 29]
    assert media.even_indices(3, 8) == [0, 1, 2]
    assert media.even_indices(0, 8) == []


@pytest.mark.parametrize("suffix", [".mp4", ".avi", ".mkv", ".webm", ".mov"])
def test_sampled_frames_are_the_evenly_spaced_ones_with_seeking(videos, suffix):
    stats = {}
    frames = list(media.read_frames(videos[suffix], 4, stats=stats))
    assert [f.index for f in frames] == [0, 10, 19, 29]
    for f in frames:
        assert f.image.shape == (32, 32, 3) and abs(f.image.mean() - 8 * f.index) < 4  # that frame, not another
        assert f.time == pytest.approx(f.index / 30, abs=0.02)
    assert stats["decoded"] < 30  # seeking: only parts of GOPs were decoded


def test_variable_frame_rate_and_b_frames_index_frames_exactly(tmp_path):
    pts = [0, 40, 50, 200, 210, 400, 1000, 1010, 1020, 1500]  # milliseconds: bursts and pauses
    frames = list(media.read_frames(write_video(tmp_path / "vfr.mp4", n=10, pts=pts), 4))
    assert [f.index for f in frames] == [0, 3, 6, 9]
    assert [round(f.image.mean() / 8) for f in frames] == [0, 3, 6, 9]
    assert [f.time for f in frames] == pytest.approx([0, 0.2, 1.0, 1.5])
    path = tmp_path / "bframes.mkv"
    with av.open(str(path), "w") as c:  # x264 with B-frames: decode order differs from display order
        s = c.add_stream("libx264", rate=25)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        s.options = {"bf": "3", "g": "12", "crf": "0"}
        for i in range(32):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 8 * i, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    frames = list(media.read_frames(path, 5))
    assert [f.index for f in frames] == [0, 8, 16, 23, 31]
    assert [round(f.image.mean() / 8) for f in frames] == [0, 8, 16, 23, 31]


def test_in_order_fallback_gives_the_same_frames(videos, monkeypatch):
    seek = [f.index for f in media.read_frames(videos[".mp4"], 5)]
    real = video.timeline
    monkeypatch.setattr(video, "timeline", lambda c, s: ([None] * len(real(c, s)[0]), [], 0))
    stats = {}
    frames = list(media.read_frames(videos[".mp4"], 5, stats=stats))
    assert [f.index for f in frames] == seek == media.even_indices(30, 5)
    assert all(abs(f.image.mean() - 8 * f.index) < 4 for f in frames)
    assert stats["decoded"] == 30  # decoding stops at the last target (frame 29)


MARK = np.zeros((32, 64, 3), np.uint8)
MARK[:8, :8] = (255, 0, 0)  # a red block in the top-left corner of the stored frame


@pytest.mark.parametrize("rotation,shape,corner", [(90, (64, 32), "bottom-left"), (-90, (64, 32), "top-right"),
                                                   (180, (32, 64), "bottom-right"), (None, (32, 64), "top-left")])
def test_display_rotation_is_applied_as_ffmpeg_does(tmp_path, rotation, shape, corner):
    """Expected corners measured with the ffmpeg command line (autorotate) on the same files."""
    path = write_video(tmp_path / "r.mp4", frames=[MARK] * 3, codec="libx264", rotation=rotation)
    (frame,) = media.read_frames(path, 1)
    assert frame.image.shape[:2] == shape
    assert _red_corner(frame.image) == corner


def test_display_mirroring_is_applied(tmp_path):
    path = tmp_path / "m.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 32, "yuv420p"
        s.set_display_matrix([-65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30])  # horizontal mirror
        for p in s.encode(av.VideoFrame.from_ndarray(MARK, format="rgb24")):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    (frame,) = media.read_frames(path, 1)
    assert _red_corner(frame.image) == "top-right"


def _red_corner(image):
    ys, xs = np.nonzero(image[..., 0] > 128)
    h, w = image.shape[:2]
    return f"{'top' if ys.mean() < h / 2 else 'bottom'}-{'left' if xs.mean() < w / 2 else 'right'}"


def test_truncated_and_damaged_videos(tmp_path):
    frames = [RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(30)]
    data = write_video(tmp_path / "fs.mp4", frames=frames, faststart=True).read_bytes()  # index first
    notes = []
    got = list(media.read_frames(data[: len(data) * 6 // 10], 8, name="cut.mp4", notes=notes))
    assert len(got) == 8 and "the container lists 30 frames but only" in notes[0]
    assert max(f.index for f in got) < 18  # sampled over the frames that are there
    with av.open(str(tmp_path / "fs.mp4")) as c:
        first_packet = next(p.pos for p in c.demux(video=0))
    with pytest.raises(InputError, match=r"header\.mp4: video has no frames"):
        list(media.read_frames(data[:first_packet + 4], 8, name="header.mp4"))  # index, no frame data
    tail = write_video(tmp_path / "tail.mp4", frames=frames).read_bytes()  # index at the end: nothing left
    with pytest.raises(InputError, match=r"cut2\.mp4: (no video stream found|unreadable)"):
        list(media.read_frames(tail[: len(tail) // 2], 8, name="cut2.mp4"))
    with pytest.raises(InputError, match=r"zeros\.mp4: unreadable MP4 video"):
        list(media.read_frames(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 200, 4, name="zeros.mp4"))


def test_audio_only_files_are_refused(tmp_path):
    for suffix in (".mp4", ".mkv"):
        path = tmp_path / f"sound{suffix}"
        with av.open(str(path), "w") as c:
            s = c.add_stream("aac", rate=8000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 8000
            for p in s.encode(frame):
                c.mux(p)
            for p in s.encode():
                c.mux(p)
        with pytest.raises(InputError, match=rf"sound{suffix}: no video stream \(audio only\)"):
            list(media.read_frames(path, 4))


def test_huge_video_frames_are_refused_before_decoding(tmp_path, videos):
    path = write_video(tmp_path / "m.avi", n=3, codec="mjpeg", size=64)
    b = bytearray(path.read_bytes())
    i = b.find(b"strf")
    b[i + 12:i + 20] = (16000).to_bytes(4, "little") * 2  # the stream header claims 16000×16000 ...
    i = 0
    while (i := b.find(b"\xff\xc0", i + 1)) > 0:
        b[i + 5:i + 9] = (16000).to_bytes(2, "big") * 2  # ... and so does every JPEG frame
    with pytest.raises(InputError, match="16000×16000 video frames are over the pixel limit"):
        list(media.read_frames(bytes(b), 4, name="huge.avi"))
    with pytest.raises(InputError, match="over the pixel limit"):
        list(media.read_frames(videos[".mp4"], 4, max_pixels=500))


def test_bad_video_bytes_never_reach_stderr(tmp_path, capfd):
    data = bytearray(write_video(tmp_path / "v.mp4", frames=[RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                                                               for _ in range(30)], faststart=True).read_bytes())
    start = len(data) // 2
    data[start:start + 400] = b"\x33" * 400
    notes = []
    frames = list(media.read_frames(bytes(data), 8, notes=notes))
    assert frames and notes and all("undecodable" in n or "damaged" in n for n in notes)
    assert capfd.readouterr().err == ""


def test_errors_name_the_errno_reason():
    assert os_reason(OSError(errno.EACCES, "x")) == "permission denied"
    assert os_reason(OSError(errno.ELOOP, "x")) == "symbolic link loop"
    assert os_reason(OSError(errno.EIO, "Input/output error")) == "cannot read (Input/output error)"
