"""fasterrcnn.serve: the web app's routes, answers and errors, through FastAPI's TestClient, and over a loopback
socket what the test client cannot show (chunked uploads, clients that stop half-way)."""

from __future__ import annotations

import contextlib
import io
import re
import threading
import time

import warnings

import pytest
import torch
from PIL import Image
from test_detector import CLASS_NAMES, IMAGE_SIZE, write_predictable_checkpoint, write_test_image

from fasterrcnn.detector import Detection, Detector
from fasterrcnn import serve
from fasterrcnn.serve import DEFAULT_MAX_UPLOAD_BYTES, create_app, index_html

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # recent Starlette asks for httpx2 instead of httpx
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Detector:
    return Detector.from_checkpoint(write_predictable_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt"), device="cpu")


@pytest.fixture(scope="module")
def png(tmp_path_factory) -> bytes:
    return write_test_image(tmp_path_factory.mktemp("images") / "shapes.png").read_bytes()


@pytest.fixture(scope="module")
def client(detector):
    with TestClient(create_app(detector, max_upload_bytes=200_000)) as client:
        yield client


def post_image(client, content: bytes, name="shapes.png", mime="image/png", **kwargs):
    return client.post("/detect", files={"image": (name, content, mime)}, **kwargs)


def assert_error(response, status: int, pattern: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"]
    assert re.search(pattern, body["error"]), body["error"]


def test_health_reports_the_model(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "classes": CLASS_NAMES, "device": "cpu", "precision": "f32", "max_upload_bytes": 200_000}


def test_the_page_is_self_contained(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert html == index_html()
    assert re.search(r"https?://", html) is None  # nothing from the internet
    assert re.search(r"<(script|link|img|iframe)[^>]*\b(src|href)=", html) is None  # no assets at all
    for element in ('id="file"', 'type="file"', 'id="threshold"', 'type="range"', 'id="canvas"', 'id="detections"'):
        assert element in html


def test_detect_answers_the_detections_of_the_detector(client, detector, png):
    response = post_image(client, png, data={"score_threshold": "0.5"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"detections", "width", "height", "score_threshold"}
    assert (body["height"], body["width"]) == IMAGE_SIZE
    assert body["score_threshold"] == 0.5
    expected = detector.detect(Image.open(io.BytesIO(png)), score_threshold=0.5)
    assert len(expected) > 0
    assert body["detections"] == [d.to_dict() for d in expected]
    for d in body["detections"]:
        assert set(d) == {"box", "label", "class_name", "score"}
        assert len(d["box"]) == 4 and all(isinstance(v, float) for v in d["box"])
        assert isinstance(d["label"], int) and d["class_name"] == CLASS_NAMES[d["label"] - 1]
        assert 0.5 <= d["score"] <= 1


def test_the_threshold_comes_from_the_form_or_the_query(client, png):
    default = post_image(client, png).json()
    low = post_image(client, png, params={"score_threshold": "0.05"}).json()
    form_wins = post_image(client, png, data={"score_threshold": "0.5"}, params={"score_threshold": "0.05"}).json()
    assert default["score_threshold"] == 0.5 and low["score_threshold"] == 0.05
    assert default["detections"] == [d for d in low["detections"] if d["score"] >= 0.5]
    assert len(low["detections"]) > len(default["detections"]) > 0
    assert form_wins == default
    for bad in ("abc", "1.5", "-0.1", "nan"):
        assert_error(post_image(client, png, data={"score_threshold": bad}), 400, r"score_threshold must be a number in \[0, 1\]")


def test_bad_uploads_answer_4xx_json_and_the_server_keeps_serving(client, png):
    assert_error(post_image(client, b"hello, I am not an image\n", "notes.txt", "text/plain"), 422, r"^notes.txt: cannot read image \(not an image, or a format Pillow cannot read\)$")
    assert_error(post_image(client, png[: len(png) // 2], "cut.png"), 422, r"^cut.png: cannot read image \(image file is truncated")
    assert_error(post_image(client, b"", "empty.png"), 400, r"^empty.png: the file is empty$")
    assert_error(post_image(client, b"\x89PNG" + bytes(200_000), "big.png"), 413, r"^big.png: the file is over the limit of 200000 bytes$")
    assert_error(post_image(client, bytes(400_000), "huge.png"), 413, r"^upload of \d+ bytes is over the limit of 200000 bytes$")
    assert_error(client.post("/detect", data={"score_threshold": "0.5"}), 415, r"multipart/form-data")
    assert_error(client.post("/detect", files={"picture": ("a.png", png, "image/png")}), 400, r"^no file in the form field 'image'$")
    assert_error(client.post("/detect", content=b"x", headers={"content-type": "multipart/form-data"}), 400, r"^malformed form: Missing boundary")
    two_files = [("image", ("a.png", png, "image/png")), ("image", ("b.png", png, "image/png"))]
    assert_error(client.post("/detect", files=two_files), 400, r"^malformed form: Too many files")
    assert_error(client.post("/detect", json={"image": "data"}), 415, r"multipart/form-data")
    assert_error(client.get("/nope"), 404, r"Not Found")
    assert_error(client.get("/detect"), 405, r"Method Not Allowed")
    assert client.get("/health").json()["status"] == "ok"
    assert post_image(client, png).status_code == 200


def test_a_large_upload_is_decoded_reduced_and_answered_in_its_own_pixels(detector, tmp_path):
    import io

    from PIL import Image, ImageDraw

    photo = Image.new("RGB", (4000, 3000), (40, 60, 80))
    ImageDraw.Draw(photo).rectangle([800, 400, 2800, 2400], fill=(250, 200, 0))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    (tmp_path / "big.jpg").write_bytes(buffer.getvalue())
    seen = []
    hook = detector.model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0][0].shape)))
    try:
        with TestClient(create_app(detector, max_upload_bytes=len(buffer.getvalue()))) as client:
            response = post_image(client, buffer.getvalue(), "big.jpg", "image/jpeg", data={"score_threshold": "0"})
    finally:
        hook.remove()
    assert response.status_code == 200, response.text
    body = response.json()
    assert seen == [(3, 375, 500)]  # decoded at 1/8, never as a 4000 x 3000 float tensor
    assert (body["width"], body["height"]) == (4000, 3000)
    expected = [d.to_dict() for d in detector.detect(tmp_path / "big.jpg", score_threshold=0.0)]
    assert len(expected) > 0 and body["detections"] == expected


def test_images_with_too_many_pixels_are_refused_before_decoding(detector, png):
    with TestClient(create_app(detector, max_image_pixels=100 * 100)) as client:
        assert_error(post_image(client, png), 413, r"^shapes.png: the image is 128x96, more than 10000 pixels$")
        assert client.get("/health").json()["max_upload_bytes"] == DEFAULT_MAX_UPLOAD_BYTES


class BlockingDetector:
    """A stand-in Detector whose detect waits for ``release`` and records how many calls overlap."""

    class_names = ("thing",)
    device = torch.device("cpu")
    precision = "f32"

    def __init__(self):
        self.release = threading.Event()
        self.started = threading.Event()
        self.active = 0
        self.most_active = 0
        self.calls = 0
        self.count_lock = threading.Lock()

    def detect(self, image, score_threshold=0.5):
        with self.count_lock:
            self.active += 1
            self.calls += 1
            self.most_active = max(self.most_active, self.active)
        self.started.set()
        self.release.wait(timeout=10)
        time.sleep(0.02)
        with self.count_lock:
            self.active -= 1
        return [Detection((1.0, 2.0, 3.0, 4.0), 1, "thing", 0.9)]


def test_forward_passes_run_one_at_a_time_off_the_event_loop(png):
    fake = BlockingDetector()
    with TestClient(create_app(fake)) as client:
        answers = []
        posts = [threading.Thread(target=lambda: answers.append(post_image(client, png))) for _ in range(3)]
        for thread in posts:
            thread.start()
        assert fake.started.wait(timeout=10)
        health = client.get("/health")  # answered while a forward pass is blocked
        assert health.status_code == 200 and health.json()["classes"] == ["thing"]
        fake.release.set()
        for thread in posts:
            thread.join(timeout=10)
    assert fake.calls == 3 and fake.most_active == 1
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[0].json()["detections"] == [{"box": [1.0, 2.0, 3.0, 4.0], "label": 1, "class_name": "thing", "score": 0.9}]


def test_serve_subcommand_parses_its_options():
    import argparse

    from fasterrcnn.cli import serve

    parser = argparse.ArgumentParser(prog="fasterrcnn")
    serve.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--weights", "best.pt"])
    assert (args.weights, args.host, args.port, args.device, args.max_upload_bytes) == ("best.pt", "127.0.0.1", 8000, "auto", DEFAULT_MAX_UPLOAD_BYTES)
    args = parser.parse_args(["serve", "--weights", "w.pt", "--host", "0.0.0.0", "--port", "9001", "--max-upload-bytes", "1000"])
    assert (args.host, args.port, args.max_upload_bytes) == ("0.0.0.0", 9001, 1000)
    assert (args.precision, args.amp, args.amp_dtype) == (None, False, None)  # None: auto
    args = parser.parse_args(["serve", "--weights", "w.pt", "--precision", "bf16"])
    assert args.precision == "bf16"
    assert args.func is serve.run


def test_fasterrcnn_serve_is_a_subcommand_of_the_cli(tmp_path, monkeypatch, capsys):
    import uvicorn

    from fasterrcnn.cli import build_parser, main

    assert main(["serve", "--help"]) == 0
    assert "usage: fasterrcnn serve [-h] --weights FILE [--preset NAME]\n" in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert re.search(r"^\s+serve\s+serve a checkpoint as a web page and a JSON API$", capsys.readouterr().out, re.M)
    assert main(["serve"]) == 2
    assert "fasterrcnn serve: error: the following arguments are required: --weights" in capsys.readouterr().err
    assert main(["serve", "--weights", str(tmp_path / "missing.pt")]) == 2  # one line, no traceback
    assert capsys.readouterr().err == f"fasterrcnn: error: {tmp_path / 'missing.pt'}: no such checkpoint file\n"

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app, **kwargs))
    monkeypatch.setattr(serve, "check_port", lambda host, port: None)  # 8000 and 9123 may be in use on this machine
    checkpoint = write_predictable_checkpoint(tmp_path / "model.pt")
    assert main(["serve", "--weights", str(checkpoint), "--port", "9123", "--device", "cpu"]) == 0
    assert (served["host"], served["port"]) == ("127.0.0.1", 9123)
    assert "serving model.pt (3 classes, cpu, f32) on http://127.0.0.1:9123" in capsys.readouterr().out
    with TestClient(served["app"]) as client:
        assert client.get("/health").json()["classes"] == CLASS_NAMES
    assert main(["serve", "--weights", str(checkpoint), "--device", "cpu", "--precision", "bf16"]) == 0
    assert "serving model.pt (3 classes, cpu, bf16) on http://127.0.0.1:8000" in capsys.readouterr().out
    with TestClient(served["app"]) as client:
        assert client.get("/health").json()["precision"] == "bf16"
    assert build_parser().parse_args(["serve", "--weights", "w.pt"]).func.__module__ == "fasterrcnn.cli.serve"


def test_serve_reads_a_torchvision_file_with_a_preset_as_predict_does(tmp_path, monkeypatch, capsys, png):
    import uvicorn

    from fasterrcnn.cli import main
    from fasterrcnn.serve import run
    from test_detector import predictable_model

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app, **kwargs))
    monkeypatch.setattr(serve, "check_port", lambda host, port: None)  # 8000 may be in use on this machine
    weights = tmp_path / "fasterrcnn_tiny.pth"
    torch.save(predictable_model().state_dict(), weights)
    expected = Detector.from_torchvision("tiny", weights, classes=CLASS_NAMES, device="cpu").detect(Image.open(io.BytesIO(png)))
    assert len(expected) > 0
    for start in (
        lambda: main(["serve", "--weights", str(weights), "--preset", "tiny", "--classes", ",".join(CLASS_NAMES), "--device", "cpu"]),
        lambda: run(weights, preset="tiny", classes=CLASS_NAMES, device="cpu"),
    ):
        served.clear()
        assert start() in (0, None)
        assert "serving fasterrcnn_tiny.pth (3 classes, cpu, f32) on http://127.0.0.1:8000" in capsys.readouterr().out
        with TestClient(served["app"]) as client:
            assert client.get("/health").json()["classes"] == CLASS_NAMES
            assert post_image(client, png).json()["detections"] == [d.to_dict() for d in expected]
    # the COCO names are the default; this file has 3 classes, not COCO's 90
    assert main(["serve", "--weights", str(weights), "--preset", "tiny", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.startswith("fasterrcnn: error: the built-in COCO names are for models with 90 foreground classes")
    assert main(["serve", "--weights", str(weights), "--classes", "a,b,c"]) == 2
    assert capsys.readouterr().err == "fasterrcnn: error: --classes goes with --preset: a checkpoint written by 'fasterrcnn train' holds its class names\n"


def test_a_png_declaring_too_many_pixels_is_refused_from_its_header(detector, monkeypatch):
    from PIL import ImageFile
    from test_data_images import declared_png

    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.format))
    with TestClient(create_app(detector)) as client:
        start = time.perf_counter()
        response = post_image(client, declared_png(12000, 12000), "huge.png")
        seconds = time.perf_counter() - start
    assert_error(response, 413, r"^huge.png: the image is 12000x12000, more than 40000000 pixels$")
    assert decoded == [] and seconds < 1.0


