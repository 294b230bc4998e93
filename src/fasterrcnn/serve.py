"""``fasterrcnn serve``: a small web app around a ``Detector`` (FastAPI + uvicorn).

    fasterrcnn serve --weights runs/x/checkpoints/best.pt [--host 127.0.0.1] [--port 8000]
    fasterrcnn serve --weights fasterrcnn_resnet50_fpn_coco-258fb6c6.pth --preset resnet50_fpn [--classes coco]

Routes:
    GET  /         the page (static/index.html, self-contained: pick or drop an image, set the
                   score threshold, see the boxes on a canvas and a table of detections; it posts
                   an image once, with score_threshold 0, and a threshold change filters that
                   answer in the browser, without a request)
    POST /detect   multipart/form-data with the file in field ``image`` and an optional
                   ``score_threshold`` (form field or query parameter, default 0.5) ->
                   {"detections": [{"box": [x1, y1, x2, y2], "label", "class_name", "score"}],
                    "width", "height", "score_threshold"}  (boxes in pixels of the uploaded image,
                   EXIF orientation applied; by decreasing score)
    GET  /health   {"status": "ok", "classes": [...], "device": "cpu", "precision": "f32", "max_upload_bytes": N}

Every error answers JSON ``{"error": "..."}`` with a 4xx status: 400 (no ``image`` field, empty
file, malformed form, bad threshold), 408 (body not received within ``body_timeout`` seconds),
413 (upload over ``max_upload_bytes`` or image over ``max_image_pixels``), 415 (not
multipart/form-data), 422 (not a readable image: "photo.jpg: cannot read image (...)"), 404 / 405;
and with 500 when the model is at fault (an exported graph answering labels outside its classes or
mis-shaped outputs: "model.onnx: the graph answered ...") or on any unexpected error.
``run`` checks that the port is free before it loads the model (one line, exit 2, when it is not).

Bounded work per request. The body is counted while it arrives (with or without Content-Length,
chunked or not) and refused with 413 as soon as it passes the limit; its arrival has a deadline.
The pixel limit is checked from the image header, which never decodes pixels (``data.images``),
so a small file declaring 12000x12000 pixels is refused in milliseconds. ``run`` gives uvicorn a
keep-alive timeout and a deadline for a request's headers (``uvicorn_options``): a connection that
sends half a request and waits is closed.

The header check, decoding and the model run in the thread pool, so the event loop keeps
answering /health; a lock lets one decode and forward pass run at a time. An upload is decoded
as the Detector decodes files: one much larger than the model's input at 1/2, 1/4 ... of its size
(its boxes still in its own pixels), so a 8000x6000 photo needs little memory. Served with
``--slice``, an upload is decoded whole as uint8 and detected tile by tile (``fasterrcnn.inference``),
and images up to 150 megapixels are accepted (raise ``--max-upload-bytes`` for such files).

FastAPI, uvicorn and python-multipart are imported only when an app is built, so the command
line stays quick and works without them for the other commands.
"""

# No ``from __future__ import annotations``: FastAPI reads the route functions' annotations
# (``request: Request``), which are imported inside ``create_app``.
import asyncio
import errno
import io
import math
import socket
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from fasterrcnn.errors import ConfigError, DataError

if TYPE_CHECKING:
    from fasterrcnn.detector import Detector
    from fasterrcnn.inference import InferenceOptions

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "create_app", "run", "uvicorn_options"]

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # 20 MiB
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # larger images are refused before they are decoded
DEFAULT_SCORE_THRESHOLD = 0.5
DEFAULT_BODY_TIMEOUT = 60.0  # seconds for a request's body to arrive (20 MiB at 3 Mbit/s)
DEFAULT_HEADER_TIMEOUT = 10.0  # seconds for a request's headers to arrive
DEFAULT_KEEP_ALIVE = 5  # seconds an idle keep-alive connection is held
_MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and small fields around the file
_MISSING_DEPENDENCIES = "fasterrcnn serve needs fastapi, uvicorn and python-multipart (pip install fastapi uvicorn python-multipart)"


def index_html() -> str:
    """The page served at ``/`` (package data ``fasterrcnn/static/index.html``)."""
    return resources.files("fasterrcnn").joinpath("static", "index.html").read_text(encoding="utf-8")


