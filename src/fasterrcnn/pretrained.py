"""Pretrained weight files by name: torchvision's ImageNet backbones and COCO detectors, cached on disk.

``--backbone-weights vgg16`` (``FasterRCNN.from_preset(..., backbone_weights="vgg16")``) and
``predict --preset resnet50_fpn --weights fasterrcnn_resnet50_fpn_coco`` name a file of ``PRETRAINED``;
anything else is read as a path. ``resolve_weights`` turns either into a local file:

1. a path is returned as it is;
2. a name is looked up in the cache folder, ``$FASTERRCNN_HOME/weights`` (default
   ``$XDG_CACHE_HOME/fasterrcnn/weights``, i.e. ``~/.cache/fasterrcnn/weights``), then in torch's
   download folder ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch/hub/checkpoints``), where
   torchvision keeps the same files under the same names;
3. a name found in neither is downloaded only when asked to (``download=True``, or the environment
   variable ``FASTERRCNN_DOWNLOAD=1`` when ``download`` is None): nothing touches the network unasked.

A download streams into a temporary file beside its final name (with a progress bar), checks its
SHA-256, and only then is renamed into place, so a failed, interrupted or corrupted download leaves
nothing under the final name. The check is torch.hub's: torchvision publishes no full SHA-256 of
these files, only its first 8 hex digits, in the file name (``resnet50-0676ba61.pth``); the digest of
the downloaded bytes must start with them. Every failure is one ``DataError`` line naming the URL
and the file.

The URLs, file names and accuracies below are those of torchvision's ``*_Weights`` enums
(``torchvision/models/{vgg,resnet,mobilenetv3}.py`` ``IMAGENET1K_V1`` and
``torchvision/models/detection/faster_rcnn.py`` ``COCO_V1``). The ImageNet files are the V1 ones,
which torchvision's COCO detectors were trained from.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from fasterrcnn.errors import ConfigError, DataError
from fasterrcnn.io import atomic_save, remove_temp_files

__all__ = ["COCO_DETECTOR", "IMAGENET_BACKBONE", "PRETRAINED", "PretrainedFile", "cache_dir", "download_file", "imagenet_file_for", "resolve_weights", "warn_untrained_backbone"]

logger = logging.getLogger("fasterrcnn")

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.pth$")  # torch.hub's convention: <name>-<sha256 prefix>.pth
_CHUNK = 1 << 20
_TIMEOUT_S = 30.0  # per network operation (connect, each read), not for the whole download
_STALE_S = 4 * _TIMEOUT_S  # a partial download untouched this long is a killed download's leftover


@dataclass(frozen=True)
class PretrainedFile:
    """One published weights file.

    ``kind``: IMAGENET_BACKBONE (load with ``--backbone-weights``) or COCO_DETECTOR (load with
    ``predict --preset P --weights``). ``fits``: the backbones (``ModelConfig.backbone``) an
    ImageNet file loads into, or the presets a COCO detector is the model of. ``accuracy``: what
    torchvision reports for the file (ImageNet-1K acc@1 / acc@5, or COCO val2017 box AP).
    """

    name: str
    url: str
    kind: str
    fits: tuple[str, ...]
    accuracy: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]

    @property
    def hash_prefix(self) -> str:
        """The leading hex digits of the file's SHA-256, as written in its name."""
        match = _HASH_IN_NAME.search(self.filename)
        if match is None:
            raise ConfigError(f"{self.url}: the file name carries no SHA-256 prefix (<name>-<hex>.pth)")
        return match.group(1)


_MODELS = "https://download.pytorch.org/models/"
IMAGENET_BACKBONE = "ImageNet backbone"  # a PretrainedFile.kind: for --backbone-weights
COCO_DETECTOR = "COCO detector"  # a PretrainedFile.kind: a whole model, for --preset P --weights