def test_a_malformed_exif_block_answers_422_json(client):
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 20, 30)).save(buffer, format="JPEG", exif=b"Exif\x00\x00MM\x00*", dpi=(72, 72))
    response = post_image(client, buffer.getvalue(), "bad_exif.jpg", "image/jpeg")
    assert_error(response, 422, r"^bad_exif.jpg: cannot read image \(malformed EXIF block: unpack requires a buffer of 4 bytes\)$")


# -- over a real socket (loopback): what the test client cannot show (chunked uploads, slow clients) -----------
@contextlib.contextmanager
def live_server(app, **options):
    """``app`` served by uvicorn on 127.0.0.1 (a free port) in a thread; yields the port."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def read_answer(conn) -> tuple[int, dict]:
    """The status and JSON body of the HTTP answer on ``conn`` (read until the body is complete)."""
    import json

    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
    while len(body) < length:
        body += conn.recv(65536)
    return int(head.split()[1]), json.loads(body)


def test_a_chunked_upload_is_refused_as_soon_as_it_passes_the_limit(png):
    import select
    import socket

    boundary = "b0und4ry"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode()  # fmt: skip
    chunk = bytes(64 * 1024)
    sent = 0
    with live_server(create_app(BlockingDetector(), max_upload_bytes=200_000)) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"POST /detect HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
                         b"Content-Type: multipart/form-data; boundary=" + boundary.encode() + b"\r\n\r\n")  # fmt: skip
            conn.sendall(b"%x\r\n%s\r\n" % (len(head), head))
            while sent < 100 * 2**20 and not select.select([conn], [], [], 0)[0]:
                try:
                    conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                except OSError:  # the server closed the connection after answering
                    break
                sent += len(chunk)
            status, body = read_answer(conn)
    assert (status, body) == (413, {"error": f"upload of more than {200_000 + 64 * 1024} bytes is over the limit"})
    assert sent < 16 * 2**20  # the limit plus what the sockets buffer, not the 100 MB offered


def test_connections_sending_half_a_request_are_closed_after_the_deadlines(png):
    import socket

    from fasterrcnn.serve import uvicorn_options

    app = create_app(BlockingDetector(), body_timeout=0.5)
    with live_server(app, **uvicorn_options(header_timeout=0.5, keep_alive=1)) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:  # half the headers
            conn.sendall(b"POST /detect HTTP/1.1\r\nHost: test\r\n")
            start = time.monotonic()
            assert conn.recv(1024) == b""  # closed by the server
            assert 0.4 < time.monotonic() - start < 3
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:  # nothing at all
            start = time.monotonic()
            assert conn.recv(1024) == b""
            assert 0.4 < time.monotonic() - start < 3
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:  # the headers, half the body
            conn.sendall(b"POST /detect HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n"
                         b"Content-Type: multipart/form-data; boundary=x\r\n\r\n--x\r\n")  # fmt: skip
            start = time.monotonic()
            assert read_answer(conn) == (408, {"error": "the request body did not arrive within 0.5 s"})
            assert 0.4 < time.monotonic() - start < 3
            assert conn.recv(1024) == b""  # and the connection is closed
            assert time.monotonic() - start < 5
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:  # a whole request is answered
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
            assert read_answer(conn)[0] == 200


def test_a_port_in_use_is_one_line_before_serving(tmp_path, capsys, monkeypatch):
    import socket

    import uvicorn

    from fasterrcnn.cli import main

    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: pytest.fail("uvicorn started"))
    checkpoint = write_predictable_checkpoint(tmp_path / "model.pt")
    with socket.socket() as other:  # another program listening on the port
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        assert main(["serve", "--weights", str(checkpoint), "--port", str(port), "--device", "cpu"]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # no "serving on ..."
    assert err == f"fasterrcnn: error: port {port} on 127.0.0.1 is in use by another program: stop it or choose another --port\n"


def test_an_icon_upload_is_refused_without_decoding_it(client):
    from test_data_untrusted_images import icon_holding_png

    answer = post_image(client, icon_holding_png((3000, 3000)), "favicon.ico", "image/x-icon")
    assert_error(answer, 422, r"^favicon.ico: is an ICO icon, which is not read \(its size is known only by decoding it\)")


def test_model_faults_answer_json_500(png):
    from pathlib import Path

    import numpy as np

    from fasterrcnn.deploy.runtime import ExportedModel

    meta = {"class_names": '["thing"]', "config": '{"min_size": 64, "max_size": 64}'}
    outputs = (np.zeros((1, 4), np.float32), np.array([7]), np.array([0.9], np.float32))
    model = ExportedModel(lambda image: outputs, meta, Path("model.onnx"))
    with TestClient(create_app(Detector(model, model.class_names, device="cpu"))) as client:
        assert_error(post_image(client, png), 500, r"^model.onnx: the graph answered labels 7\.\.7, outside 1\.\.1 \(its 1 classes\)$")
        assert client.get("/health").json()["status"] == "ok"

    class Broken(BlockingDetector):
        def detect(self, image, score_threshold=0.5):
            raise TypeError("unsupported operand")

    with TestClient(create_app(Broken()), raise_server_exceptions=False) as client:
        assert_error(post_image(client, png), 500, r"^internal error \(TypeError: unsupported operand\)$")
