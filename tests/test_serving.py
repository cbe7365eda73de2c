"""Service API in-process (TestClient): every route, the error shape and status of every kind of bad upload,
the model card, agreement with the library's detect(), and no temp file left behind."""

import base64
import json
import re

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from serving_fixtures import PHOTO, huge_png, photo_video, save_model

from fakemerge.inference import DetectOptions, detect
from fakemerge.models.backbone import tiny_config
from fakemerge.models.detector import ModelMeta
from fakemerge.serving import analysis, build_settings, create_app, uploads
from fakemerge.serving.card import caution, public


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    model = save_model(tmp / "merged.safetensors")
    video = photo_video(tmp / "pan.mp4")
    return tmp, model, video


@pytest.fixture()
def service(files, tmp_path):
    """A client on a fresh app whose uploads spool into `spool` (checked empty after each test)."""
    _, model, _ = files
    spool = tmp_path / "spool"
    spool.mkdir()
    with TestClient(create_app(model, build_settings(tmp_dir=spool, max_upload_mb=2, frames=4))) as client:
        yield client, spool
    assert list(spool.iterdir()) == [], "a request left files in the spool folder"


def post(client, name, data, params=None, content_type="application/octet-stream"):
    return client.post("/v1/detect", params=params or {}, files={"file": (name, data, content_type)})


def error(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    return body["error"]["message"]


def test_health_ready_page_assets_and_local_docs(service):
    client, _ = service
    assert client.get("/health").json()["status"] == "ok"
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["ready"] and ready.json()["capacity"] == 9
    page = client.get("/")
    assert page.status_code == 200 and 'id="drop"' in page.text and 'type="file"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for asset in ("app.js", "style.css"):
        assert client.get(f"/assets/{asset}").status_code == 200
    docs = client.get("/docs").text
    urls = re.findall(r"""(?:src|href)=["']?([^"' >]+)""", docs) + re.findall(r"url: ?'([^']+)'", docs)
    assert urls and all(u.startswith("/") for u in urls), urls  # no CDN: every asset from this server
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/detect"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["file"]["format"] == "binary"


def test_not_ready_before_the_model_is_warm_and_500_says_nothing_inside(files, monkeypatch):
    app = create_app(files[1])
    cold = TestClient(app)  # no `with`: startup (the warm-up) has not run
    assert error(cold.get("/ready"), 503, "not_ready") == "not ready: warming up the model"
    assert cold.get("/health").status_code == 200

    def crash(*args):
        raise RuntimeError("/srv/secret/path exploded")

    monkeypatch.setattr(analysis, "analyse", crash)
    with TestClient(app, raise_server_exceptions=False) as client:
        message = error(post(client, "a.jpg", PHOTO.read_bytes()), 500, "internal")
    assert "secret" not in message and "RuntimeError" not in message


def test_page_never_inserts_server_text_as_html():
    from fakemerge.serving.app import STATIC

    script = (STATIC / "app.js").read_text() + (STATIC / "index.html").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "onerror=",
                 "onclick=", "<script>"):
        assert sink not in script, sink


def test_docs_can_be_switched_off(files):
    with TestClient(create_app(files[1], build_settings(docs=False))) as client:
        assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
        assert client.get("/openapi.json").status_code == 200


