"""Image files -> ``Tensor[3, H, W]`` float32 RGB in [0, 1].

Every image is decoded by Pillow and normalised to three RGB channels the same way:

- the EXIF orientation tag is applied (``ImageOps.exif_transpose``), so the tensor is the image
  as a viewer shows it, and ``image_size`` reports the rotated ``(height, width)``
  (``load_annotated_image`` falls back to the stored grid when the annotation's size says so;
  ``check_image`` warns once per file whose orientation that size cannot resolve);
- grayscale (``1``, ``L``, ``LA``) is repeated into three channels;
- 16-bit grayscale (``I;16*``, and ``I`` holding values in [0, 65535] as 16-bit PNGs decode) is
  divided by 65535; other ``I`` images (32-bit integers) are clipped at 0 and divided by
  2**31 - 1; ``F`` (float) images are taken as already in [0, 1] and clipped;
- the alpha channel (``RGBA``, ``LA``, ``PA``, palette transparency) is dropped, keeping the
  stored colour, as ``PIL.Image.convert("RGB")``, OpenCV and torchvision's RGB decoding do;
- palette, CMYK and YCbCr images are converted with Pillow's ``convert("RGB")``;
- multi-frame files (GIF, TIFF) give their first frame.

A file that is missing, empty, truncated or not an image raises ``DataError(path, problem)``:
one line, no traceback. Pillow decodes lazily, so the pixels are forced (``.load()``) inside
the ``try``.

Memory. 8-bit images become float32 through one tensor allocation (no NumPy float temporaries).
``load_image(path, reduce=f)`` decodes an image at ``1/f`` of its size (``f`` a power of two, each
side ``ceil(side / f)``): a JPEG in the decoder itself (libjpeg's DCT scaling, ``Image.draft``, up
to 1/8), anything else (and the rest of a larger ``f``) by box averaging (``Image.reduce``) before
any float copy. ``reduction_factor`` picks the largest ``f`` that keeps the image at least as large
as the model's resize of it (``min_size`` / ``max_size``), so a 8000x6000 photo never exists as a
576 MB float tensor on its way to a 1000 px model input.

``check_image`` verifies a file without decoding its pixels (datasets call it for every image at
construction): it exists, is not empty, has a readable header, has the size its annotation says,
and a JPEG / PNG ends with its end marker (else it is decoded once to tell a truncated file from
trailing bytes).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from fasterrcnn.errors import DataError

_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # the orientations that swap width and height
# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose)
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"\x00\x00\x00\x00IEND\xaeB`\x82"}
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _read_error(path, exc: BaseException) -> DataError:
    if isinstance(exc, FileNotFoundError):
        return DataError(path, "image file not found")
    if isinstance(exc, IsADirectoryError):
        return DataError(path, "is a directory, not an image file")
    if isinstance(exc, PermissionError):
        return DataError(path, "image file is not readable (permission denied)")
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DataError(path, f"cannot read image ({detail})")


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    """A decoded Pillow image -> array [H, W, 3]: uint8 (0..255) for 8-bit modes, else float32 in [0, 1]."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(im).astype(np.float64)
        if mode == "I" and (values.min(initial=0) < 0 or values.max(initial=0) > 65535):
            values = np.clip(values, 0, None) / (2**31 - 1)
        else:
            values = values / 65535.0
        gray = values.astype(np.float32)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("P", "PA"):
        # Palette transparency converts reliably only through RGBA; the alpha is then dropped.
        im = im.convert("RGBA")
    if mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8)


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    """[H, W, 3] uint8 (0..255) or float32 ([0, 1]) -> contiguous float32 ``Tensor[3, H, W]`` in [0, 1].

    uint8 is converted with a single float allocation (x / 255 in float32, the same values as
    NumPy's ``astype(np.float32) / 255.0``).
    """
    with warnings.catch_warnings():
        # Pillow's arrays are read-only; this tensor is only read from.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        hwc = torch.from_numpy(np.ascontiguousarray(array))
    out = torch.empty((3, array.shape[0], array.shape[1]), dtype=torch.float32)
    out.copy_(hwc.permute(2, 0, 1))
    if array.dtype == np.uint8:
        out.div_(255)
    return out


