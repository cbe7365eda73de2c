"""Service under a real uvicorn on 127.0.0.1: limits enforced on the wire, bounded queue (429), time limit,
draining shutdown, client disconnects, concurrency, and the `fakemerge serve` command with env settings."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from serving_fixtures import PHOTO, live_server, photo_video, save_model

from fakemerge.serving import analysis, build_settings, create_app, uploads


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("live") / "merged.safetensors")


@pytest.fixture()
def spool(tmp_path):
    folder = tmp_path / "spool"
    folder.mkdir()
    yield folder
    assert list(folder.iterdir()) == [], "a request left files in the spool folder"


class Gate:
    """Stands in for the analysis: holds each job until opened, counts the jobs that really ran."""

    def __init__(self):
        self.opened, self.calls, self.entered = threading.Event(), 0, threading.Semaphore(0)

    def analyse(self, detector, upload, options, settings):
        self.calls += 1
        self.entered.release()
        self.opened.wait(20)
        return {"input": upload.name, "score": 0.5}


@pytest.fixture()
def gate(monkeypatch):
    gate = Gate()
    monkeypatch.setattr(analysis, "analyse", gate.analyse)
    yield gate
    gate.opened.set()  # a failing test must not leave a worker waiting


def upload(url, name="face.jpg", data=None, timeout=30, **params):
    return httpx.post(f"{url}/v1/detect", params=params, timeout=timeout,
                      files={"file": (name, PHOTO.read_bytes() if data is None else data)})


def wait_for(predicate, seconds=10):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_declared_huge_length_is_refused_before_the_body(model, spool, monkeypatch):
    written = []
    monkeypatch.setattr(uploads.os, "write", lambda fd, b: written.append(len(b)))
    with live_server(create_app(model, build_settings(tmp_dir=spool, max_upload_mb=1))) as (url, server):
        port = int(url.rsplit(":", 1)[1])
        head = (b"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                b"Content-Length: 3221225472\r\n\r\n")  # 3 GiB declared, none sent
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(head + b"--x\r\n")
            answer = b""
            while chunk := s.recv(65536):  # b"": the server closed instead of reading 3 GiB to keep it alive
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"connection: close" in answer.lower() and b'"code":"too_large"' in answer
        assert time.monotonic() - t0 < 5
    assert written == []


def test_streamed_upload_is_cut_at_the_limit(model, spool, monkeypatch):
    written = []
    real_write = uploads.os.write
    monkeypatch.setattr(uploads.os, "write", lambda fd, b: written.append(len(b)) or real_write(fd, b))
    with live_server(create_app(model, build_settings(tmp_dir=spool, max_upload_mb=1))) as (url, server):
        port = int(url.rsplit(":", 1)[1])
        head = (b"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        part = b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n\r\n' + PHOTO.read_bytes()
        chunks = [part] + [b"\x00" * 65536] * 40 + [b"\r\n--x--\r\n"]  # 2.6 MiB
        body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(head)
            answer = b""
            try:
                for i in range(0, len(body), 65536):
                    s.sendall(body[i:i + 65536])
            except OSError:
                pass  # the server answered and closed mid-body, as it should
            s.settimeout(10)
            try:
                while not answer.endswith(b"}") and (chunk := s.recv(65536)):
                    answer += chunk
            except ConnectionResetError:
                pass  # the server may reset after its answer, since it never read the rest
        assert answer.startswith(b"HTTP/1.1 413") and b"too_large" in answer
        assert b"connection: close" not in answer.lower()  # the rest (< 2x the limit) was dropped: kept alive
    assert 0 < sum(written) <= 1 << 20


def test_stalled_upload_gets_408_and_frees_its_slot(model, spool):
    app = create_app(model, build_settings(tmp_dir=spool, timeout_s=1))
    with live_server(app) as (url, server):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                      b"Content-Length: 100000\r\n\r\n--x\r\nContent-Disposition: form-data; name=\"file\"; "
                      b"filename=\"slow.jpg\"\r\n\r\n" + PHOTO.read_bytes()[:1000])  # ...and then nothing
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b"upload_timeout" in answer
        assert app.state.pool.stats()["admitted"] == 0


def test_full_queue_gets_429_and_health_is_not_queued(model, spool, gate):
    app = create_app(model, build_settings(tmp_dir=spool, workers=1, queue=1))
    with live_server(app) as (url, server), ThreadPoolExecutor(2) as clients:
        first = clients.submit(upload, url, "one.jpg")
        assert gate.entered.acquire(timeout=10)  # one running...
        second = clients.submit(upload, url, "two.jpg")
        wait_for(lambda: app.state.pool.stats()["admitted"] == 2)  # ...one queued: every slot is taken
        busy = upload(url, "three.jpg")
        assert busy.status_code == 429 and busy.json()["error"]["code"] == "busy"
        assert int(busy.headers["retry-after"]) >= 1
        assert busy.headers.get("connection") != "close"  # its small body was read and dropped: kept alive
        latencies = []
        with httpx.Client(base_url=url, timeout=5) as probe:
            for _ in range(20):
                t0 = time.monotonic()
                assert probe.get("/health").status_code == 200
                latencies.append(time.monotonic() - t0)
        assert sorted(latencies)[10] < 0.05  # answered on the event loop while the only worker is held
        assert httpx.get(f"{url}/ready").json()["running"] == 1
        gate.opened.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
    assert gate.calls == 2 and app.state.pool.stats()["admitted"] == 0


def test_time_limit_answers_503_and_cancels_jobs_that_never_started(model, spool, gate):
    app = create_app(model, build_settings(tmp_dir=spool, workers=1, queue=4, timeout_s=1))
    with live_server(app) as (url, server), ThreadPoolExecutor(2) as clients:
        running = clients.submit(upload, url, "slow.jpg")
        assert gate.entered.acquire(timeout=10)
        queued = clients.submit(upload, url, "waiting.jpg")
        for response, where in ((running.result(), "being analysed"), (queued.result(), "waited for a worker")):
            assert response.status_code == 503 and response.json()["error"]["code"] == "timeout"
            assert where in response.json()["error"]["message"] and "retry-after" in response.headers
        assert app.state.pool.stats()["admitted"] == 1  # the running job keeps its slot until it really ends
        assert len(list(spool.iterdir())) == 1  # ...and its upload; the cancelled one's folder is gone
        gate.opened.set()
        wait_for(lambda: app.state.pool.stats()["admitted"] == 0)
    assert gate.calls == 1


def test_client_that_hangs_up_while_queued_costs_no_work(model, spool, gate):
    app = create_app(model, build_settings(tmp_dir=spool, workers=1, queue=2))
    with live_server(app) as (url, server), ThreadPoolExecutor(1) as clients:
        port = int(url.rsplit(":", 1)[1])
        running = clients.submit(upload, url, "one.jpg")
        assert gate.entered.acquire(timeout=10)
        photo = PHOTO.read_bytes()
        body = (b'--x\r\nContent-Disposition: form-data; name="file"; filename="gone.jpg"\r\n\r\n' + photo
                + b"\r\n--x--\r\n")
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            wait_for(lambda: app.state.pool.stats()["admitted"] == 2)
        wait_for(lambda: app.state.pool.stats()["admitted"] == 1)  # the hang-up freed its slot at once
        gate.opened.set()
        assert running.result().status_code == 200
    assert gate.calls == 1


def test_draining_refuses_new_work_and_finishes_admitted(model, spool, gate):
    app = create_app(model, build_settings(tmp_dir=spool, workers=1, queue=2))
    with live_server(app) as (url, server), ThreadPoolExecutor(1) as clients:
        admitted = clients.submit(upload, url, "one.jpg")
        assert gate.entered.acquire(timeout=10)
        server.handle_exit(signal.SIGTERM, None)  # what SIGTERM does: drain, then uvicorn's graceful exit
        gate.opened.set()
        assert admitted.result().status_code == 200
    pool = app.state.pool
    assert pool.draining and pool.stats()["admitted"] == 0


def test_draining_pool_answers_503_and_not_ready(model, spool):
    app = create_app(model, build_settings(tmp_dir=spool))
    with live_server(app) as (url, server):
        app.state.pool.drain()
        refused = upload(url)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
        assert httpx.get(f"{url}/ready").status_code == 503 and httpx.get(f"{url}/health").status_code == 200


def test_concurrent_uploads_each_get_their_own_result(model, spool, tmp_path):
    video = photo_video(tmp_path / "pan.mp4")
    crops = {"photo.jpg": PHOTO.read_bytes(), "pan.mp4": video.read_bytes(),
             "flip.jpg": _flipped_photo(), "notes.png": b"not an image at all"}
    app = create_app(model, build_settings(tmp_dir=spool, workers=2, queue=16, frames=4))
    with live_server(app) as (url, server):
        alone = {name: upload(url, name, data) for name, data in crops.items()}
        with ThreadPoolExecutor(12) as clients:
            names = list(crops) * 3
            together = list(clients.map(lambda n: (n, upload(url, n, crops[n])), names))
    for name, response in together:
        assert response.status_code == alone[name].status_code
        if response.status_code == 200:
            assert response.json()["input"] == name
            assert response.json()["frame_scores"] == pytest.approx(alone[name].json()["frame_scores"], abs=1e-6)
    assert {n: r.status_code for n, r in alone.items()} == {"photo.jpg": 200, "pan.mp4": 200, "flip.jpg": 200,
                                                              "notes.png": 415}
    assert alone["photo.jpg"].json()["score"] != alone["flip.jpg"].json()["score"]


def _flipped_photo() -> bytes:
    import cv2

    return cv2.imencode(".jpg", cv2.imread(str(PHOTO))[::-1])[1].tobytes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serve_reads_env_settings_and_exits_cleanly_on_sigterm(model, spool):
    port = free_port()
    env = {**os.environ, "FAKEMERGE_WORKERS": "2", "FAKEMERGE_QUEUE": "3", "FAKEMERGE_TMP_DIR": str(spool),
           "FAKEMERGE_MAX_PIXELS": "1000000"}
    proc = subprocess.Popen([sys.executable, "-m", "fakemerge", "serve", str(model), "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(url), 60)
        limits = httpx.get(f"{url}/v1/model").json()["limits"]
        assert (limits["workers"], limits["queue"], limits["max_pixels"]) == (2, 3, 1_000_000)
        assert upload(url).status_code == 200
        proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal once its graceful shutdown is over: "killed by SIGTERM" after it
        assert proc.wait(20) == -signal.SIGTERM
        log = proc.stdout.read().decode()
        assert "Application shutdown complete" in log and "Traceback" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _ready(url) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("args,env,needle", [(["--workers", "0"], {}, "workers"),
                                             ([], {"FAKEMERGE_QUEUE": "-1"}, "queue"),
                                             (["--tmp-dir", "/nonexistent/spool"], {}, "tmp_dir"),
                                             (["--agg", "median"], {}, "agg"),
                                             (["--frames", "9", "--max-frames", "8"], {}, "max_frames")])
def test_cli_serve_bad_settings_exit_2(model, args, env, needle, monkeypatch, capsys):
    from fakemerge.cli import main

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as exited:
        main(["serve", str(model), "--port", "1", *args])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and needle in err and "Traceback" not in err
