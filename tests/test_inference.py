"""detect(): scores against a direct forward, options checked first, the model's preprocessing and threshold,
bad inputs in a batch, folders as videos, all faces, uploads, heatmaps, and `fakemerge detect` as a contract."""

import csv
import io
import json
import os

import cv2
import numpy as np
import pytest
import torch
from mediafiles import huge_png, write_video
from transformers import CLIPVisionModel

from fakemerge.cli import main
from fakemerge.data import faces, media
from fakemerge.data.faces import Face
from fakemerge.errors import InputError
from fakemerge.inference import DetectOptions, detect
from fakemerge.models.backbone import tiny_config
from fakemerge.models.detector import Detector, ModelMeta, save_detector
from fakemerge.models.gradcam import gradcam
from fakemerge.models.preprocessing import Preprocessing, batch_inputs

TINY = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64)


@pytest.fixture(scope="module")
def det():
    torch.manual_seed(0)
    d = Detector(CLIPVisionModel(tiny_config(**TINY))).eval()
    with torch.no_grad():
        d.head.weight.mul_(20)
    return d


@pytest.fixture(scope="module")
def model_file(det, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    save_detector(det, path, ModelMeta(kind="merged", method="r2m"))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    (root / "folder" / "sub").mkdir(parents=True)
    for name in ("folder/a.png", "folder/sub/b.jpg", "single.png"):
        cv2.imwrite(str(root / name), rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    (root / "folder" / "notes.txt").write_text("ignored: not an image")
    (root / "broken.png").write_bytes(b"not a png")
    write_video(root / "clip.mp4", n=30)
    return root


def _expected(det, images, prep=None):
    crops = [cv2.resize(np.ascontiguousarray(faces.centre_square(im)), (32, 32),
                        interpolation=cv2.INTER_AREA) for im in images]
    return det.predict_proba(batch_inputs(crops, prep or det.preprocessing)).numpy()


def test_scores_match_a_direct_forward_and_errors_do_not_stop_the_batch(det, inputs):
    given = [inputs / "folder", inputs / "broken.png", inputs / "missing.png", inputs / "clip.mp4",
             inputs / "single.png"]
    results = list(detect(det, given, DetectOptions(frames=4, batch_size=3)))
    assert [os.path.basename(r.input) for r in results] == ["a.png", "b.jpg", "broken.png", "missing.png",
                                                            "clip.mp4", "single.png"]
    broken, missing = results[2], results[3]
    assert "broken.png: not an image or video" in broken.error and broken.score is None
    assert "missing.png: file not found" in missing.error
    single = cv2.cvtColor(cv2.imread(str(inputs / "single.png")), cv2.COLOR_BGR2RGB)
    assert results[5].score == pytest.approx(_expected(det, [single])[0], abs=1e-5)
    assert (results[5].kind, results[5].format, results[5].face_status) == ("image", "png", ["centre"])
    clip = results[4]
    assert clip.kind == "video" and clip.frames == 4 and clip.frame_indices == [0, 10, 19, 29]
    frames = [f.image for f in media.read_frames(inputs / "clip.mp4", 4)]
    np.testing.assert_allclose(clip.frame_scores, _expected(det, frames), atol=1e-5)
    assert clip.score == pytest.approx(np.mean(clip.frame_scores))
    assert all(r.verdict == ("fake" if r.score >= 0.5 else "real") for r in results if not r.error)
    assert all(r.threshold == 0.5 and not r.calibrated for r in results)
    # batching across inputs, and decoding threads, change no score
    for options in (DetectOptions(frames=4, batch_size=64), DetectOptions(frames=4, workers=0),
                    DetectOptions(frames=4, batch_size=1, workers=4)):
        again = list(detect(det, given, options))
        assert [r.score for r in again] == pytest.approx([r.score for r in results], abs=1e-5)


def test_the_models_preprocessing_and_calibrated_threshold_are_used(det, inputs):
    half = Detector(det.backbone, Preprocessing(size=32, mean=(0.5,) * 3, std=(0.5,) * 3), threshold=0.3)
    half.head.load_state_dict(det.head.state_dict())
    single = cv2.cvtColor(cv2.imread(str(inputs / "single.png")), cv2.COLOR_BGR2RGB)
    (r,) = detect(half, [inputs / "single.png"])
    assert r.score == pytest.approx(_expected(det, [single], half.preprocessing)[0], abs=1e-5)
    assert r.score != pytest.approx(_expected(det, [single])[0], rel=1e-2)  # not CLIP's constants
    assert r.threshold == 0.3 and r.calibrated and r.verdict == ("fake" if r.score >= 0.3 else "real")


def test_aggregation_options(det, inputs):
    (mean,) = detect(det, [inputs / "clip.mp4"], DetectOptions(frames=6, agg="mean"))
    (mx,) = detect(det, [inputs / "clip.mp4"], DetectOptions(frames=6, agg="max"))
    (top,) = detect(det, [inputs / "clip.mp4"], DetectOptions(frames=6, agg="topk", k=2))
    s = sorted(mean.frame_scores)
    assert mx.score == pytest.approx(s[-1]) and top.score == pytest.approx((s[-1] + s[-2]) / 2)


@pytest.mark.parametrize("field,value,message", [
    ("frames", 0, "--frames 0: Input should be greater than or equal to 1"), ("batch_size", 0, "--batch-size 0"),
    ("k", 0, "--topk 0"), ("face", "mtcnn", "--face mtcnn: unknown face backend"), ("margin", 0, "--margin 0"),
    ("agg", "median", "--agg median"), ("no_face", "drop", "--no-face drop"), ("max_pixels", 0, "--max-pixels 0"),
    ("workers", -1, "--workers -1"), ("min_face_score", float("nan"), "--min-face-score nan"),
    ("frame", 3, "--frame 3: Extra inputs are not permitted")])
def test_options_are_validated_on_construction(field, value, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        DetectOptions(**{field: value})


def test_bytes_uploads_score_like_files(det, inputs):
    data = (inputs / "single.png").read_bytes()
    (from_file,) = detect(det, [inputs / "single.png"])
    (upload,) = detect(det, [("photo.png", data)])
    assert upload.input == "photo.png" and upload.score == pytest.approx(from_file.score, abs=1e-6)


def test_bad_inputs_each_get_one_line_and_the_batch_goes_on(det, tmp_path, inputs):
    rng = np.random.default_rng(1)
    jpeg = cv2.imencode(".jpg", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))[1].tobytes()
    png, mp4 = (inputs / "single.png").read_bytes(), (inputs / "clip.mp4").read_bytes()
    files = {"zero.jpg": b"", "text.jpg": b"hello world\n", "cut.jpg": jpeg[: len(jpeg) // 2],
             "huge.png": huge_png(20000, 20000), "one.png": cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1]
             .tobytes(), "png.mp4": png, "video.jpg": mp4, "name with space.png": png}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "empty").mkdir()
    (tmp_path / "loop.png").symlink_to("loop.png")
    odd = os.path.join(os.fsencode(tmp_path), b"odd-\xff.png")
    with open(odd, "wb") as f:
        f.write(files["png.mp4"])
    given = [tmp_path, tmp_path / "empty"]  # an empty folder given is an error; one inside a tree is not
    results = {os.path.basename(r.input): r for r in detect(det, given, DetectOptions(frames=3))}
    assert "zero.jpg: empty file" in results["zero.jpg"].error
    assert "text.jpg: not an image or video (the file holds text)" in results["text.jpg"].error
    assert "cut.jpg: truncated JPEG data" in results["cut.jpg"].error
    assert "huge.png: 20000×20000 PNG image is over the pixel limit" in results["huge.png"].error
    assert "one.png: 1×1 pixels is too small to score" in results["one.png"].error
    assert "loop.png: symbolic link loop" in results["loop.png"].error
    assert "empty: folder has no images or videos" in results["empty"].error
    assert results["png.mp4"].kind == "image" and "not what the name (.mp4) says" in results["png.mp4"].notes[0]
    assert results["video.jpg"].kind == "video" and results["video.jpg"].frames == 3
    assert results["name with space.png"].score is not None and results["odd-\\xff.png"].score is not None
    for r in results.values():
        assert (r.error is None) != (r.score is None)
        assert r.error is None or (r.error.count("\n") == 0 and r.input in r.error)


def test_folder_as_video(det, tmp_path):
    frames_dir = tmp_path / "video_000"
    frames_dir.mkdir()
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for _ in range(9)]
    for i, im in enumerate(images):
        cv2.imwrite(str(frames_dir / f"{i:03d}.png"), im[..., ::-1])
    (r,) = detect(det, [tmp_path], DetectOptions(frames=3, folder_as_video=True))
    assert r.kind == "frames" and r.frame_indices == [0, 4, 8]
    np.testing.assert_allclose(r.frame_scores, _expected(det, [images[i] for i in (0, 4, 8)]), atol=1e-5)
    assert len(list(detect(det, [tmp_path], DetectOptions(frames=3)))) == 9  # without it: nine images


