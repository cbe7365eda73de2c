"""Web service: /health, /detect on an image and a video (with heatmap), clear errors, the HTML page."""

import base64

import cv2
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from test_video_faces import write_video
from transformers import CLIPVisionModel

from fakemerge.inference import detect
from fakemerge.models.backbone import tiny_config
from fakemerge.models.detector import Detector, ModelMeta, save_detector
from fakemerge.serving.app import create_app

TINY = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    det = Detector(CLIPVisionModel(tiny_config(**TINY))).eval()
    model = tmp / "merged.safetensors"
    save_detector(det, model, ModelMeta(kind="merged", method="r2m", families=["FS", "FR"]))
    image = tmp / "face.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    clip = write_video(tmp / "clip.mp4", n=30)
    return TestClient(create_app(model, frames=4)), model, image, clip


def test_health_and_page(setup):
    client = setup[0]
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"]["kind"] == "merged"
    assert health["model"]["families"] == ["FS", "FR"] and health["image_size"] == 32
    page = client.get("/")
    assert page.status_code == 200 and "<form" in page.text and "detect" in page.text


def test_detect_image_and_video_agree_with_the_library(setup):
    client, model, image, clip = setup
    r = client.post("/detect", files={"file": ("face.png", image.read_bytes(), "image/png")},
                    params={"heatmap": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    (expected,) = detect(model, [image])
    assert body["input"] == "face.png" and body["kind"] == "image" and body["frames"] == 1
    assert body["score"] == pytest.approx(expected.score, abs=1e-6)
    assert body["verdict"] == expected.verdict
    png = base64.b64decode(body["heatmap_png_base64"])
    assert png[:4] == b"\x89PNG"
    r = client.post("/detect", files={"file": ("clip.mp4", clip.read_bytes(), "video/mp4")},
                    params={"agg": "max"})
    body = r.json()
    assert r.status_code == 200 and body["kind"] == "video" and body["frames"] == 4
    assert body["score"] == pytest.approx(max(body["frame_scores"]))
    assert body["heatmap_png_base64"] is None


def test_bad_uploads_get_clear_errors(setup):
    client = setup[0]
    r = client.post("/detect", files={"file": ("notes.txt", b"hello", "text/plain")})
    assert r.status_code == 415 and "notes.txt" in r.json()["detail"]
    r = client.post("/detect", files={"file": ("broken.png", b"not a png", "image/png")})
    assert r.status_code == 422 and "broken.png" in r.json()["detail"] and "/tmp" not in r.json()["detail"]
    r = client.post("/detect", files={"file": ("x.png", b"\x89PNG", "image/png")}, params={"agg": "median"})
    assert r.status_code == 400 and "median" in r.json()["detail"]
