"""detect(): images, folders, videos, bad inputs, batching across inputs, heatmaps, `fakemerge detect`."""

import json

import cv2
import numpy as np
import pytest
import torch
from test_video_faces import write_video
from transformers import CLIPVisionModel

from fakemerge.cli import main
from fakemerge.data.media import find_media, read_frames
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


def test_expand_inputs_recurses_into_folders(inputs):
    notes = []
    items = find_media([inputs / "folder", inputs / "single.png"], notes=notes)
    assert [item.source.relative_to(inputs).as_posix() for item in items] == ["folder/a.png", "folder/sub/b.jpg",
                                                                             "single.png"]
    assert "skipped 1 file(s)" in notes[0] and "notes.txt" in notes[0]


def test_scores_match_direct_forward_and_errors_do_not_stop_the_batch(det, inputs):
    given = [inputs / "folder", inputs / "broken.png", inputs / "missing.png", inputs / "clip.mp4",
             inputs / "single.png"]
    results = list(detect(det, given, DetectOptions(frames=4, batch_size=3)))
    assert [r.input.split("/")[-1] for r in results] == ["a.png", "b.jpg", "broken.png", "missing.png",
                                                        "clip.mp4", "single.png"]
    broken, missing = results[2], results[3]
    assert "broken.png" in broken.error and "not an image or video" in broken.error and broken.score is None
    assert "missing.png" in missing.error and "not found" in missing.error
    image = cv2.cvtColor(cv2.imread(str(inputs / "single.png")), cv2.COLOR_BGR2RGB)
    side = min(image.shape[:2])
    y0, x0 = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    crop = cv2.resize(image[y0:y0 + side, x0:x0 + side], (32, 32), interpolation=cv2.INTER_AREA)
    expected = det.predict_proba(batch_inputs([crop], Preprocessing(size=32))).item()
    assert results[5].score == pytest.approx(expected, abs=1e-5)
    clip = results[4]
    assert clip.kind == "video" and clip.frames == 4 and clip.frame_indices == [0, 10, 19, 29]
    frames = [cv2.resize(f, (32, 32), interpolation=cv2.INTER_AREA)
              for f in (f.image for f in read_frames(inputs / "clip.mp4", 4))]
    expected = det.predict_proba(batch_inputs(frames, Preprocessing(size=32))).numpy()
    np.testing.assert_allclose(clip.frame_scores, expected, atol=1e-5)
    assert clip.score == pytest.approx(np.mean(clip.frame_scores))
    assert all(r.verdict == ("fake" if r.score >= 0.5 else "real") for r in results if not r.error)
    # batching across inputs must not change any score
    again = list(detect(det, given, DetectOptions(frames=4, batch_size=64)))
    assert [r.score for r in again] == pytest.approx([r.score for r in results], abs=1e-5)


def test_video_aggregation_options(det, inputs):
    (mean,) = detect(det, [inputs / "clip.mp4"], DetectOptions(frames=6, agg="mean"))
    (mx,) = detect(det, [inputs / "clip.mp4"], DetectOptions(frames=6, agg="max"))
    (top,) = detect(det, [inputs / "clip.mp4"], DetectOptions(frames=6, agg="topk", k=2))
    s = sorted(mean.frame_scores)
    assert mx.score == pytest.approx(s[-1]) and top.score == pytest.approx((s[-1] + s[-2]) / 2)


def test_gradcam_shape_range_and_zero_head(det, tmp_path, inputs):
    pixels = torch.randn(2, 3, 32, 32)
    cam = gradcam(det, pixels)
    assert cam.shape == (2, 4, 4) and cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    blind = Detector(CLIPVisionModel(tiny_config(**TINY))).eval()
    torch.nn.init.zeros_(blind.head.weight)  # the score ignores the image: no evidence anywhere
    assert np.all(gradcam(blind, pixels) == 0)
    (r,) = detect(det, [inputs / "single.png"], DetectOptions(heatmap_dir=tmp_path / "maps"))
    png = cv2.imread(r.heatmap)
    assert png.shape == (256, 256, 3)


def test_cli_detect_table_json_and_exit_code(det, inputs, tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    save_detector(det, model, ModelMeta(kind="merged", method="r2m"))
    main(["detect", str(model), str(inputs / "single.png")])
    out = capsys.readouterr().out
    assert "P(fake)" in out and ("real" in out or "fake" in out)
    main(["detect", str(model), str(inputs / "single.png"), "--format", "json", "-o", str(tmp_path / "ok.json")])
    assert json.loads((tmp_path / "ok.json").read_text())["frames"] == 1
    with pytest.raises(SystemExit) as e:
        main(["detect", str(model), str(inputs / "single.png"), str(inputs / "broken.png"),
              "--format", "json", "-o", str(tmp_path / "r.json")])
    assert e.value.code == 1
    rows = [json.loads(line) for line in (tmp_path / "r.json").read_text().splitlines()]
    assert rows[0]["error"] is None and "broken.png" in rows[1]["error"]
    with pytest.raises(SystemExit) as e:
        main(["detect", str(model), str(inputs / "single.png"), "--agg", "median"])
    assert e.value.code == 2