def _reducible(im: Image.Image) -> Image.Image:
    """``im`` in a mode that ``Image.reduce`` averages like ``_to_rgb_array`` reads it (alpha dropped first)."""
    if im.mode in ("L", "RGB", "I", "F", "CMYK", "YCbCr"):
        return im
    if im.mode.startswith("I;16"):
        return im.convert("I")
    if im.mode == "1":
        return im.convert("L")
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    return im.convert("RGB")


def reduction_factor(size: tuple[int, int], min_size: int, max_size: int) -> int:
    """The largest power of two ``f`` with the image of ``size`` (h, w) reduced by ``f`` still at least
    as large as its resize to short side ``min_size`` / long side at most ``max_size`` (1: no reduction).

    ``load_image(path, reduce=f)`` then gives the model an image that its transform only shrinks.
    """
    height, width = size
    if height <= 0 or width <= 0:
        return 1
    scale = min(min_size / min(height, width), max_size / max(height, width))
    factor = 1
    while factor * 2 * scale <= 1.0:
        factor *= 2
    return factor


def load_image(path, *, apply_exif: bool = True, reduce: int = 1) -> torch.Tensor:
    """Decode an image file to ``Tensor[3, H, W]`` float32 RGB in [0, 1].

    The EXIF orientation is applied unless ``apply_exif=False`` (the stored pixel grid).
    ``reduce=f`` (a power of two) decodes the image at ``1/f`` of its size, each side
    ``ceil(side / f)`` (see the module docstring); 1 decodes it whole.
    Raises ``DataError(path, problem)`` for a missing, empty, truncated or unreadable file.
    """
    if reduce < 1 or reduce & (reduce - 1):
        raise ValueError(f"reduce must be a power of two >= 1, got {reduce}")
    try:
        with warnings.catch_warnings():
            # Pillow warns about palette transparency stored as bytes; the alpha is dropped anyway.
            warnings.simplefilter("ignore", UserWarning)
            with Image.open(path) as im:
                if reduce == 1:
                    im.load()
                    if apply_exif:
                        im = ImageOps.exif_transpose(im)
                else:
                    im = _decode_reduced(im, reduce, apply_exif)
                array = _to_rgb_array(im)
                del im
    except _READ_ERRORS as exc:
        raise _read_error(path, exc) from None
    return _to_tensor(array)