PRETRAINED: dict[str, PretrainedFile] = {
    f.name: f
    for f in (
        PretrainedFile("vgg16", _MODELS + "vgg16-397923af.pth", IMAGENET_BACKBONE, ("vgg16",), "ImageNet acc@1 71.592, acc@5 90.382"),
        PretrainedFile("resnet50", _MODELS + "resnet50-0676ba61.pth", IMAGENET_BACKBONE, ("resnet50", "resnet50_fpn"), "ImageNet acc@1 76.130, acc@5 92.862"),
        PretrainedFile("resnet101", _MODELS + "resnet101-63fe2227.pth", IMAGENET_BACKBONE, ("resnet101",), "ImageNet acc@1 77.374, acc@5 93.546"),
        PretrainedFile("mobilenet_v3_large", _MODELS + "mobilenet_v3_large-8738ca79.pth", IMAGENET_BACKBONE, ("mobilenet_v3_large_fpn",), "ImageNet acc@1 74.042, acc@5 91.340"),
        PretrainedFile("fasterrcnn_resnet50_fpn_coco", _MODELS + "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth", COCO_DETECTOR, ("resnet50_fpn",), "COCO val2017 box AP 37.0"),
        PretrainedFile("fasterrcnn_mobilenet_v3_large_fpn_coco", _MODELS + "fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth", COCO_DETECTOR, ("mobilenet_v3_large_fpn",), "COCO val2017 box AP 32.8"),
        PretrainedFile("fasterrcnn_mobilenet_v3_large_320_fpn_coco", _MODELS + "fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth", COCO_DETECTOR, ("mobilenet_v3_large_320_fpn",), "COCO val2017 box AP 22.8"),
    )
}


def cache_dir() -> Path:
    """Where downloaded files are kept: ``$FASTERRCNN_HOME/weights``, else ``$XDG_CACHE_HOME/fasterrcnn/weights``,
    else ``~/.cache/fasterrcnn/weights``."""
    home = os.environ.get("FASTERRCNN_HOME")
    if not home:
        home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fasterrcnn"
    return Path(home).expanduser() / "weights"