class _RequestError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _parse_threshold(text: str | None) -> float:
    if text is None or text == "":
        return DEFAULT_SCORE_THRESHOLD
    try:
        value = float(text)
    except ValueError:
        raise _RequestError(400, f"score_threshold must be a number in [0, 1], got {text!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise _RequestError(400, f"score_threshold must be a number in [0, 1], got {text!r}")
    return value


def _unreadable(filename: str, error: DataError) -> _RequestError:
    """422 with the decoder's problem, e.g. "photo.jpg: cannot read image (image file is truncated)"."""
    return _RequestError(422, f"{filename}: {error.problem}")


def _check_upload(data: bytes, filename: str, max_image_pixels: int) -> tuple[io.BytesIO, int, int]:
    """Upload bytes -> (a file object of them, width, height), from the image header only.

    The detector decodes the file as it decodes paths: EXIF applied, and an image much larger
    than the model's input decoded at 1/2, 1/4 ... of its size (boxes still in its pixels).
    """
    from fasterrcnn.data.images import image_size

    buffer = io.BytesIO(data)
    try:
        height, width = image_size(buffer)
    except DataError as e:
        raise _unreadable(filename, e) from None
    if height * width > max_image_pixels:
        raise _RequestError(413, f"{filename}: the image is {width}x{height}, more than {max_image_pixels} pixels")
    buffer.seek(0)
    return buffer, width, height


def _limited_receive(receive, max_bytes: int, timeout: float):
    """``receive`` (ASGI) counting the body's bytes: raises 413 once more than ``max_bytes`` arrived and
    408 when the body is not complete ``timeout`` seconds after the first call."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    received = 0

    async def limited():
        nonlocal received
        try:
            message = await asyncio.wait_for(receive(), timeout=max(deadline - loop.time(), 0.0))
        except asyncio.TimeoutError:
            raise _RequestError(408, f"the request body did not arrive within {timeout:g} s") from None
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise _RequestError(413, f"upload of more than {max_bytes} bytes is over the limit")
        return message

    return limited


def create_app(
    detector: "Detector",
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    *,
    max_image_pixels: int | None = None,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    inference: "InferenceOptions | None" = None,
):
    """The FastAPI app serving ``detector`` (routes in the module docstring); a request body must
    arrive within ``body_timeout`` seconds. ``inference`` (``inference.InferenceOptions``): every image
    is detected sliced and / or with TTA; ``max_image_pixels`` (default: ``DEFAULT_MAX_IMAGE_PIXELS``,
    ``data.images.SLICED_MAX_PIXELS`` when sliced) bounds the images accepted."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.concurrency import run_in_threadpool
        from fastapi.responses import HTMLResponse, JSONResponse
        from starlette.datastructures import UploadFile
        from starlette.exceptions import HTTPException
    except ImportError:
        raise ConfigError(_MISSING_DEPENDENCIES) from None
    from fasterrcnn.deploy.runtime import ModelOutputError

    if max_upload_bytes < 1:
        raise ConfigError(f"max_upload_bytes must be >= 1, got {max_upload_bytes}")
    if not body_timeout > 0:
        raise ConfigError(f"body_timeout must be > 0 seconds, got {body_timeout}")
    from fasterrcnn.data.images import SLICED_MAX_PIXELS

    sliced = inference is not None and inference.slice is not None
    if max_image_pixels is None:
        max_image_pixels = SLICED_MAX_PIXELS if sliced else DEFAULT_MAX_IMAGE_PIXELS
    options = {} if inference is None else {"slice": inference.slice, "overlap": inference.overlap, "full_image": inference.full_image, "tta": inference.tta}
    page = index_html()
    model_lock = threading.Lock()
    app = FastAPI(title="fasterrcnn", docs_url=None, redoc_url=None, openapi_url=None)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):  # 404, 405 ... as {"error": ...}
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(_RequestError)
    async def request_error(request, exc: _RequestError):
        return error(exc.status, exc.message)

    @app.exception_handler(Exception)
    async def unexpected_error(request, exc: Exception):  # still a JSON answer (the server logs the traceback)
        detail = " ".join(str(exc).split())[:300]
        return error(500, f"internal error ({type(exc).__name__}{': ' + detail if detail else ''})")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "classes": list(detector.class_names),
            "device": str(detector.device),
            "precision": detector.precision,
            "max_upload_bytes": max_upload_bytes,
        }

    def detect_locked(buffer: io.BytesIO, filename: str, score_threshold: float):
        with model_lock:  # one forward pass at a time
            try:
                return detector.detect(buffer, score_threshold=score_threshold, **options)
            except ModelOutputError as e:  # the model file's fault, not the upload's
                raise _RequestError(500, str(e)) from None
            except DataError as e:  # e.g. truncated pixel data behind a valid header
                raise _unreadable(filename, e) from None

    @app.post("/detect")
    async def detect(request: Request) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise _RequestError(415, "send the image as multipart/form-data, in the file field 'image'")
        max_body = max_upload_bytes + _MULTIPART_OVERHEAD
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_body:
            raise _RequestError(413, f"upload of {int(length)} bytes is over the limit of {max_upload_bytes} bytes")
        request = Request(request.scope, _limited_receive(request.receive, max_body, body_timeout))
        try:
            form = await request.form(max_files=1, max_fields=16)
        except HTTPException as e:  # malformed multipart body, too many parts
            raise _RequestError(400, f"malformed form: {e.detail}") from None
        try:
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise _RequestError(400, "no file in the form field 'image'")
            field = form.get("score_threshold")
            score_threshold = _parse_threshold(field if isinstance(field, str) else request.query_params.get("score_threshold"))
            filename = upload.filename or "upload"
            data = await upload.read(max_upload_bytes + 1)
        finally:
            await form.close()
        if len(data) > max_upload_bytes:
            raise _RequestError(413, f"{filename}: the file is over the limit of {max_upload_bytes} bytes")
        if not data:
            raise _RequestError(400, f"{filename}: the file is empty")
        buffer, width, height = await run_in_threadpool(_check_upload, data, filename, max_image_pixels)
        detections = await run_in_threadpool(detect_locked, buffer, filename, score_threshold)
        return JSONResponse(
            {
                "detections": [d.to_dict() for d in detections],
                "width": width,
                "height": height,
                "score_threshold": score_threshold,
            }
        )

    return app