def _decode_reduced(im: Image.Image, reduce: int, apply_exif: bool) -> Image.Image:
    """Decode ``im`` (just opened) at ``1/reduce`` of its size, then apply its EXIF orientation."""
    width, height = im.size
    orientation = im.getexif().get(_EXIF_ORIENTATION, 1) if apply_exif else 1
    target = (math.ceil(width / reduce), math.ceil(height / reduce))
    done = 1  # the scale the decoder applied
    if im.format == "JPEG":
        drafted = im.draft(im.mode, target)  # the decoder scales by 1/2, 1/4 or 1/8 while decoding
        if drafted is not None:
            done = round(width / drafted[1][2])
    im.load()
    if reduce > done:
        im = _reducible(im).reduce(reduce // done)
    transpose = _ORIENTATION_TRANSPOSE.get(orientation)
    return im.transpose(transpose) if transpose is not None else im


def load_annotated_image(path, size: tuple[int, int], annotation) -> torch.Tensor:
    """``load_image`` for an image whose annotation file says it is ``size = (h, w)``.

    Annotation tools disagree on EXIF orientation: when the oriented image has ``size`` with
    height and width swapped but the stored pixel grid matches, the annotation refers to the
    stored grid and that is returned. Any other disagreement raises ``DataError`` naming the
    image and the ``annotation`` file.
    """
    image = load_image(path)
    if _use_stored_grid(tuple(image.shape[1:]), size):
        image = load_image(path, apply_exif=False)
    _check_annotated_size(path, tuple(image.shape[1:]), size, annotation)
    return image


def _use_stored_grid(oriented: tuple[int, int], size: tuple[int, int]) -> bool:
    """Whether an annotation of ``size`` (h, w) refers to the stored grid of an image shown as ``oriented``."""
    return tuple(oriented) == (size[1], size[0]) and size[0] != size[1]


_warned_orientations: set[str] = set()  # files warned about by _warn_ambiguous_orientation


def _warn_ambiguous_orientation(path, orientation: int, annotation) -> None:
    """One warning per file whose EXIF ``orientation`` changes the pixel grid while the annotated
    size is the same on both grids (orientations 2-4, or 5-8 of a square image): its boxes are read
    on the image as shown, and would be wrong if they were drawn on the stored pixels."""
    if orientation not in _ORIENTATION_TRANSPOSE or str(path) in _warned_orientations:
        return
    _warned_orientations.add(str(path))
    logging.getLogger("fasterrcnn").warning(
        "%s: EXIF orientation %d, and the size in %s fits both the stored and the shown pixels: "
        "its boxes are read on the image as shown (upright); they are wrong if they were drawn on the stored pixels",
        path, orientation, Path(annotation).name if annotation is not None else "the annotation",
    )  # fmt: skip


def _check_annotated_size(path, actual: tuple[int, int], size: tuple[int, int], annotation) -> None:
    if tuple(actual) != tuple(size):
        raise DataError(
            path,
            f"is {actual[0]}x{actual[1]} (h x w, after EXIF orientation) "
            f"but {Path(annotation).name} says {size[0]}x{size[1]}",
        )


def check_image(path, size: tuple[int, int] | None = None, annotation=None) -> tuple[int, int]:
    """Check an image file without decoding it (see the module docstring); returns its ``(h, w)``.

    With ``size`` (the annotation's (h, w)) and ``annotation`` (the file that says it), the size
    is checked as ``load_annotated_image`` checks it, and ``size`` is returned. Raises
    ``DataError(path, problem)``: missing, empty (0 bytes), not an image, truncated, wrong size.
    """
    try:
        if os.stat(path).st_size == 0:
            raise DataError(path, "image file is empty (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            with Image.open(path) as im:
                stored, oriented = _header_sizes(im)
                if size is not None and stored == oriented:  # the size cannot tell the grids apart
                    _warn_ambiguous_orientation(path, im.getexif().get(_EXIF_ORIENTATION, 1), annotation)
                marker = _END_MARKERS.get(im.format)
                if marker is not None and not _ends_with(path, marker):
                    im.load()  # truncated (raises), or valid with bytes after the end marker
    except _READ_ERRORS as exc:
        raise _read_error(path, exc) from None
    if size is None:
        return oriented
    actual = stored if _use_stored_grid(oriented, size) else oriented
    _check_annotated_size(path, actual, size, annotation)
    return tuple(size)


def _ends_with(path, marker: bytes) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < len(marker):
            return False
        f.seek(-len(marker), os.SEEK_END)
        return f.read() == marker


def image_size(path) -> tuple[int, int]:
    """``(height, width)`` of an image file as ``load_image`` returns it, read from the header only.

    The EXIF orientation is respected (orientations 5-8 swap height and width).
    """
    try:
        with Image.open(path) as im:
            return _header_sizes(im)[1]
    except _READ_ERRORS as exc:
        raise _read_error(path, exc) from None


def _header_sizes(im: Image.Image) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(h, w)`` of an opened image's stored pixel grid, and after its EXIF orientation (5-8 swap them)."""
    width, height = im.size
    stored = (height, width)
    oriented = (width, height) if im.getexif().get(_EXIF_ORIENTATION, 1) in _TRANSPOSING_ORIENTATIONS else stored
    return stored, oriented


__all__ = ["check_image", "image_size", "load_annotated_image", "load_image", "reduction_factor"]