class TwoFaces:
    """A face backend that sees two people: a large one on the left, a small one on the right."""

    name = "two"

    def detect(self, image, min_score):
        return [Face((0, 0, 30, 30), 2.0), Face((40, 10, 60, 30), 1.0)]


def test_all_faces_scores_each_face_track(det, tmp_path, inputs):
    faces.register_backend("two", TwoFaces)
    try:
        image = tmp_path / "group.png"
        cv2.imwrite(str(image), np.random.default_rng(3).integers(0, 255, (40, 64, 3), dtype=np.uint8))
        single = list(detect(det, [image], DetectOptions(face="two")))
        both = list(detect(det, [image, inputs / "clip.mp4"], DetectOptions(face="two", all_faces=True, frames=3)))
    finally:
        faces._FACTORIES.pop("two")
        faces.get_backend.cache_clear()
    assert len(single) == 1 and single[0].face is None and single[0].face_boxes == [[0, 0, 30, 30]]
    assert [(os.path.basename(r.input), r.face) for r in both] == [("group.png", 0), ("group.png", 1),
                                                                   ("clip.mp4", 0), ("clip.mp4", 1)]
    assert both[0].score == pytest.approx(single[0].score, abs=1e-6) and both[1].score != both[0].score
    assert both[2].frame_indices == media.even_indices(30, 3) and both[3].face_boxes == [[40, 10, 60, 30]] * 3


