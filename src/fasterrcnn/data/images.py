"""Image files -> ``Tensor[3, H, W]`` float32 RGB in [0, 1].

Every image is decoded by Pillow and normalised to three RGB channels the same way:

- the EXIF orientation tag is applied (the transposes of ``ImageOps.exif_transpose``), so the
  tensor is the image as a viewer shows it, and ``image_size`` reports the rotated ``(height, width)``
  (``load_annotated_image`` falls back to the stored grid when the annotation's size says so;
  ``check_image`` warns once per file whose orientation that size cannot resolve).
  The orientation is read from the header only, before any pixel is decoded: for a PNG that is an
  ``eXIf`` (or EXIF text / XMP) chunk before the pixel data, as browsers read it; one after the
  pixel data is ignored (Pillow's ``PngImageFile.getexif`` decodes the whole image to look for it);
- grayscale (``1``, ``L``, ``LA``) is repeated into three channels;
- 16-bit grayscale (``I;16*``, and ``I`` holding values in [0, 65535] as 16-bit PNGs decode) is
  divided by 65535; other ``I`` images (32-bit integers) are clipped at 0 and divided by
  2**31 - 1; ``F`` (float) images are taken as already in [0, 1] and clipped (NaN read as 0);
- the alpha channel (``RGBA``, ``LA``, ``PA``, palette transparency) is dropped, keeping the
  stored colour, as ``PIL.Image.convert("RGB")``, OpenCV and torchvision's RGB decoding do;
- palette, CMYK and YCbCr images are converted with Pillow's ``convert("RGB")``;
- multi-frame files (GIF, TIFF) give their first frame.

A file that is missing, empty, truncated, not an image, or whose EXIF block is malformed raises
``DataError(path, problem)``: one line, no traceback. Pillow's decoders raise many exception types on
damaged input (``OSError``, ``SyntaxError``, ``struct.error``, ``IndexError`` ...); every one of them
becomes a ``DataError``. Pillow decodes lazily, so the pixels are forced (``.load()``) inside the ``try``.
An image over Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, twice over) is refused
from its header, before decoding. So that the header can be trusted, only the ``FORMATS`` whose header
states the image's size are read (JPEG, PNG, GIF, BMP, TIFF, WebP, PPM): an ICO / CUR / ICNS icon
(Pillow decodes an ICO's largest image when it opens it) is refused from its first bytes, and a path
that is not a regular file (a named pipe would block the open) is refused from ``os.stat``.

Memory. 8-bit images become float32 through one tensor allocation (no NumPy float temporaries).
``load_image(path, reduce=f)`` decodes an image at ``1/f`` of its size (``f`` a power of two, each
side ``ceil(side / f)``): a JPEG in the decoder itself (libjpeg's DCT scaling, ``Image.draft``, up
to 1/8), anything else (and the rest of a larger ``f``) by box averaging (``Image.reduce``) before
any float copy. Pillow cannot decode a PNG reduced, so a non-interlaced 8-bit PNG is decoded in
strips of at most 8 MB, each reduced at once (``_png_reduced_by_strips``: the same pixels as reducing
the whole image); other PNGs (16-bit, 1/2/4-bit, interlaced) are decoded whole, then reduced.
``reduction_factor`` picks the largest ``f`` that keeps the image at least as large
as the model's resize of it (``min_size`` / ``max_size``), so a 8000x6000 photo never exists as a
576 MB float tensor on its way to a 1000 px model input.

``check_image`` verifies a file without decoding its pixels (datasets call it for every image at
construction): it exists, is not empty, has a readable header, has the size its annotation says,
and a JPEG / PNG ends with its end marker. Otherwise a PNG's chunks are walked to its ``IEND``
(``Image.verify``: checksums, no decompression) and a JPEG is decoded at 1/8 of its size, to tell a
truncated file from one with bytes after its end.
"""

from __future__ import annotations

import io
import logging
import math
import os
import struct
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fasterrcnn.data.transforms import resize_boxes
from fasterrcnn.errors import DataError
from fasterrcnn.reading import check_regular_file

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
# (min_size, max_size) that datasets decode for by default (torchvision's detection models' resize):
# a larger image is decoded at 1/2, 1/4 ... of its size while it stays at least this large.
DEFAULT_REDUCE_TO = (800, 1333)
# The largest image accepted at full resolution for sliced inference (load_image_uint8).
SLICED_MAX_PIXELS = 150_000_000
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_MODES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}  # colour type -> Pillow's mode at 8 bits
_PNG_STRIP_BYTES = 8 * 2**20  # full-size bytes of a strip of a PNG decoded reduced
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"\x00\x00\x00\x00IEND\xaeB`\x82"}