def _torch_hub_dir() -> Path:
    """torch.hub's download folder (``torch.hub.get_dir()`` + ``/checkpoints``), where torchvision's files land."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _downloads_allowed(download: bool | None) -> bool:
    if download is not None:
        return download
    return os.environ.get("FASTERRCNN_DOWNLOAD", "").strip().lower() in ("1", "true", "yes")


def resolve_weights(name_or_path: str | os.PathLike, *, download: bool | None = None, kind: str | None = None, fits: str | None = None) -> Path:
    """The local file of a registered name (see the module docstring) or the given path.

    ``download``: may a registered file missing from the caches be downloaded (None: only when
    ``FASTERRCNN_DOWNLOAD=1``). ``kind`` (IMAGENET_BACKBONE or COCO_DETECTOR) and ``fits`` (a
    backbone or preset name) check a registered name before anything is read or downloaded, with a
    ConfigError saying which file goes where. A path is not checked here (the loader checks its
    keys). Raises DataError when a registered file is missing and may not, or cannot, be downloaded.
    """
    if isinstance(name_or_path, os.PathLike) or str(name_or_path) not in PRETRAINED:
        return Path(name_or_path)
    entry = PRETRAINED[str(name_or_path)]
    if kind is not None and entry.kind != kind:
        raise ConfigError(f"{entry.name!r} is a {entry.kind} file, not a {kind} file; {_where_it_goes(entry)}")
    if fits is not None and fits not in entry.fits:
        raise ConfigError(f"{entry.name!r} does not fit {'backbone' if entry.kind == IMAGENET_BACKBONE else 'preset'} {fits!r}: {_where_it_goes(entry)}")
    for folder in (cache_dir(), _torch_hub_dir()):
        if (folder / entry.filename).is_file():
            return folder / entry.filename
    target = cache_dir() / entry.filename
    if not _downloads_allowed(download):
        raise DataError(
            target,
            f"{entry.name!r} is not downloaded yet; allow the download with FASTERRCNN_DOWNLOAD=1, "
            f"or save {entry.url} there, or pass the file's path",
        )
    return download_file(entry, target.parent)


def download_file(entry: PretrainedFile, folder: str | os.PathLike, *, progress: bool = True) -> Path:
    """Download ``entry`` into ``folder`` (created) under its file name and return that path.

    The bytes go to a temporary file next to it and are renamed into place only when their SHA-256
    starts with ``entry.hash_prefix``. Raises DataError naming the URL and the file when the server
    cannot be reached, answers an error, sends fewer bytes than announced, or the hash differs.
    """
    from tqdm import tqdm

    target = Path(folder) / entry.filename
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(target.parent, f"cannot create the weights folder ({e.strerror or e})") from None
    # the hidden partial file of an earlier download that was killed (SIGKILL, power loss); a download in
    # progress writes at least every _TIMEOUT_S (or fails), so a file untouched for longer is a leftover
    remove_temp_files(target.parent, name=entry.filename, older_than=_STALE_S)
    expected = entry.hash_prefix
    request = urllib.request.Request(entry.url, headers={"User-Agent": "fasterrcnn"})

    def fetch(file) -> None:
        try:
            response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
        except urllib.error.HTTPError as e:
            raise DataError(entry.url, f"download of {entry.filename} failed: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise DataError(entry.url, f"cannot download {entry.filename} (no network? {reason}); save it by hand as {target}") from None
        with response:
            size = response.headers.get("Content-Length")
            size = int(size) if size and size.isdigit() else None
            digest, received = hashlib.sha256(), 0
            with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=entry.filename, disable=not progress or None, leave=False) as bar:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except (OSError, http.client.HTTPException) as e:  # connection reset, timeout, IncompleteRead
                        raise DataError(entry.url, f"download of {entry.filename} broke off after {received} bytes ({type(e).__name__}); nothing was saved") from None
                    if not chunk:
                        break
                    file.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if size is not None and received != size:
            raise DataError(entry.url, f"download of {entry.filename} ended after {received} of {size} bytes; nothing was saved")
        if not digest.hexdigest().startswith(expected):
            raise DataError(
                entry.url,
                f"downloaded {entry.filename} has SHA-256 {digest.hexdigest()[:16]}..., which does not start with "
                f"{expected} as its name says (corrupted or replaced); nothing was saved",
            )

    atomic_save(target, fetch)
    logger.info("downloaded %s to %s", entry.url, target)
    return target


def _where_it_goes(entry: PretrainedFile) -> str:
    if entry.kind == IMAGENET_BACKBONE:
        return f"it is the ImageNet file of backbone(s) {', '.join(entry.fits)} (--backbone-weights {entry.name})"
    return f"it is the COCO detector of preset {entry.fits[0]} (--preset {entry.fits[0]} --weights {entry.name})"


def imagenet_file_for(backbone: str) -> PretrainedFile | None:
    """The registered ImageNet file that ``backbone`` (``ModelConfig.backbone``) loads, if any."""
    return next((f for f in PRETRAINED.values() if f.kind == IMAGENET_BACKBONE and backbone in f.fits), None)


def warn_untrained_backbone(backbone: str, backbone_weights: str | os.PathLike | None) -> bool:
    """Warn, loudly, when a backbone made for ImageNet weights is about to be trained from random ones.

    Call it where a new training run builds its model (not when resuming one, nor for a model whose
    weights come from a checkpoint). Returns whether it warned: only for a backbone with a registered
    ImageNet file (vgg16, resnet50/101, their FPN, MobileNetV3; never ``tiny``) and no weights given.
    """
    entry = imagenet_file_for(backbone)
    if entry is None or backbone_weights is not None:
        return False
    logger.warning(
        "UNTRAINED BACKBONE: the %s backbone starts from RANDOM weights, not from ImageNet.\n"
        "    Faster R-CNN trained this way needs many times more iterations and reaches a far lower AP.\n"
        "    Start from ImageNet with --backbone-weights %s (torchvision's %s, kept in %s;\n"
        "    FASTERRCNN_DOWNLOAD=1 lets it be downloaded once), or pass the path of that file.",
        backbone, entry.name, entry.filename, cache_dir(),
    )  # fmt: skip
    return True