def test_small_inputs_are_scored_with_a_note(det, tmp_path):
    cv2.imwrite(str(tmp_path / "tiny.png"), np.full((16, 16, 3), 90, np.uint8))
    (r,) = detect(det, [tmp_path / "tiny.png"], DetectOptions())
    assert r.score is not None and r.notes == []  # 16 px for a 32 px model: enlarged less than 2×, no note
    big = Detector(CLIPVisionModel(tiny_config(**{**TINY, "image_size": 64}))).eval()
    (r,) = detect(big, [tmp_path / "tiny.png"], DetectOptions())
    assert r.score is not None and "16×16 crop upscaled 4× to 64×64" in r.notes[0]


def test_faces_are_aligned_at_face_size_then_resized_by_the_model(det, tmp_path, monkeypatch):
    faces.register_backend("two", TwoFaces)
    seen = []
    real = faces.align
    monkeypatch.setattr(faces, "align", lambda image, face, size, margin: seen.append(size) or
                        real(image, face, size, margin))
    try:
        cv2.imwrite(str(tmp_path / "g.png"), np.random.default_rng(5).integers(0, 255, (40, 64, 3), np.uint8))
        (r,) = detect(det, [tmp_path / "g.png"], DetectOptions(face="two", face_size=128))
    finally:
        faces._FACTORIES.pop("two")
        faces.get_backend.cache_clear()
    assert seen == [128] and r.face_status == ["face"]
    crop = real(cv2.imread(str(tmp_path / "g.png"))[..., ::-1], Face((0, 0, 30, 30), 2.0), 128, 1.3)
    assert r.score == pytest.approx(det.predict_proba(batch_inputs([crop], det.preprocessing)).item(), abs=1e-6)


def test_heatmaps_and_gradcam(det, tmp_path, inputs):
    pixels = torch.randn(2, 3, 32, 32)
    cam = gradcam(det, pixels)
    assert cam.shape == (2, 4, 4) and cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    blind = Detector(CLIPVisionModel(tiny_config(**TINY))).eval()
    torch.nn.init.zeros_(blind.head.weight)  # the score ignores the image: no evidence anywhere
    assert np.all(gradcam(blind, pixels) == 0)
    results = list(detect(det, [inputs / "single.png", inputs / "folder"], DetectOptions(heatmap_dir=tmp_path / "m")))
    assert len({r.heatmap for r in results}) == 3
    assert all(cv2.imread(r.heatmap).shape == (256, 256, 3) for r in results)


# --------------------------------------------------------------------------------------------------- CLI