# The formats read: those whose header gives the image's size without decoding it. Pillow's ICO (and CUR)
# reader decodes the largest image of the file when it opens it, so a 400 KB icon holding a 13000x13000 PNG
# would be decoded whole before any size check: such containers are not read.
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "PPM")
_CONTAINER_SIGNATURES = {b"\x00\x00\x01\x00": "an ICO icon", b"\x00\x00\x02\x00": "a CUR cursor", b"icns": "an ICNS icon"}


def _open(path) -> Image.Image:
    """``Image.open(path, formats=FORMATS)``: a path that is not a regular file (a named pipe would block
    the open) and an icon container are refused before Pillow reads them (``DataError``)."""
    if isinstance(path, (str, os.PathLike)):
        check_regular_file(path)
        with open(path, "rb") as f:
            head = f.read(4)
    else:
        start = path.tell()
        head = path.read(4)
        path.seek(start)
    kind = _CONTAINER_SIGNATURES.get(head)
    if kind is not None:
        raise DataError(path, f"is {kind}, which is not read (its size is known only by decoding it): convert it to PNG or JPEG")
    return Image.open(path, formats=FORMATS)


def _read_error(path, exc: BaseException) -> DataError:
    if isinstance(exc, FileNotFoundError):
        return DataError(path, "image file not found")
    if isinstance(exc, IsADirectoryError):
        return DataError(path, "is a directory, not an image file")
    if isinstance(exc, PermissionError):
        return DataError(path, "image file is not readable (permission denied)")
    if isinstance(exc, UnidentifiedImageError):  # its text repeats the file name (or a buffer's repr)
        return DataError(path, "cannot read image (not an image, or a format Pillow cannot read)")
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DataError(path, f"cannot read image ({detail})")


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1..8) of an opened, not yet decoded image, from its header; 1 when absent.

    ``Image.Image.getexif`` (not a plugin's override) reads what ``Image.open`` found: for a PNG the
    chunks before the pixel data (``PngImageFile.getexif`` would decode the image to look further).
    """
    try:
        value = Image.Image.getexif(im).get(_EXIF_ORIENTATION, 1)
    except Exception as exc:  # struct.error, ValueError ... from a damaged EXIF block
        raise ValueError(f"malformed EXIF block: {exc or type(exc).__name__}") from None
    return value if isinstance(value, int) and value in _ORIENTATION_TRANSPOSE else 1


def _oriented(im: Image.Image, orientation: int) -> Image.Image:
    transpose = _ORIENTATION_TRANSPOSE.get(orientation)
    return im.transpose(transpose) if transpose is not None else im


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
        gray = np.clip(np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0), 0.0, 1.0)
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
            if reduce > 1:  # decoded reduced: large images are what this is for (the hard limit still holds)
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open(path) as im:
                orientation = _orientation(im) if apply_exif else 1
                array = _to_rgb_array(_oriented(_decode(im, reduce), orientation))
    except DataError:
        raise
    except Exception as exc:  # any failure of Pillow on a damaged file (see the module docstring)
        raise _read_error(path, exc) from None
    return _to_tensor(array)


def load_image_uint8(path, *, max_pixels: int = SLICED_MAX_PIXELS) -> torch.Tensor:
    """Decode an image file whole to ``Tensor[3, H, W]`` uint8 RGB (0..255), for sliced inference.

    Normalised as ``load_image`` (EXIF orientation, grayscale, alpha, palette); 16-bit and float
    images are quantised to 8 bits. The array is filled strip by strip from Pillow's decoded image, and the
    tensor is a channels-last view of it: no float copy of the image is made, and the peak is about twice
    the 8-bit image (Pillow's and the array; an EXIF rotation adds one more while it is applied). An image over ``max_pixels``
    (150 megapixels by default, a 12000 x 12000 aerial tile) is refused from its header, before
    decoding, with ``DataError``; below it Pillow's decompression-bomb warning is silenced.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open(path) as im:  # one open: the header's size is checked before any pixel is decoded
                height, width = _header_sizes(im)[1]
                if height * width > max_pixels:
                    megapixels = height * width / 1e6
                    raise DataError(path, f"the image is {width}x{height}, {megapixels:.0f} megapixels: more than the {max_pixels / 1e6:.0f} accepted")
                orientation = _orientation(im)
                array = _to_rgb_array_by_strips(_oriented(_decode(im, 1), orientation))
    except DataError:
        raise
    except Exception as exc:  # any failure of Pillow on a damaged file (see the module docstring)
        raise _read_error(path, exc) from None
    return torch.from_numpy(array).permute(2, 0, 1)


def _to_rgb_array_by_strips(im: Image.Image) -> np.ndarray:
    """A decoded image -> uint8 array [H, W, 3] filled strip by strip (``_to_rgb_array`` of each strip, 16-bit
    and float values quantised to 8 bits), so that besides Pillow's image and the array only one strip of
    ``_PNG_STRIP_BYTES`` exists (``np.asarray(im)`` would copy the whole image through ``tobytes``, twice)."""
    width, height = im.size
    out = np.empty((height, width, 3), dtype=np.uint8)
    rows = max(1, _PNG_STRIP_BYTES // (4 * 3 * width))
    for top in range(0, height, rows):
        strip = _to_rgb_array(im.crop((0, top, width, min(height, top + rows))))
        out[top : top + strip.shape[0]] = strip if strip.dtype == np.uint8 else np.round(strip * 255)
    return out


def _decode(im: Image.Image, reduce: int) -> Image.Image:
    """Decode ``im`` (just opened) at ``1/reduce`` of its size (1: whole)."""
    if reduce == 1:
        im.load()
        return im
    width, height = im.size
    target = (math.ceil(width / reduce), math.ceil(height / reduce))
    done = 1  # the scale the decoder applied
    if im.format == "JPEG":
        drafted = im.draft(im.mode, target)  # the decoder scales by 1/2, 1/4 or 1/8 while decoding
        if drafted is not None:
            done = round(width / drafted[1][2])
    elif im.format == "PNG" and _png_strip_decodable(im):
        return _png_reduced_by_strips(im, reduce)
    im.load()
    return _reducible(im).reduce(reduce // done) if reduce > done else im


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_strip_decodable(im: Image.Image) -> bool:
    """Whether ``_png_reduced_by_strips`` can decode the PNG ``im`` (its IHDR): 8 bits per sample (a
    decoded row is then its unfiltered bytes), not interlaced."""
    im.fp.seek(len(_PNG_SIGNATURE))
    length, kind = struct.unpack(">I4s", _read_exactly(im.fp, 8))
    if kind != b"IHDR" or length != 13:
        return False
    bit_depth, color_type, _, _, interlace = _read_exactly(im.fp, 13)[8:]
    return bit_depth == 8 and interlace == 0 and _PNG_MODES.get(color_type) == im.mode


def _png_reduced_by_strips(im: Image.Image, reduce: int) -> Image.Image:
    """A PNG (just opened, ``_png_strip_decodable``) decoded strip by strip, each strip reduced by ``reduce``
    as soon as it is decoded, so that at most ``_PNG_STRIP_BYTES`` of full-size rows exist at a time.

    Equal to ``_reducible(im).reduce(reduce)`` (a strip is a whole number of ``reduce`` rows, and box
    averaging reads one block at a time). The compressed rows are inflated here; every strip is
    handed to Pillow as a small PNG of its own: the header and palette chunks, the strip's rows, and
    before them the previous row as unfiltered bytes (filter type 0) for the filters that refer to it.
    """
    fp = im.fp
    fp.seek(len(_PNG_SIGNATURE))
    ihdr, palette = b"", b""
    while True:  # the chunks up to the first IDAT; its data is then read on demand
        length, kind = struct.unpack(">I4s", _read_exactly(fp, 8))
        if kind == b"IDAT":
            break
        data = _read_exactly(fp, length)
        fp.read(4)  # the checksum
        if kind == b"IHDR":
            ihdr = data
        elif kind in (b"PLTE", b"tRNS"):
            palette += _png_chunk(kind, data)
    width, height = im.size
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 1}[im.mode]
    stride = 1 + width * channels  # the filter-type byte, then the row
    rows_per_strip = max(reduce, _PNG_STRIP_BYTES // stride // reduce * reduce)
    inflate = zlib.decompressobj()
    pending, previous, out = bytearray(), None, None

    def compressed_pieces():
        nonlocal length
        while True:
            while length > 0:
                piece = _read_exactly(fp, min(length, 1 << 16))
                length -= len(piece)
                yield piece
            fp.read(4)  # the checksum
            length, kind = struct.unpack(">I4s", _read_exactly(fp, 8))
            if kind != b"IDAT":
                return

    pieces = compressed_pieces()
    for top in range(0, height, rows_per_strip):
        rows = min(rows_per_strip, height - top)
        while len(pending) < rows * stride:  # inflate no more than the strip needs
            piece = inflate.unconsumed_tail or next(pieces, b"")
            if not piece:
                raise OSError(f"image file is truncated (pixel data ends at row {top + len(pending) // stride})")
            pending += inflate.decompress(piece, rows * stride - len(pending))
        scanlines = bytes(pending[: rows * stride])
        del pending[: rows * stride]
        context = b"" if previous is None else b"\x00" + previous
        strip_png = (
            _PNG_SIGNATURE
            + _png_chunk(b"IHDR", struct.pack(">II", width, rows + (previous is not None)) + ihdr[8:])
            + palette
            + _png_chunk(b"IDAT", zlib.compress(context + scanlines, 0))
            + _png_chunk(b"IEND", b"")
        )  # fmt: skip
        with Image.open(io.BytesIO(strip_png)) as strip:
            strip.load()
            if previous is not None:
                strip = strip.crop((0, 1, width, rows + 1))
            previous = strip.crop((0, rows - 1, width, rows)).tobytes()
            reduced = _reducible(strip).reduce(reduce)
        if out is None:
            out = Image.new(reduced.mode, (math.ceil(width / reduce), math.ceil(height / reduce)))
        out.paste(reduced, (0, top // reduce))
    return out


def _read_exactly(fp, size: int) -> bytes:
    data = fp.read(size)
    if len(data) != size:
        raise OSError("image file is truncated")
    return data


def load_annotated_image(path, size: tuple[int, int], annotation, *, reduce_to: tuple[int, int] | None = None) -> torch.Tensor:
    """``load_image`` for an image whose annotation file says it is ``size = (h, w)``.

    Annotation tools disagree on EXIF orientation: when the oriented image has ``size`` with
    height and width swapped but the stored pixel grid matches, the annotation refers to the
    stored grid and that is returned. Any other disagreement raises ``DataError`` naming the
    image and the ``annotation`` file (checked from the header, before decoding).

    ``reduce_to = (min_size, max_size)`` of the model's resize: an image at least twice as large as
    that resize is decoded at 1/2, 1/4 ... of its size (``reduction_factor``), so the tensor is
    smaller than ``size``; boxes in the annotation's pixels scale to it with
    ``transforms.resize_boxes(boxes, size, tensor.shape[1:])``. None decodes the image whole.
    """
    stored, oriented = _read_header_sizes(path)
    apply_exif = not _use_stored_grid(oriented, size)
    _check_annotated_size(path, oriented if apply_exif else stored, size, annotation)
    reduce = 1 if reduce_to is None else reduction_factor(tuple(size), *reduce_to)
    return load_image(path, apply_exif=apply_exif, reduce=reduce)


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
        if check_regular_file(path).st_size == 0:
            raise DataError(path, "image file is empty (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # nothing is decompressed here
            with _open(path) as im:
                stored, oriented = _header_sizes(im)
                if size is not None and stored == oriented:  # the size cannot tell the grids apart
                    _warn_ambiguous_orientation(path, _orientation(im), annotation)
                marker = _END_MARKERS.get(im.format)
                if marker is not None and not _ends_with(path, marker):
                    _check_complete(im)
    except DataError:
        raise
    except Exception as exc:  # any failure of Pillow on a damaged file (see the module docstring)
        raise _read_error(path, exc) from None
    if size is None:
        return oriented
    actual = stored if _use_stored_grid(oriented, size) else oriented
    _check_annotated_size(path, actual, size, annotation)
    return tuple(size)


def _check_complete(im: Image.Image) -> None:
    """Raise if a PNG / JPEG without its end marker at the end of the file is truncated; return if it
    only has bytes after its end. Bounded work: a PNG's chunks are read (no decompression), a JPEG is
    decoded at 1/8 of its size."""
    if im.format == "PNG":
        im.verify()
        return
    width, height = im.size
    im.draft(im.mode, (math.ceil(width / 8), math.ceil(height / 8)))
    im.load()


def _ends_with(path, marker: bytes) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < len(marker):
            return False
        f.seek(-len(marker), os.SEEK_END)
        return f.read() == marker


def image_size(path) -> tuple[int, int]:
    """``(height, width)`` of an image file as ``load_image`` returns it, read from the header only.

    The EXIF orientation is respected (orientations 5-8 swap height and width). Never decodes pixels.
    """
    return _read_header_sizes(path)[1]


def _read_header_sizes(path) -> tuple[tuple[int, int], tuple[int, int]]:
    """``_header_sizes`` of the image file ``path``; ``DataError`` if it cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # nothing is decompressed here
            with _open(path) as im:
                return _header_sizes(im)
    except DataError:
        raise
    except Exception as exc:  # any failure of Pillow on a damaged file (see the module docstring)
        raise _read_error(path, exc) from None


def _header_sizes(im: Image.Image) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(h, w)`` of an opened image's stored pixel grid, and after its EXIF orientation (5-8 swap them)."""
    width, height = im.size
    stored = (height, width)
    oriented = (width, height) if _orientation(im) in _TRANSPOSING_ORIENTATIONS else stored
    return stored, oriented


# The image forms a caller may pass (``Detector.detect``, ``to_image_tensor``).
ImageInput = Union[str, Path, BinaryIO, Image.Image, np.ndarray, torch.Tensor]


def is_file_object(image: Any) -> bool:
    """A binary file object (e.g. ``open(path, "rb")``, ``io.BytesIO`` of an upload), read like a path."""
    return hasattr(image, "read") and hasattr(image, "seek") and hasattr(image, "tell")


@contextmanager
def position_kept(image: Any) -> Iterator[None]:
    """Restores a file object's position when the block ends (Pillow reads files from their start), so
    that the same object can be read again (e.g. by ``draw`` after ``detect``); paths pass through."""
    start = image.tell() if is_file_object(image) else None
    try:
        yield
    finally:
        if start is not None:
            image.seek(start)


def in_original_pixels(boxes: torch.Tensor, tensor: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """xyxy ``boxes`` on ``tensor`` [3, h, w] (an image decoded reduced) -> pixels of the original image of
    ``size`` (H, W); unchanged when ``size`` is None or the image was decoded whole."""
    return boxes if size is None else resize_boxes(boxes, tuple(tensor.shape[1:]), size)


def rgb_uint8(image: Image.Image | np.ndarray) -> torch.Tensor:
    """A PIL image (converted to RGB) or a uint8 NumPy array ``[H, W, 3]`` (RGB) -> uint8 ``Tensor[3, H, W]``, a
    view of the array unless it is read-only or has negative strides (e.g. ``array[:, ::-1]``); ValueError for
    another array."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a NumPy array [H, W, 3] of uint8 (RGB), got {image.dtype} array of shape {image.shape}")
    return torch.from_numpy(np.array(image, copy=True) if not image.flags.writeable or min(image.strides) < 0 else image).permute(2, 0, 1)


def to_image_tensor(image: ImageInput) -> torch.Tensor:
    """Any accepted image form -> float32 ``Tensor[3, H, W]`` RGB in [0, 1] (the forms ``fasterrcnn.detector.Detector.detect`` takes)."""
    if isinstance(image, (str, Path)) or is_file_object(image):
        with position_kept(image):
            return load_image(image)
    if isinstance(image, (Image.Image, np.ndarray)):
        return rgb_uint8(image).float() / 255.0  # a new tensor: the caller's array is never written
    if isinstance(image, torch.Tensor):
        if not image.is_floating_point() or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(
                f"expected a float Tensor[3, H, W] (RGB in [0, 1]), got {image.dtype} Tensor{list(image.shape)}"
                + ("; pass a batch as a list of images" if image.ndim == 4 else "")
            )
        if image.numel() and (image.min() < 0 or image.max() > 1):
            raise ValueError(f"expected image values in [0, 1], got [{float(image.min()):g}, {float(image.max()):g}] (divide uint8 values by 255)")
        return image
    raise TypeError(f"expected an image path, binary file object, PIL image, NumPy array or Tensor, got {type(image).__name__}")


__all__ = [
    "DEFAULT_REDUCE_TO",
    "SLICED_MAX_PIXELS",
    "ImageInput",
    "check_image",
    "image_size",
    "in_original_pixels",
    "is_file_object",
    "load_annotated_image",
    "load_image",
    "load_image_uint8",
    "position_kept",
    "rgb_uint8",
    "reduction_factor",
    "to_image_tensor",
]
