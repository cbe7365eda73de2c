"""The page in a real browser: Debian's headless Chromium driven by Playwright (pip), the server on 127.0.0.1.

Uploads a real photo (matplotlib's sample of Grace Hopper) and a video made from it, checks the rendered
verdict against the API, the heatmap's size and the frame plot; uploads files named with HTML and checks
that no script runs; checks the error, busy, unreachable and timeout states, the model card and caution,
that /docs renders offline, and that nothing is fetched from anywhere but this server. Skipped, with the
reason, when Playwright or the browser is not installed (`.ci/run` installs both).
"""

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest
from serving_fixtures import PHOTO, live_server, photo_video, save_model

from fakemerge.models.detector import ModelMeta
from fakemerge.serving import build_settings, create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LAB = dict(image_size=64, patch_size=8, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
           intermediate_size=512)  # the shape of ForgeryLab's tiny base: the page must show the caution


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        pytest.skip(f"browser test skipped: Playwright is not installed ({e})")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"browser test skipped: no Chromium at {CHROMIUM} (apt-get install chromium)")
    return sync_playwright


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    meta = ModelMeta(kind="merged", method="r2m", families=["FS", "FR", "EFS"], base_id="/runs/cache/base-small-s0")
    model = save_model(tmp / "lab-r2m.safetensors", meta=meta, **LAB)
    video = photo_video(tmp / "pan.mp4", n=24)
    with live_server(create_app(model, build_settings(frames=8))) as (url, _):
        yield url, video, tmp


@pytest.fixture(scope="module")
def browser(site, tmp_path_factory):
    sync_playwright = _playwright()
    with sync_playwright() as p:
        def launch(**options):
            try:
                return p.chromium.launch_persistent_context(
                    str(tmp_path_factory.mktemp("profile")), executable_path=CHROMIUM, headless=True, args=FLAGS,
                    viewport={"width": 1100, "height": 1000}, **options)
            except Exception as e:  # e.g. shared libraries missing: say why, do not fail the suite
                pytest.skip(f"browser test skipped: Chromium did not start ({str(e).splitlines()[0]})")
        # bypass_csp: the page's own code must be safe; its CSP is a second line, tested on its own below
        context = launch(bypass_csp=True)
        yield context, launch
        context.close()


@pytest.fixture()
def page(browser, site):
    """A page that records every request leaving 127.0.0.1, every dialog and every console error."""
    context, _ = browser
    page = context.new_page()
    page.outside, page.dialogs, page.errors = [], [], []
    page.on("request", lambda r: r.url.startswith(("http://127.0.0.1", "data:")) or page.outside.append(r.url))
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.goto(site[0])
    page.wait_for_selector("#card-details:not([hidden])")
    yield page
    assert page.outside == [], "the page fetched something from outside this server"
    page.close()


def upload(page, path=None, name=None, data=None, mime="application/octet-stream"):
    files = str(path) if path else [{"name": name, "mimeType": mime, "buffer": data}]
    page.set_input_files("#file", files)


def wait_result(page, name):
    page.locator("#input-name").filter(has_text=name).wait_for(timeout=30_000)
    page.wait_for_selector("#result:not([hidden])")


def test_photo_verdict_score_and_heatmap_as_the_api_says(page, site):
    url = site[0]
    model = page.locator("#model").text_content()
    assert "lab-r2m.safetensors" in model and "FS + FR + EFS" in model and "uncalibrated" in model
    assert "ForgeryLab" in page.locator("#caution").text_content() and page.locator("#caution").is_visible()
    upload(page, PHOTO)
    wait_result(page, "grace_hopper.jpg")
    api = httpx.post(f"{url}/v1/detect", params={"heatmap": "true", "frames": 8, "agg": "mean"},
                     files={"file": ("grace_hopper.jpg", PHOTO.read_bytes())}, timeout=30).json()
    verdict = page.locator("#verdict").text_content()
    assert verdict == f"{api['verdict'].upper()} — P(fake) = {100 * api['score']:.1f} %"
    summary = page.locator("#summary").text_content()
    assert "image, 1 frame(s) scored" in summary and summary.endswith("verdict threshold 0.50 (uncalibrated)")
    heat = page.locator("#heatmap-img")
    heat.wait_for()
    size = heat.evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight, img.clientWidth]")
    assert size[0] and min(size[1:]) >= 256, size  # a crop worth looking at, not a 64 px thumbnail
    assert not page.locator("#plot-figure").is_visible()  # one frame: no plot
    assert page.errors == []