def run(
    weights: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    device: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    precision: str = "auto",
    preset: str | None = None,
    classes: Sequence[str] | str | None = None,
    inference: "InferenceOptions | None" = None,
) -> None:
    """Load ``weights`` and serve it on http://host:port until interrupted (``precision``: as Detector's;
    ``inference``: as ``create_app``'s).

    ``weights``: a checkpoint written by ``fasterrcnn train``, or with ``preset`` a torchvision detection
    weights file, whose ``classes`` are "coco" (the default) or the class names (as ``runs.predict``).
    """
    try:
        import uvicorn
    except ImportError:
        raise ConfigError(_MISSING_DEPENDENCIES) from None
    from fasterrcnn.runs.inference import load_detector

    check_port(host, port)  # before the model is loaded, and before "serving on" is printed
    detector = load_detector(weights, device=device, precision=precision, preset=preset, classes=classes)
    app = create_app(detector, max_upload_bytes=max_upload_bytes, inference=inference)
    where = f"{detector.device}, {detector.precision}"
    print(f"serving {Path(weights).name} ({len(detector.class_names)} classes, {where}) on http://{host}:{port}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info", **uvicorn_options())


def check_port(host: str, port: int) -> None:
    """ConfigError unless a server can listen on ``host``:``port`` now (a socket is bound there and closed,
    with SO_REUSEADDR as uvicorn binds it)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, OverflowError, UnicodeError) as e:
        raise ConfigError(f"--host {host} --port {port}: not an address to listen on ({e})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is in use by another program: stop it or choose another --port") from None
            raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None


def uvicorn_options(header_timeout: float = DEFAULT_HEADER_TIMEOUT, keep_alive: int = DEFAULT_KEEP_ALIVE) -> dict:
    """Keyword arguments of ``uvicorn.run`` / ``uvicorn.Config`` that bound how long a connection is held:
    idle between requests ``keep_alive`` seconds (uvicorn's ``timeout_keep_alive``), and a request's
    headers must arrive within ``header_timeout`` seconds of the connection or of the previous answer
    (uvicorn has no such limit: its h11 protocol is extended here)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        """uvicorn's h11 protocol closing a connection whose request headers are not complete in time."""

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._header_deadline = self.loop.call_later(header_timeout, self._headers_too_late)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            waiting = self.cycle is None or self.cycle.response_complete  # for (the rest of) a request's headers
            if waiting and self._header_deadline is None:
                self._header_deadline = self.loop.call_later(header_timeout, self._headers_too_late)
            elif not waiting and self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def connection_lost(self, exc) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
            super().connection_lost(exc)

        def _headers_too_late(self) -> None:
            self._header_deadline = None
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

    return {"http": HeaderDeadlineProtocol, "timeout_keep_alive": keep_alive}

