"""Registered weight files: names to cached files, the opt-in download (from a server on 127.0.0.1), the warning.

The downloads are served by ``http.server`` on the loopback interface, in a thread of the test; the
registry's entries are replaced by ones whose URL points there. No other network is used.
"""

from __future__ import annotations

import hashlib
import http.server
import logging
import re
import threading
from urllib.parse import urlsplit

import pytest
import torch
from torchvision_reference import index, key_layout

from fasterrcnn import pretrained
from fasterrcnn.config import PRESETS
from fasterrcnn.errors import ConfigError, DataError
from fasterrcnn.pretrained import COCO_DETECTOR, IMAGENET_BACKBONE, PRETRAINED, PretrainedFile, resolve_weights, warn_untrained_backbone


# -- a file server on 127.0.0.1 ---------------------------------------------------------------------------
class Server:
    """Serves ``files[path] = bytes``; ``announce[path]`` overrides the Content-Length; counts requests."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.announce: dict[str, int] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(server.announce.get(self.path, len(body))))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def caches(tmp_path, monkeypatch):
    """Empty cache folders of our own and of torch.hub; downloads not allowed by the environment."""
    monkeypatch.setenv("FASTERRCNN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("FASTERRCNN_DOWNLOAD", raising=False)
    return tmp_path / "home" / "weights"


def serve_as(server, monkeypatch, name: str, body: bytes, *, stem: str = "file", prefix: str | None = None) -> PretrainedFile:
    """Register ``name`` as a file served at 127.0.0.1 whose name carries ``prefix`` (default: its true hash)."""
    prefix = prefix or hashlib.sha256(body).hexdigest()[:8]
    path = f"/models/{stem}-{prefix}.pth"
    server.files[path] = body
    old = PRETRAINED[name]
    entry = PretrainedFile(name, server.url(path), old.kind, old.fits, old.accuracy)
    monkeypatch.setitem(PRETRAINED, name, entry)
    return entry


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- the registry ------------------------------------------------------------------------------------------
def test_every_registered_file_is_torchvisions_and_fits_existing_backbones_and_presets():
    backbones = {preset.model.backbone for preset in PRESETS.values()}
    for name, entry in PRETRAINED.items():
        assert entry.name == name
        assert re.fullmatch(r"https://download\.pytorch\.org/models/[a-z0-9_]+-[0-9a-f]{8}\.pth", entry.url), entry.url
        assert re.fullmatch(r"[0-9a-f]{8}", entry.hash_prefix) and entry.filename.endswith(f"-{entry.hash_prefix}.pth")
        if entry.kind == IMAGENET_BACKBONE:
            assert set(entry.fits) <= backbones and name in index(), name  # a classification layout of the reference
            assert re.fullmatch(r"ImageNet acc@1 \d\d\.\d{3}, acc@5 \d\d\.\d{3}", entry.accuracy)
        else:
            assert entry.kind == COCO_DETECTOR and len(entry.fits) == 1 and entry.fits[0] in PRESETS, name
            assert re.fullmatch(r"COCO val2017 box AP \d\d\.\d", entry.accuracy)
    # every preset whose backbone is made for ImageNet weights has its file; tiny has none
    for preset in PRESETS.values():
        found = pretrained.imagenet_file_for(preset.model.backbone)
        assert (found is None) == (preset.model.backbone == "tiny"), preset.name
    assert PRETRAINED["resnet50"].filename == "resnet50-0676ba61.pth" and PRETRAINED["resnet50"].hash_prefix == "0676ba61"
    assert PRETRAINED["fasterrcnn_resnet50_fpn_coco"].fits == ("resnet50_fpn",)


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    assert pretrained.cache_dir() == tmp_path / "home" / "weights"
    monkeypatch.delenv("FASTERRCNN_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pretrained.cache_dir() == tmp_path / "xdg" / "fasterrcnn" / "weights"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert pretrained.cache_dir() == tmp_path / "user" / ".cache" / "fasterrcnn" / "weights"


# -- resolving names and paths -----------------------------------------------------------------------------
def test_a_path_is_returned_as_it_is(tmp_path):
    assert resolve_weights(tmp_path / "vgg16") == tmp_path / "vgg16"  # a Path is never a name
    assert resolve_weights("some/file.pth") == pretrained.Path("some/file.pth")


def test_a_name_missing_from_the_caches_is_not_downloaded_unasked(server, monkeypatch, caches):
    entry = serve_as(server, monkeypatch, "vgg16", b"weights")
    with pytest.raises(DataError) as info:
        resolve_weights("vgg16")
    message = str(info.value)
    assert message.startswith(f"{caches / entry.filename}: 'vgg16' is not downloaded yet; allow the download with FASTERRCNN_DOWNLOAD=1, or save {entry.url} there")
    assert entry.url in message and "\n" not in message
    assert server.requests == [] and leftovers(caches) == []


def test_cached_files_are_used_from_our_cache_then_from_torch_hubs(server, monkeypatch, caches, tmp_path):
    entry = serve_as(server, monkeypatch, "resnet50", b"resnet")
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / entry.filename).write_bytes(b"from torchvision")
    assert resolve_weights("resnet50") == hub / entry.filename
    caches.mkdir(parents=True)
    (caches / entry.filename).write_bytes(b"ours")
    assert resolve_weights("resnet50", download=True) == caches / entry.filename
    assert server.requests == []


@pytest.mark.parametrize("allow", ["argument", "environment"])
def test_an_allowed_download_lands_in_the_cache_once(server, monkeypatch, caches, allow):
    body = bytes(range(256)) * 5000  # 1.28 MB: more than one read of the stream
    entry = serve_as(server, monkeypatch, "mobilenet_v3_large", body)
    if allow == "environment":
        monkeypatch.setenv("FASTERRCNN_DOWNLOAD", "1")
    kwargs = {"download": True} if allow == "argument" else {}
    path = resolve_weights("mobilenet_v3_large", **kwargs)
    assert path == caches / entry.filename and path.read_bytes() == body
    assert leftovers(caches) == [entry.filename]  # no temporary file left
    assert resolve_weights("mobilenet_v3_large", **kwargs) == path
    assert len(server.requests) == 1  # the second call found the cached file


def test_a_download_with_the_wrong_hash_leaves_nothing(server, monkeypatch, caches):
    entry = serve_as(server, monkeypatch, "vgg16", b"tampered bytes", prefix="0123abcd")
    with pytest.raises(DataError) as info:
        resolve_weights("vgg16", download=True)
    digest = hashlib.sha256(b"tampered bytes").hexdigest()
    assert str(info.value) == (
        f"{entry.url}: downloaded {entry.filename} has SHA-256 {digest[:16]}..., which does not start with "
        "0123abcd as its name says (corrupted or replaced); nothing was saved"
    )
    assert leftovers(caches) == []


def test_a_download_cut_short_leaves_nothing(server, monkeypatch, caches):
    entry = serve_as(server, monkeypatch, "vgg16", b"x" * 1000)
    server.announce[urlsplit(entry.url).path] = 5000  # the server promises more bytes than it sends, then closes
    with pytest.raises(DataError) as info:
        resolve_weights("vgg16", download=True)
    assert str(info.value).startswith(f"{entry.url}: download of {entry.filename} ")
    assert "1000" in str(info.value) and leftovers(caches) == []


def test_no_server_and_http_errors_are_one_line_naming_url_and_file(server, monkeypatch, caches):
    entry = serve_as(server, monkeypatch, "resnet101", b"r101")
    server.files.clear()  # 404
    with pytest.raises(DataError) as info:
        resolve_weights("resnet101", download=True)
    assert str(info.value) == f"{entry.url}: download of {entry.filename} failed: HTTP 404 Not Found"
    port = server.httpd.server_address[1]
    server.close()  # nothing listens on the port any more
    with pytest.raises(DataError) as info:
        resolve_weights("resnet101", download=True)
    message = str(info.value)
    assert message.startswith(f"http://127.0.0.1:{port}/models/{entry.filename}: cannot download {entry.filename} (no network? ")
    assert message.endswith(f"save it by hand as {caches / entry.filename}") and "\n" not in message
    assert leftovers(caches) == []


def test_a_name_is_checked_against_what_it_is_loaded_into():
    with pytest.raises(ConfigError, match=r"'vgg16' does not fit backbone 'resnet50_fpn': it is the ImageNet file of backbone\(s\) vgg16"):
        resolve_weights("vgg16", kind=IMAGENET_BACKBONE, fits="resnet50_fpn")
    with pytest.raises(ConfigError, match=r"is a COCO detector file, not a ImageNet backbone file; it is the COCO detector of preset resnet50_fpn"):
        resolve_weights("fasterrcnn_resnet50_fpn_coco", kind=IMAGENET_BACKBONE)


# -- the model and the detector take names -----------------------------------------------------------------
def test_from_preset_downloads_and_loads_a_named_backbone(server, monkeypatch, caches, tmp_path):
    from fasterrcnn.modeling.faster_rcnn import FasterRCNN

    # torchvision's vgg16 layout with a shrunk classifier (fc6/fc7 16 wide), as a file served locally
    shrunk = {"classifier.0.weight": [16, 512], "classifier.0.bias": [16], "classifier.3.weight": [16, 16], "classifier.3.bias": [16], "classifier.6.weight": [1000, 16]}
    g = torch.Generator().manual_seed(0)
    state = {key: torch.randn(shrunk.get(key, shape), generator=g) for key, shape, _ in key_layout("vgg16")}
    torch.save(state, tmp_path / "vgg.pth")
    serve_as(server, monkeypatch, "vgg16", (tmp_path / "vgg.pth").read_bytes(), stem="vgg16")
    small = dict(num_classes=3, representation_size=16, box_pool_size=1)
    with pytest.raises(DataError, match="not downloaded yet"):
        FasterRCNN.from_preset("vgg16", backbone_weights="vgg16", **small)
    model = FasterRCNN.from_preset("vgg16", backbone_weights="vgg16", download=True, **small)
    assert torch.equal(model.backbone.features[28].weight, state["features.28.weight"])
    assert torch.equal(model.roi_heads.box_head.fc7.bias, state["classifier.3.bias"])
    with pytest.raises(ConfigError, match="'vgg16' does not fit backbone 'tiny'"):
        FasterRCNN.from_preset("tiny", backbone_weights="vgg16", download=True)
    assert len(server.requests) == 1


def test_detector_from_torchvision_takes_a_registered_detector_name(server, monkeypatch, tmp_path):
    from fasterrcnn.detector import Detector
    from fasterrcnn.modeling.faster_rcnn import FasterRCNN

    model = FasterRCNN.from_preset("mobilenet_v3_large_320_fpn", num_classes=2)
    torch.save(model.state_dict(), tmp_path / "det.pth")
    serve_as(server, monkeypatch, "fasterrcnn_mobilenet_v3_large_320_fpn_coco", (tmp_path / "det.pth").read_bytes(), stem="det")
    with pytest.raises(ConfigError, match="does not fit preset 'mobilenet_v3_large_fpn'"):
        Detector.from_torchvision("mobilenet_v3_large_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn_coco", classes=["a", "b"], download=True)
    detector = Detector.from_torchvision("mobilenet_v3_large_320_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn_coco", classes=["a", "b"], device="cpu", download=True)
    assert list(detector.class_names) == ["a", "b"]
    loaded = detector.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


# -- the warning -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_an_untrained_imagenet_backbone_is_warned_about(preset, caplog):
    backbone = PRESETS[preset].model.backbone
    with caplog.at_level(logging.WARNING, logger="fasterrcnn"):
        warned = warn_untrained_backbone(backbone, None)
        assert not warn_untrained_backbone(backbone, "weights.pth")
    if backbone == "tiny":
        assert not warned and caplog.records == []
        return
    (record,) = caplog.records
    name = pretrained.imagenet_file_for(backbone).name
    assert warned and record.levelno == logging.WARNING and record.name == "fasterrcnn"
    text = record.getMessage()
    assert text.startswith(f"UNTRAINED BACKBONE: the {backbone} backbone starts from RANDOM weights, not from ImageNet.")
    assert f"--backbone-weights {name} " in text and "FASTERRCNN_DOWNLOAD=1" in text