def test_a_dropped_file_is_analysed(page):
    import base64

    data = base64.b64encode(PHOTO.read_bytes()).decode()
    transfer = page.evaluate_handle("""b64 => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const t = new DataTransfer();
        t.items.add(new File([bytes], "dropped.jpg", {type: "image/jpeg"}));
        return t;
    }""", data)
    page.dispatch_event("#drop", "dragover", {"dataTransfer": transfer})
    assert "over" in page.locator("#drop").get_attribute("class")
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    wait_result(page, "dropped.jpg")
    assert page.locator("#verdict").text_content().startswith(("FAKE", "REAL"))


def test_video_shows_a_per_frame_plot(page, site):
    _, video, tmp = site
    upload(page, video)
    wait_result(page, "pan.mp4")
    assert "video, 8 frame(s) scored" in page.locator("#summary").text_content()
    assert page.locator("#plot circle").count() == 8 and page.locator("#plot circle.best").count() == 1
    points = page.locator("#plot polyline").get_attribute("points").split()
    assert len(points) == 8 and len({p.split(",")[0] for p in points}) == 8
    assert page.locator("#plot .threshold").count() == 1 and page.locator("#heatmap-img").is_visible()
    shot = tmp / "video-upload.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_file_names_with_html_run_no_script(page):
    photo = PHOTO.read_bytes()
    name = "<img src=x onerror=alert(document.domain)><svg onload=alert(2)>.jpg"  # (no '/': a name never has one)
    upload(page, name=name, data=photo, mime="image/jpeg")
    page.wait_for_selector("#result:not([hidden])", timeout=30_000)
    time.sleep(0.3)  # an injected handler would fire as soon as the element is parsed
    assert page.dialogs == [] and page.locator("#result img[src=x], #result svg[onload]").count() == 0
    assert page.locator("#input-name").text_content() == name  # shown, literally, as text
    bad = "<img src=y onerror=alert(3)>.png"
    upload(page, name=bad, data=b"<svg onload=alert(4)>", mime="image/png")
    page.locator("#status.error").wait_for()
    assert page.locator("#status").text_content().startswith(f"Error (unsupported_media_type): {bad}")
    time.sleep(0.3)  # an injected handler would fire as soon as the element is parsed
    assert page.dialogs == [] and page.locator("img[src=x], img[src=y], #result script").count() == 0


def test_error_busy_unreachable_and_timeout_states(page, site):
    upload(page, name="notes.jpg", data=b"hello", mime="image/jpeg")
    page.locator("#status.error").filter(has_text="notes.jpg: not an image").wait_for()

    busy = json.dumps({"error": {"code": "busy", "message": "all 9 request slots are taken; retry later"}})
    page.route("**/v1/detect*", lambda r: r.fulfill(status=429, body=busy, headers={"Retry-After": "7"},
                                                    content_type="application/json"))
    upload(page, PHOTO)
    page.locator("#status.error").filter(has_text="busy").filter(has_text="retry in 7 s").wait_for()

    page.unroute("**/v1/detect*")
    page.route("**/v1/detect*", lambda r: r.abort("connectionrefused"))
    upload(page, PHOTO)
    page.locator("#status.error").filter(has_text="cannot reach the server").wait_for()

    page.evaluate("() => { card.limits.max_upload_bytes = 1000; }")  # refused before sending, with sizes
    upload(page, PHOTO)
    page.locator("#status.error").filter(has_text="too_large").filter(has_text="at most 0.0 MiB").wait_for()
    page.evaluate("() => { card.limits.max_upload_bytes = 1 << 30; }")

    # a server that never answers: the page gives up after the card's time limit (shortened here) + 3 s
    page.unroute("**/v1/detect*")
    page.evaluate("() => { card.limits.timeout_s = 0.5; }")
    page.route("**/v1/detect*", lambda r: None)  # held, never answered
    upload(page, PHOTO)
    page.locator("#status.error").filter(has_text="timed out").wait_for(timeout=15_000)
    page.unroute("**/v1/detect*")


def test_page_works_under_its_content_security_policy(browser, site):
    _, launch = browser
    context = launch()  # CSP enforced
    try:
        page = context.new_page()
        violations = []
        page.on("console", lambda m: m.type == "error" and violations.append(m.text))
        page.goto(site[0])
        page.wait_for_selector("#card-details:not([hidden])")
        upload(page, PHOTO)
        wait_result(page, "grace_hopper.jpg")
        page.locator("#heatmap-img").wait_for()
        assert violations == []
    finally:
        context.close()


def test_docs_render_offline(page, site):
    page.goto(site[0] + "/docs")
    page.locator(".swagger-ui .info .title").filter(has_text="fakemerge").wait_for(timeout=15_000)
    assert page.locator(".opblock-summary-path").filter(has_text="/v1/detect").count() == 1
