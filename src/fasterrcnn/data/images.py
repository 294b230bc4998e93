"""Image files -> ``Tensor[3, H, W]`` float32 RGB in [0, 1].

Every image is decoded by Pillow and normalised to three RGB channels the same way:

- the EXIF orientation tag is applied (``ImageOps.exif_transpose``), so the tensor is the image
  as a viewer shows it, and ``image_size`` reports the rotated ``(height, width)``
  (``load_annotated_image`` falls back to the stored grid when the annotation's size says so);
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
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from fasterrcnn.errors import DataError

_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # the orientations that swap width and height


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
    """A decoded Pillow image -> float32 array [H, W, 3] in [0, 1]."""
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
    return np.asarray(im, dtype=np.uint8).astype(np.float32) / 255.0


def load_image(path, *, apply_exif: bool = True) -> torch.Tensor:
    """Decode an image file to ``Tensor[3, H, W]`` float32 RGB in [0, 1].

    The EXIF orientation is applied unless ``apply_exif=False`` (the stored pixel grid).
    Raises ``DataError(path, problem)`` for a missing, empty, truncated or unreadable file.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns about palette transparency stored as bytes; the alpha is dropped anyway.
            warnings.simplefilter("ignore", UserWarning)
            with Image.open(path) as im:
                im.load()
                if apply_exif:
                    im = ImageOps.exif_transpose(im)
                array = _to_rgb_array(im)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise _read_error(path, exc) from None
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def load_annotated_image(path, size: tuple[int, int], annotation) -> torch.Tensor:
    """``load_image`` for an image whose annotation file says it is ``size = (h, w)``.

    Annotation tools disagree on EXIF orientation: when the oriented image has ``size`` with
    height and width swapped but the stored pixel grid matches, the annotation refers to the
    stored grid and that is returned. Any other disagreement raises ``DataError`` naming the
    image and the ``annotation`` file.
    """
    image = load_image(path)
    if tuple(image.shape[1:]) == (size[1], size[0]) and size[0] != size[1]:
        image = load_image(path, apply_exif=False)
    if tuple(image.shape[1:]) != tuple(size):
        raise DataError(
            path,
            f"is {image.shape[1]}x{image.shape[2]} (h x w, after EXIF orientation) "
            f"but {Path(annotation).name} says {size[0]}x{size[1]}",
        )
    return image


def image_size(path) -> tuple[int, int]:
    """``(height, width)`` of an image file as ``load_image`` returns it, read from the header only.

    The EXIF orientation is respected (orientations 5-8 swap height and width).
    """
    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise _read_error(path, exc) from None
    if orientation in _TRANSPOSING_ORIENTATIONS:
        return width, height
    return height, width


__all__ = ["image_size", "load_annotated_image", "load_image"]
