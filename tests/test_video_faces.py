"""Frame sampling (PyAV) and face cropping: indices, decode economy, no-face policies, alignment."""

import av
import cv2
import numpy as np
import pytest

from fakemerge.data import faces, video
from fakemerge.errors import InputError


def write_video(path, n=30, codec="mpeg4", gop=5, size=32):
    """Frame i is a flat grey of brightness 8*i, so a decoded frame tells its own index."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=30)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.gop_size = gop
        if codec == "libx264":
            s.options = {"g": str(gop), "keyint_min": str(gop), "bf": "0", "crf": "0"}
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 8 * i, np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_even_indices():
    assert video.even_indices(30, 4) == [0, 10, 19, 29]
    assert video.even_indices(3, 8) == [0, 1, 2]
    assert video.even_indices(0, 8) == []


@pytest.mark.parametrize("suffix,codec", [(".mp4", "mpeg4"), (".avi", "mpeg4"), (".mkv", "libx264"),
                                          (".webm", "libvpx")])
def test_sampled_frames_are_the_evenly_spaced_ones(tmp_path, suffix, codec):
    path = write_video(tmp_path / f"v{suffix}", n=30, codec=codec)
    stats = {}
    frames = video.sample_indexed(path, 4, stats)
    assert [i for i, _ in frames] == [0, 10, 19, 29]
    for i, frame in frames:
        assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8
        assert abs(frame.mean() - 8 * i) < 4  # the content is that frame's, not a neighbour's
    assert stats["decoded"] < 30  # seeking: only parts of GOPs were decoded


def test_sequential_fallback_gives_the_same_frames(tmp_path, monkeypatch):
    path = write_video(tmp_path / "v.mp4", n=30)
    seek = [i for i, _ in video.sample_indexed(path, 5)]
    monkeypatch.setattr(video, "_seekable", lambda stream: False)
    stats = {}
    frames = video.sample_indexed(path, 5, stats)
    assert [i for i, _ in frames] == seek == video.even_indices(30, 5)
    assert stats["decoded"] == 30  # decoding stops at the last target (frame 29)
    assert len(video.sample_frames(path, 5)) == 5


def test_unreadable_video_is_a_clear_input_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(InputError, match="bad.mp4"):
        video.sample_frames(bad, 4)
    with pytest.raises(InputError, match="missing.mp4"):
        video.sample_frames(tmp_path / "missing.mp4", 4)


def _dots(points, size=128):
    image = np.zeros((size, size, 3), np.uint8)
    for (x, y), colour in zip(points, [(255, 0, 0), (0, 255, 0), (0, 0, 255)], strict=True):
        cv2.circle(image, (int(round(x)), int(round(y))), 2, colour, -1)
    return image


def _centroid(image, channel):
    mask = (image[..., channel] > 128) & (image.sum(-1) < 400)
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_alignment_maps_landmarks_onto_the_template():
    # landmarks = the template rotated by 20 degrees, scaled by 0.8 and shifted
    tpl = faces.template(128, 1.3)
    theta = np.deg2rad(20)
    rot = 0.8 * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    landmarks = (tpl - 64) @ rot.T + [60, 70]
    image = _dots(landmarks)
    face = faces.Face((0, 0, 128, 128), landmarks.astype(np.float32))
    crop = faces.align(image, face, size=128, margin=1.3)
    for channel, expected in enumerate(tpl):
        np.testing.assert_allclose(_centroid(crop, channel), expected, atol=1.5)


def test_box_crop_without_landmarks_is_square_with_margin():
    image = np.zeros((100, 100, 3), np.uint8)
    image[40:60, 40:60] = 255  # a 20 px "face" in the middle
    crop = faces.align(image, faces.Face((40, 40, 60, 60)), size=60, margin=1.5)
    # the box spans 20 * 1.5 = 30 source px -> 60 output px: the white square is the middle 40 px
    assert crop[30, 30].min() == 255 and crop[5, 5].max() == 0
    assert (crop[:, 30, 0] > 128).sum() == pytest.approx(40, abs=2)


class Blind:
    """A face backend that never finds a face."""

    name = "blind"

    def detect(self, image):
        return []


def test_no_face_policies_are_reported_per_frame():
    faces.register_backend("blind", Blind)
    blank = np.full((64, 80, 3), 127, np.uint8)
    whole = faces.crop_face(blank, "blind", size=32, no_face="whole", source="x.png")
    assert whole.status == "whole" and whole.image.shape == (32, 32, 3) and "x.png" in whole.message
    skipped = faces.crop_face(blank, "blind", size=32, no_face="skip")
    assert skipped.status == "skipped" and skipped.image is None and "no face" in skipped.message
    with pytest.raises(InputError, match="no face"):
        faces.crop_face(blank, "blind", size=32, no_face="error")
    centre = faces.crop_face(blank, "none", size=32)
    assert centre.status == "centre" and centre.image.shape == (32, 32, 3)
    with pytest.raises(InputError, match="unknown face backend"):
        faces.crop_face(blank, "mtcnn")


def test_dlib_backend_runs_offline_when_installed():
    pytest.importorskip("dlib")
    detector = faces.get_backend("dlib")
    assert detector.detect(np.full((96, 96, 3), 127, np.uint8)) == []
    # a real portrait that ships with matplotlib: one face, eyes left-to-right, aligned crop
    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    (face,) = detector.detect(image)
    left, right, nose = face.landmarks
    assert left[0] < nose[0] < right[0] and nose[1] > max(left[1], right[1])
    crop = faces.crop_face(image, "dlib", size=128)
    assert crop.status == "face" and crop.image.shape == (128, 128, 3)


def test_preprocess_writes_crops_and_a_json_our_reader_loads(tmp_path):
    from fakemerge.cli import main
    from fakemerge.data.formats import load_records

    (tmp_path / "in").mkdir()
    clip = write_video(tmp_path / "in" / "clip.mp4", n=30)
    cv2.imwrite(str(tmp_path / "in" / "photo.png"), np.full((40, 50, 3), 90, np.uint8))
    out = tmp_path / "out"
    json_path, statuses = faces.preprocess([clip], out, label="fake", family="FS", backend="none", frames=4,
                                           size=32)
    assert statuses[0]["frames"] == 4 and statuses[0]["face_status"] == ["centre"] * 4
    main(["faces", str(tmp_path / "in" / "photo.png"), "-o", str(out), "--label", "real", "--face", "none",
          "--size", "32"])
    root, records = load_records(json_path)
    assert root == out
    assert sorted((r.family, r.label, r.video) for r in records if r.path.endswith("000.png")) == [
        ("FS", 1, "FS/test/clip"), ("real", 0, "real/test/photo")]
    assert sorted(r.path for r in records if r.family == "FS") == [f"FS/test/clip/{i:03d}.png"
                                                                   for i in (0, 10, 19, 29)]
    assert all((out / r.path).is_file() for r in records)
    # no face anywhere + skip policy: the input fails loudly, per-frame statuses are kept
    faces.register_backend("blind", Blind)
    _, statuses = faces.preprocess([clip], tmp_path / "o2", label="fake", backend="blind", frames=3)
    assert statuses[0]["face_status"] == ["skipped"] * 3 and "no frame with a face" in statuses[0]["error"]
    with pytest.raises(SystemExit) as e:
        main(["faces", str(clip), "-o", str(tmp_path / "o3"), "--label", "fake", "--face", "blind"])
    assert e.value.code == 1