def test_cli_formats_outputs_and_exit_codes(model_file, inputs, tmp_path, capsys):
    main(["detect", str(model_file), str(inputs / "single.png")])
    out = capsys.readouterr()
    assert "P(fake)" in out.out and "single.png" in out.out and "uncalibrated model" in out.err
    main(["detect", str(model_file), str(inputs / "single.png"), str(inputs / "clip.mp4"), "--format", "json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["kind"] for r in rows] == ["image", "video"] and rows[1]["frames"] == 8
    assert set(rows[0]) >= {"input", "score", "verdict", "threshold", "calibrated", "frames", "notes", "error"}
    with pytest.raises(SystemExit) as e:
        main(["detect", str(model_file), str(inputs / "single.png"), str(inputs / "broken.png"), "--format", "csv",
              "-o", str(tmp_path / "r.csv")])
    assert e.value.code == 1 and capsys.readouterr().out == ""  # the results went to the file
    rows = list(csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text())))
    assert rows[0]["error"] == "" and "broken.png" in rows[1]["error"] and rows[1]["score"] == ""
    main(["detect", str(model_file), str(inputs / "single.png"), "--format", "json", "-o", "-"])
    assert json.loads(capsys.readouterr().out)["frames"] == 1 and not (tmp_path / "-").exists()
    main(["detect", str(model_file), str(inputs / "single.png"), "-o", str(tmp_path / "t.txt")])
    assert "single.png" in (tmp_path / "t.txt").read_text()


@pytest.mark.parametrize("args,message", [
    (["--frames", "0"], "--frames 0"), (["--batch-size", "0"], "--batch-size 0"), (["--topk", "0"], "--topk 0"),
    (["--face", "mtcnn"], "unknown face backend"), (["--margin", "0"], "--margin 0"),
    (["--format", "xml"], "--format xml"), (["--agg", "median"], "--agg median"),
    (["--max-pixels", "-1"], "--max-pixels -1")])
def test_cli_checks_every_option_before_any_work(inputs, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:  # the model does not exist: options are checked before it is read
        main(["detect", str(tmp_path / "no-model.safetensors"), str(inputs / "single.png"), *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "no-model" not in err and err.count("\n") == 1


def test_cli_handles_non_utf8_names(model_file, tmp_path, capsys):
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")
    cv2.imencode(".png", np.zeros((32, 32, 3), np.uint8))[1].tofile(raw)  # latin-1 bytes, not UTF-8
    main(["detect", str(model_file), os.fsdecode(raw), "--format", "json"])
    row = json.loads(capsys.readouterr().out)
    assert row["input"].endswith("caf\\xe9.png") and row["error"] is None



def test_eval_reads_a_folder_with_non_utf8_names_and_broken_files(model_file, tmp_path, capsys):
    """Issue 8: one such file in a folder used to kill `eval` (opencv segfault) — it is just another image."""
    rng = np.random.default_rng(4)
    for folder in ("real/test/v1", "FS/test/v2"):
        (tmp_path / "data" / folder).mkdir(parents=True)
        for name in (b"a.png", b"caf\xe9.png"):
            cv2.imencode(".png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))[1].tofile(
                os.path.join(os.fsencode(tmp_path / "data" / folder), name))
        (tmp_path / "data" / folder / "broken.png").write_bytes(b"not a png")
    main(["eval", str(model_file), "--data", str(tmp_path / "data"), "--split", "test", "-o", str(tmp_path / "o")])
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["n_scored"] == 4 and len(report["skipped"]) == 2
    skipped = (tmp_path / "o" / "predictions.csv.skipped.txt").read_text().splitlines()
    assert len(skipped) == 2 and all("broken.png: not an image or video" in line for line in skipped)
    rows = (tmp_path / "o" / "predictions.csv").read_bytes().splitlines()
    assert sum(b"caf\xe9.png" in row for row in rows) == 2  # the real name, byte for byte


@pytest.mark.skipif("dlib" not in faces.available_backends(), reason="the faces extra is not installed")
def test_detect_end_to_end_on_a_real_photo_and_a_display_rotated_video(model_file, tmp_path, capsys):
    from test_video_faces import grace_hopper

    photo = grace_hopper()
    cv2.imwrite(str(tmp_path / "hopper.jpg"), photo[..., ::-1])
    stored = np.ascontiguousarray(np.rot90(cv2.resize(photo, (256, 300)), 1))  # sideways pixels ...
    write_video(tmp_path / "phone.mp4", frames=[stored] * 8, codec="libx264", rotation=-90)  # ... upright shown
    main(["detect", str(model_file), str(tmp_path / "hopper.jpg"), str(tmp_path / "phone.mp4"), "--face", "dlib",
          "--frames", "4", "--format", "json"])
    image, video = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert image["face_status"] == ["face"] and image["face_scores"][0] > 0.5
    x0, y0, x1, y1 = image["face_boxes"][0]
    assert 150 < (x0 + x1) / 2 < 350 and 150 < (y0 + y1) / 2 < 300  # her face, in the photo's pixels
    assert video["kind"] == "video" and video["face_status"] == ["face"] * 4 and video["error"] is None
