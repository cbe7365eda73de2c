"""Frames -> crops: least-squares five-point alignment, which face is chosen, policies, tracks, real photos."""

import json

import cv2
import numpy as np
import pytest
from mediafiles import write_video  # noqa: F401  (test_inference and test_serving import it from here)

from fakemerge.data import faces, media
from fakemerge.data.faces import CropPolicy, Face, crop_frame
from fakemerge.errors import InputError


def grace_hopper() -> np.ndarray:
    """A real portrait that ships with matplotlib (a core dependency, so every CI install has it)."""
    import matplotlib.cbook

    return media.read_image(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def test_similarity_is_the_least_squares_solution():
    rng = np.random.default_rng(0)
    src, dst = rng.normal(size=(5, 2)) * 40, rng.normal(size=(5, 2)) * 40 + 100
    m = faces.similarity(src, dst)
    # the same model as a linear system in (a, b, tx, ty): u = a x - b y + tx, v = b x + a y + ty
    rows = np.vstack([np.c_[src[:, 0], -src[:, 1], np.ones(5), np.zeros(5)],
                      np.c_[src[:, 1], src[:, 0], np.zeros(5), np.ones(5)]])
    (a, b, tx, ty), *_ = np.linalg.lstsq(rows, np.r_[dst[:, 0], dst[:, 1]], rcond=None)
    np.testing.assert_allclose(m, [[a, -b, tx], [b, a, ty]], atol=1e-9)
    # every point counts: moving the nose alone moves the solution (a 3-point exact fit on the eyes does not)
    moved = src.copy()
    moved[2] += 10
    assert not np.allclose(faces.similarity(moved, dst), m)
    # an exact similarity is recovered exactly
    theta, scale, shift = 0.3, 1.7, np.array([5.0, -2.0])
    rot = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    np.testing.assert_allclose(faces.similarity(src, src @ rot.T + shift), np.c_[rot, shift], atol=1e-9)
    with pytest.raises(ValueError, match="coincide"):
        faces.similarity(np.ones((5, 2)), dst)


def test_template_is_arcface_scaled_and_shrunk_by_the_margin():
    np.testing.assert_allclose(faces.template(112, 1.0), faces.ARCFACE_112)
    # DeepfakeBench at 256 px, scale 1.3: the left eye x = (38.2946 / 112 - 0.5) / 1.3 * 256 + 128
    assert faces.template(256, 1.3)[0, 0] == pytest.approx((38.2946 / 112 - 0.5) / 1.3 * 256 + 128)
    assert faces.DLIB_POINTS == (37, 44, 30, 49, 55)


def _dots(points, size=160):
    image = np.zeros((size, size, 3), np.uint8)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    for (x, y), colour in zip(points, colours, strict=True):
        cv2.circle(image, (int(round(x)), int(round(y))), 2, colour, -1)
    return image


def _centroid(image, colour):
    mask = np.all(np.abs(image.astype(int) - colour) < 90, axis=-1)
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_alignment_maps_landmarks_onto_the_template():
    tpl = faces.template(128, 1.3)
    theta = np.deg2rad(20)
    rot = 0.8 * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    landmarks = (tpl - 64) @ rot.T + [80, 70]
    crop = faces.align(_dots(landmarks), Face((0, 0, 160, 160), 1.0, landmarks), 128, 1.3)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    for colour, expected in zip(colours, tpl, strict=True):
        np.testing.assert_allclose(_centroid(crop, colour), expected, atol=1.0)
    assert crop[0, 0].max() == 0  # outside the frame: black, as DeepfakeBench's warp


def test_box_crop_without_landmarks_is_square_with_margin():
    image = np.zeros((100, 100, 3), np.uint8)
    image[40:60, 40:60] = 255  # a 20 px "face" in the middle
    crop = faces.align(image, Face((40, 40, 60, 60), 1.0), 60, 1.5)
    # the box spans 20 * 1.5 = 30 source px -> 60 output px: the white square is the middle 40 px
    assert crop[30, 30].min() == 255 and crop[5, 5].max() == 0
    assert (crop[:, 30, 0] > 128).sum() == pytest.approx(40, abs=2)


class Scripted:
    """A face backend returning preset candidates (box, score), as a detector would."""

    name = "scripted"
    candidates: list = []
    seen_shapes: list = []

    def detect(self, image, min_score):
        Scripted.seen_shapes.append(image.shape)
        return [Face(tuple(box), score) for box, score in Scripted.candidates]


@pytest.fixture()
def scripted():
    faces.register_backend("scripted", Scripted)
    Scripted.seen_shapes = []
    yield Scripted
    faces._FACTORIES.pop("scripted")
    faces.get_backend.cache_clear()


def test_the_most_confident_faces_decide_not_the_largest_box(scripted):
    frame = np.zeros((200, 300, 3), np.uint8)
    badge, face = ((150, 100, 250, 200), 0.05), ((20, 20, 110, 110), 1.2)  # the badge is larger
    scripted.candidates = [badge, face]
    (crop,) = crop_frame(frame, CropPolicy("scripted", 32))
    assert crop.status == "face" and crop.face.box == face[0] and crop.face.score == 1.2
    crops = crop_frame(frame, CropPolicy("scripted", 32, all_faces=True))
    assert [c.face.score for c in crops] == [1.2]  # all confident faces: the badge is not one
    low = CropPolicy("scripted", 32, min_score=0.0)
    assert crop_frame(frame, low)[0].face.score == 0.05  # both confident now: the largest wins
    assert [c.face.score for c in crop_frame(frame, CropPolicy("scripted", 32, min_score=0.0, all_faces=True))] \
        == [0.05, 1.2]
    scripted.candidates = [badge]
    (none,) = crop_frame(frame, CropPolicy("scripted", 32), "f.png")
    assert none.status == "whole" and "f.png: no face with score >= 0.2" in none.note


def test_faces_are_found_on_a_bounded_copy_and_mapped_back(scripted):
    frame = np.zeros((2160, 3840, 3), np.uint8)  # 4K: detection runs on a 1080p copy
    scripted.candidates = [((100, 100, 300, 300), 1.0)]
    (crop,) = crop_frame(frame, CropPolicy("scripted", 32))
    h, w = scripted.seen_shapes[0][:2]
    assert h * w <= faces.DETECT_PIXELS and (w, h) == (1920, 1080)
    assert crop.face.box == pytest.approx((200, 200, 600, 600))  # in the 4K frame's pixels


def test_no_face_policies_and_tiny_frames(scripted):
    scripted.candidates = []
    blank = np.full((64, 80, 3), 127, np.uint8)
    blank[:, 8:72] = 200  # the centre square, kept at the frame's resolution (the model's preprocessing resizes)
    (whole,) = crop_frame(blank, CropPolicy("scripted", 32, no_face="whole"), "x.png")
    assert whole.status == "whole" and whole.image.shape == (64, 64, 3) and whole.image.min() == 200
    assert whole.note == "x.png: no face with score >= 0.2 (scripted), whole frame used"
    (skipped,) = crop_frame(blank, CropPolicy("scripted", 32, no_face="skip"))
    assert skipped.status == "skipped" and skipped.image is None and "frame skipped" in skipped.note
    with pytest.raises(InputError, match="no face"):
        crop_frame(blank, CropPolicy("scripted", 32, no_face="error"))
    (centre,) = crop_frame(blank, CropPolicy("none", 32))
    assert centre.status == "centre" and centre.image.shape == (64, 64, 3) and centre.note == ""
    assert faces.upscale_note("s.png", np.zeros((16, 16, 3)), 224) == (
        "s.png: 16×16 crop upscaled 14× to 224×224; scores of images this small are unreliable")
    assert faces.upscale_note("s.png", np.zeros((112, 112, 3)), 224) is None
    with pytest.raises(InputError, match=r"t\.png: 1×1 pixels is too small to score"):
        crop_frame(np.zeros((1, 1, 3), np.uint8), CropPolicy("none", 224), "t.png")


@pytest.mark.parametrize("kwargs,message", [
    (dict(size=0), "--size 0: crop size must be an integer from 16"), (dict(size=-5), "--size -5"),
    (dict(size=10), "--size 10"), (dict(margin=0), "--margin 0: must be from 1"), (dict(margin=5.0), "--margin 5"),
    (dict(margin=float("nan")), "--margin nan"), (dict(no_face="drop"), "--no-face drop: choose one of"),
    (dict(min_score=float("inf")), "--min-face-score inf"), (dict(backend="mtcnn"), "unknown face backend")])
def test_crop_policy_is_validated(kwargs, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        CropPolicy(**{"backend": "none", **kwargs})


def test_link_tracks_follows_overlapping_boxes():
    a1, b1 = (0, 0, 10, 10), (50, 50, 60, 60)
    a2, b2, c2 = (1, 1, 11, 11), (51, 50, 61, 60), (100, 0, 110, 10)
    assert faces.link_tracks([[a1, b1], [b2, a2, c2], [], [a2]]) == [[0, 1], [1, 0, 2], [], [0]]


# ---------------------------------------------------------------------------------------- real faces

needs_dlib = pytest.mark.skipif("dlib" not in faces.available_backends(),
                                reason="the faces extra (dlib-bin, face-recognition-models) is not installed")


@needs_dlib

def test_dlib_aligns_a_real_photo_onto_the_template():
    image = grace_hopper()
    (face,) = faces.get_backend("dlib").detect(image, 0.2)
    assert face.score > 0.5 and face.landmarks.shape == (5, 2)
    left, right, nose, mouth_l, mouth_r = face.landmarks
    assert left[0] < nose[0] < right[0] and mouth_l[0] < mouth_r[0] and nose[1] < min(mouth_l[1], mouth_r[1])
    for size, margin in ((256, 1.3), (224, 1.3)):
        (crop,) = crop_frame(image, CropPolicy("dlib", size, margin))
        (again,) = faces.get_backend("dlib").detect(crop.image, 0.0)
        tpl = faces.template(size, margin)
        # least squares puts the landmarks' centroid exactly on the template's and matches its spread
        np.testing.assert_allclose(again.landmarks.mean(0), tpl.mean(0), atol=0.012 * size)
        spread = np.sqrt(((again.landmarks - again.landmarks.mean(0)) ** 2).sum(1).mean())
        assert spread / np.sqrt(((tpl - tpl.mean(0)) ** 2).sum(1).mean()) == pytest.approx(1.0, abs=0.04)
        assert np.linalg.norm(again.landmarks - tpl, axis=1).max() < 0.06 * size


@needs_dlib
def test_a_display_rotated_video_is_upright_before_faces_are_found(tmp_path):
    """Phone style: pixels stored sideways, a 90° display matrix; the face is found in every frame."""
    image = cv2.resize(grace_hopper(), (256, 300))
    stored = np.ascontiguousarray(np.rot90(image, 1))  # what the sensor wrote
    assert faces.get_backend("dlib").detect(stored, 0.2) == []  # sideways, no face: the test means something
    path = write_video(tmp_path / "phone.mp4", frames=[stored] * 6, codec="libx264", rotation=-90)
    policy = CropPolicy("dlib", 128)
    crops = [crop_frame(f.image, policy)[0] for f in media.read_frames(path, 3)]
    assert [c.status for c in crops] == ["face"] * 3


@needs_dlib
def test_dlib_is_loaded_once_and_ignores_blank_frames():
    detector = faces.get_backend("dlib")
    assert faces.get_backend("dlib") is detector
    assert detector.detect(np.full((96, 96, 3), 127, np.uint8), 0.2) == []
    json.dumps(faces.available_backends())
