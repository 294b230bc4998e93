"""End to end in a real browser: Debian's headless Chromium, driven by Playwright, uses the page of
``fasterrcnn serve`` (uvicorn on 127.0.0.1, a free port) and shows what POST /detect answers.

Needs /usr/bin/chromium (``apt-get install chromium``) and the ``playwright`` Python package; no
browser is downloaded (``playwright install`` is never run). Skipped only where Chromium is absent.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest
from test_detector import CLASS_NAMES, IMAGE_SIZE, write_predictable_checkpoint, write_test_image

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (apt-get install chromium)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app of a predictable checkpoint, served by uvicorn in a thread; yields its base URL."""
    import uvicorn

    from fasterrcnn.detector import Detector
    from fasterrcnn.serve import create_app

    checkpoint = write_predictable_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")
    app = create_app(Detector.from_checkpoint(checkpoint, device="cpu"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    ready = threading.Event()
    while not server.started and thread.is_alive():
        ready.wait(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()
    assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def api_detect(server: str, path: Path, threshold: float) -> dict:
    import httpx

    with path.open("rb") as f:
        response = httpx.post(f"{server}/detect", files={"image": (path.name, f, "image/png")}, data={"score_threshold": str(threshold)}, timeout=60)
    assert response.status_code == 200
    return response.json()


def table_rows(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#detections tbody tr",
        "rows => rows.map(r => ({label: r.dataset.label, score: r.dataset.score, box: r.dataset.box,"
        " cells: [...r.cells].map(c => c.textContent)}))",
    )


def set_threshold(page, value: float) -> None:
    page.fill("#threshold-number", str(value))
    page.dispatch_event("#threshold-number", "change")


def canvas_is_blank(page) -> bool:
    return page.eval_on_selector("#canvas", "c => !c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some(v => v !== 0)")


def assert_table_matches(page, expected: dict, threshold: float) -> None:
    page.wait_for_selector(f'#detections[data-state="done"][data-threshold="{threshold}"]')
    rows = table_rows(page)
    assert len(rows) == len(expected["detections"]) > 0
    for row, d in zip(rows, expected["detections"]):
        assert int(row["label"]) == d["label"]
        assert float(row["score"]) == d["score"]  # JS prints the shortest repr: the same double
        assert json.loads(row["box"]) == d["box"]
        name, score, box = row["cells"]
        assert name == d["class_name"] == CLASS_NAMES[d["label"] - 1]
        assert float(score) == pytest.approx(d["score"], abs=0.0005 + 1e-9)
        assert [float(v) for v in box.split(", ")] == pytest.approx(d["box"], abs=0.05 + 1e-9)


def test_the_page_shows_what_the_api_answers(server, page, tmp_path):
    image = write_test_image(tmp_path / "shapes.png")
    outside, detects = [], []
    local = (server + "/", "blob:" + server + "/")  # the page, its API, and the picked file's object URL
    page.on("request", lambda request: None if request.url.startswith(local) else outside.append(request.url))
    page.on("request", lambda request: detects.append(request.url) if request.url == server + "/detect" else None)
    page.goto(server + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('classes')")
    assert page.text_content("#model") == f"3 classes ({', '.join(CLASS_NAMES)}) on cpu"

    set_threshold(page, 0.1)  # class 1 (~0.83) and class 2 (~0.11) detections
    page.set_input_files("#file", str(image))
    assert_table_matches(page, api_detect(server, image, 0.1), 0.1)
    assert {int(r["label"]) for r in table_rows(page)} == {1, 2}
    assert page.eval_on_selector("#canvas", "c => [c.height, c.width]") == list(IMAGE_SIZE)
    drawn_at_01 = int(page.get_attribute("#detections", "data-drawn"))
    assert drawn_at_01 == len(table_rows(page))
    assert len(detects) == 1

    page.fill("#threshold", "0.5")  # the slider: the last answer is filtered again, no request
    assert page.input_value("#threshold-number") == "0.5"
    assert_table_matches(page, api_detect(server, image, 0.5), 0.5)
    assert {int(r["label"]) for r in table_rows(page)} == {1}
    assert 0 < int(page.get_attribute("#detections", "data-drawn")) < drawn_at_01
    set_threshold(page, 0.1)  # the number box too
    assert_table_matches(page, api_detect(server, image, 0.1), 0.1)
    assert len(detects) == 1  # the page's one upload (api_detect's requests are not the page's)
    assert outside == []  # the page fetched nothing from anywhere else


def test_a_bad_upload_shows_the_servers_error_and_nothing_of_the_image_before(server, page, tmp_path):
    image = write_test_image(tmp_path / "shapes.png")
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    page.goto(server + "/")
    set_threshold(page, 0.1)
    page.set_input_files("#file", str(image))
    page.wait_for_selector('#detections[data-state="done"]')
    assert len(table_rows(page)) > 0 and not canvas_is_blank(page)

    page.set_input_files("#file", str(text))
    page.wait_for_selector('#detections[data-state="error"]')
    assert page.text_content("#status") == "notes.txt: cannot read image (not an image, or a format Pillow cannot read)"
    assert page.eval_on_selector("#status", "s => s.classList.contains('error')")
    assert table_rows(page) == []
    assert canvas_is_blank(page)  # the picture of shapes.png is gone
    assert page.get_attribute("#detections", "data-drawn") is None
    set_threshold(page, 0.5)  # nothing comes back with a threshold change
    assert table_rows(page) == [] and canvas_is_blank(page)