def test_image_result_is_the_library_result(service):
    client, _ = service
    r = post(client, "grace hopper.jpg", PHOTO.read_bytes(), {"heatmap": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    (expected,) = detect(client.app.state.detector, [PHOTO])
    assert set(body) == set(expected.to_dict()) | {"heatmap_png_base64"}
    assert body["input"] == "grace hopper.jpg" and body["kind"] == "image" and body["frames"] == 1
    assert body["score"] == pytest.approx(expected.score, abs=1e-6) and body["verdict"] == expected.verdict
    png = np.frombuffer(base64.b64decode(body["heatmap_png_base64"]), np.uint8)
    heat = cv2.imdecode(png, cv2.IMREAD_COLOR)
    assert heat is not None and min(heat.shape[:2]) >= 256
    assert body["heatmap"] is None and "server-timing" in r.headers


def test_video_result_frames_aggregation_and_names_from_bytes(service, files):
    client, _ = service
    data = files[2].read_bytes()
    r = post(client, "pan.mp4", data, {"frames": 5, "agg": "max"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["kind"] == "video" and body["frames"] == 5 and body["heatmap_png_base64"] is None
    assert body["score"] == pytest.approx(max(body["frame_scores"]))
    assert body["frame_indices"] == [0, 3, 6, 8, 11]
    (expected,) = detect(client.app.state.detector, [files[2]], DetectOptions(frames=5, agg="max"))
    assert body["frame_scores"] == pytest.approx(expected.frame_scores, abs=1e-6)
    # the type comes from the bytes: a video named .png is a video, a JPEG named .mp4 an image
    assert post(client, "pan.png", data, {"frames": 2}).json()["kind"] == "video"
    assert post(client, "photo.mp4", PHOTO.read_bytes()).json()["kind"] == "image"


def test_text_named_png_is_415_from_the_first_bytes(service, monkeypatch):
    client, _ = service
    written = []
    real_write = uploads.os.write
    monkeypatch.setattr(uploads.os, "write", lambda fd, b: written.append(len(b)) or real_write(fd, b))
    text = b"just some notes, certainly not an image\n" * 20_000  # 800 kB
    message = error(post(client, "notes.png", text), 415, "unsupported_media_type")
    assert message.startswith("notes.png: ") and "bytes" in message
    assert sum(written) == 0  # refused on its first bytes: nothing of it reached the disk


def test_huge_dimensions_are_refused_without_decoding(service, monkeypatch):
    client, _ = service
    monkeypatch.setattr(analysis, "detect", lambda *a, **k: pytest.fail("the image was handed to the decoder"))
    data = huge_png()
    assert len(data) < 1000
    message = error(post(client, "bomb.png", data), 413, "too_many_pixels")
    assert "60000×60000" in message and "40,000,000" in message


def test_the_media_layers_pixel_limit_applies(files, tmp_path):
    """Over the limit a JPEG is decoded reduced (with a note), as `detect` does; other images are refused."""
    png = cv2.imencode(".png", cv2.imread(str(PHOTO)))[1].tobytes()
    with TestClient(create_app(files[1], build_settings(max_pixels=100_000))) as client:
        r = post(client, "hopper.jpg", PHOTO.read_bytes())
        assert r.status_code == 200, r.text
        assert any(n.startswith("hopper.jpg: ") and "1/2 scale" in n for n in r.json()["notes"]), r.json()["notes"]
        assert "512×600 PNG image is over" in error(post(client, "hopper.png", png), 413, "too_many_pixels")
    with TestClient(create_app(files[1], build_settings(max_pixels=4_000))) as client:  # 1/8 scale: 64×75 > 4000
        assert "512×600 JPEG image is over" in error(post(client, "hopper.jpg", PHOTO.read_bytes()), 413,
                                                     "too_many_pixels")


def test_corrupt_and_truncated_media_are_422(service, files):
    client, _ = service
    message = error(post(client, "broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 200), 422, "unprocessable")
    assert message.startswith("broken.png") and "/tmp" not in message and "spool" not in message
    data = files[2].read_bytes()
    message = error(post(client, "cut.mp4", data[:len(data) // 3]), 422, "unprocessable")
    assert message.startswith("cut.mp4") and "upload.mp4" not in message


def test_bad_parameters_and_forms_are_400(service):
    client, _ = service
    photo = PHOTO.read_bytes()
    assert "agg" in error(post(client, "a.jpg", photo, {"agg": "median"}), 400, "invalid_parameter")
    assert "frames" in error(post(client, "a.jpg", photo, {"frames": 0}), 400, "invalid_parameter")
    assert "frames" in error(post(client, "a.jpg", photo, {"frames": 65}), 400, "invalid_parameter")
    assert "heatmap" in error(post(client, "a.jpg", photo, {"heatmap": "maybe"}), 400, "invalid_parameter")
    assert "empty upload" in error(post(client, "empty.jpg", b""), 400, "bad_request")
    r = client.post("/v1/detect", files={"image": ("a.jpg", photo, "image/jpeg")})
    assert "unknown form field 'image'" in error(r, 400, "bad_request")
    r = client.post("/v1/detect", files=[("file", ("a.jpg", photo, "image/jpeg")), ("file", ("b.jpg", photo))])
    assert "one file per request" in error(r, 400, "bad_request")
    r = client.post("/v1/detect", data={"file": "not a file"})
    assert error(r, 415, "unsupported_media_type")  # urlencoded, not multipart
    r = client.post("/v1/detect", content=b"--x\r\n", headers={"content-type": "multipart/form-data; boundary=x"})
    assert error(r, 400, "bad_request")
    r = client.post("/v1/detect", content=photo, headers={"content-type": "image/jpeg"})
    assert "multipart/form-data" in error(r, 415, "unsupported_media_type")


def test_oversize_uploads_are_413_and_never_exceed_the_limit_on_disk(service, monkeypatch):
    client, _ = service
    written = []
    real_write = uploads.os.write
    monkeypatch.setattr(uploads.os, "write", lambda fd, b: written.append(len(b)) or real_write(fd, b))
    big = PHOTO.read_bytes() + b"\x00" * (3 << 20)  # a JPEG head, 3 MiB over a 2 MiB limit
    assert "2 MiB" in error(post(client, "big.jpg", big), 413, "too_large")  # declared length: nothing read
    assert written == []

    def chunked():  # no Content-Length: the limit is enforced while streaming
        boundary = b"--b0undary"
        yield boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n\r\n'
        for i in range(0, len(big), 256 << 10):
            yield big[i:i + (256 << 10)]
        yield b"\r\n" + boundary + b"--\r\n"

    r = client.post("/v1/detect", content=chunked(), headers={"content-type": "multipart/form-data; boundary=b0undary"})
    error(r, 413, "too_large")
    assert sum(written) <= 2 << 20  # (TestClient hands the body over in one piece; see test_serving_live)


def test_file_names_are_shown_as_given_but_never_used_on_disk(service):
    client, spool = service
    photo = PHOTO.read_bytes()
    assert post(client, "../../../../etc/cron.d/x.jpg", photo).json()["input"] == "x.jpg"
    assert post(client, "C:\\Users\\me\\face.jpg", photo).json()["input"] == "face.jpg"
    raw = (b'--B\r\nContent-Disposition: form-data; name="file"; filename="a\x1b[31mb\x07c.jpg"\r\n\r\n'
           + photo + b"\r\n--B--\r\n")
    r = client.post("/v1/detect", content=raw, headers={"content-type": "multipart/form-data; boundary=B"})
    assert r.json()["input"] == "a[31mbc.jpg"  # terminal escapes and bells stripped
    assert uploads.display_name("  ") == "upload" and len(uploads.display_name("x" * 999)) == 200
    assert uploads.display_name("é😀.jpg".encode()) == "é😀.jpg"
    html = "<img src=x onerror=alert(1)>.jpg"
    assert post(client, html, photo).json()["input"] == html  # JSON carries it as text; the page shows it as text
    assert error(post(client, html + ".png", b"<html>"), 415, "unsupported_media_type").startswith(html)


def test_unknown_routes_and_methods_use_the_error_shape(service):
    client, _ = service
    assert error(client.get("/v1/nothing"), 404, "not_found")
    assert error(client.get("/v1/detect"), 405, "method_not_allowed")


def test_model_card_reads_the_file_metadata(files, tmp_path):
    meta = ModelMeta(kind="merged", method="ties", families=["FS", "EFS"], base_id="/srv/models/clip-b16",
                     recipe={"method": "ties", "base": "/srv/models/clip-b16", "models": [
                         {"model": "/home/me/fs.safetensors", "families": ["FS"]}], "parameters": {"k": 0.2}})
    model = save_model(tmp_path / "ties.safetensors", meta=meta, threshold=0.7)
    with TestClient(create_app(model, build_settings(workers=2, queue=3, frames=5))) as client:
        card = client.get("/v1/model").json()
    assert card["name"] == "ties.safetensors" and card["kind"] == "merged" and card["method"] == "ties"
    assert card["families"] == ["FS", "EFS"] and card["base"] == "clip-b16"  # server paths cut to names
    assert card["recipe"]["models"][0]["model"] == "fs.safetensors" and card["recipe"]["parameters"] == {"k": 0.2}
    assert card["threshold"] == 0.7 and card["calibrated"] and card["image_size"] == 32
    assert card["preprocessing"]["size"] == 32 and card["caution"] is None
    assert card["defaults"]["frames"] == 5 and card["limits"]["workers"] == 2 and card["limits"]["queue"] == 3
    with TestClient(create_app(files[1])) as client:
        card = client.get("/v1/model").json()
    assert card["threshold"] is None and not card["calibrated"] and "uncalibrated" in card["threshold_note"]
    assert json.dumps(card)  # plain JSON


def test_caution_for_models_of_the_embedded_benchmark():
    lab = {k: getattr(tiny_config(), k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                  "num_attention_heads", "image_size", "patch_size")}
    trained = ModelMeta(recipe={"data": "/work/runs/demo/data/ForgeryLab.json"}, backbone_config={"image_size": 224})
    assert "ForgeryLab" in caution(trained) and "/work" not in caution(trained)
    merged = ModelMeta(kind="merged", backbone_config=lab, recipe={"method": "r2m"})  # merges record no data
    assert "tiny ViT" in caution(merged)
    real = ModelMeta(recipe={"data": "/data/DF40/FS.json"}, backbone_config={**lab, "image_size": 224})
    assert caution(real) is None
    assert public({"a": ["/x/y.json", "openai/clip-vit-base-patch16", "C:\\m\\z.pt"]}) == {
        "a": ["y.json", "openai/clip-vit-base-patch16", "z.pt"]}
