"""Damaged image files: every one of several thousand seeded mutations of small JPEG, PNG, TIFF, GIF,
WebP and BMP files (RGB, and 16-bit, palette-with-transparency and float variants) either decodes to
a float ``[3, H, W]`` tensor in [0, 1] or raises ``DataError``, through ``image_size``,
``check_image`` and ``load_image`` (whole and reduced).

Mutations: bit flips, overwritten bytes, truncations, inserted and deleted runs, damaged
structure (PNG chunk lengths and types, JPEG marker segments), a damaged EXIF block and header
size fields set huge.
"""

from __future__ import annotations

import io
import random
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from fasterrcnn.data.images import check_image, image_size, load_image
from fasterrcnn.errors import DataError

CASES_PER_SEED = 400  # 3600 cases in all
HUGE = (0xFFFF, 0x7FFF, 0x8000, 0xFFFFFFFF, 0x7FFFFFFF, 40_000, 100_000)


def seed_image() -> Image.Image:
    """20 x 14 pixels of a gradient and a rectangle: small files with every structure of their format."""
    y, x = np.mgrid[0:14, 0:20]
    pixels = np.stack([x * 12, y * 18, (x + y) * 7], axis=2).astype(np.uint8)
    pixels[3:9, 5:12] = (240, 30, 90)
    return Image.fromarray(pixels)


def encode(seed: str) -> tuple[str, bytes]:
    """The format and the bytes of the seed file ``seed`` ("FORMAT" or "FORMAT-variant")."""
    format, _, variant = seed.partition("-")
    image = seed_image()
    exif = image.getexif()
    exif[0x0112] = 6  # an EXIF orientation where the format can hold one: its parser is fuzzed too
    # JPEG: with the JFIF dpi set, Pillow leaves the EXIF block unread until asked
    options = {"JPEG": {"quality": 90, "exif": exif, "dpi": (72, 72)}, "PNG": {"exif": exif}, "WEBP": {"quality": 80, "exif": exif}}
    options = options.get(format, {})
    if variant == "palette":  # with a transparent colour
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        options["transparency"] = 3
    elif variant == "16bit":
        image = Image.fromarray((np.asarray(image.convert("L"), dtype=np.uint16) * 257))
    elif variant == "float":
        image = Image.fromarray(np.asarray(image.convert("L"), dtype=np.float32) / 255)
    elif format == "TIFF":
        options["compression"] = "tiff_lzw"
    elif format == "GIF":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return format, buffer.getvalue()


def size_fields(format: str, data: bytes) -> list[tuple[int, str]]:
    """(offset, struct format) of the width / height fields of ``data``'s header(s)."""
    if format == "PNG":
        return [(16, ">I"), (20, ">I")]
    if format == "BMP":
        return [(18, "<i"), (22, "<i")]
    if format == "GIF":
        fields = [(6, "<H"), (8, "<H")]
        descriptor = data.find(b"\x2c", 13)  # the first image descriptor (after the palette)
        return fields + ([(descriptor + 5, "<H"), (descriptor + 7, "<H")] if descriptor > 0 else [])
    if format == "JPEG":
        start = data.find(b"\xff\xc0")  # baseline start of frame: length, precision, height, width
        return [(start + 5, ">H"), (start + 7, ">H")]
    if format == "WEBP":
        vp8 = data.find(b"VP8 ")
        return [(vp8 + 14, "<H"), (vp8 + 16, "<H")] if vp8 > 0 else [(24, "<I")]
    if format == "TIFF":  # tags 256 (ImageWidth) and 257 (ImageLength) of the first IFD, little-endian
        ifd = struct.unpack_from("<I", data, 4)[0]
        count = struct.unpack_from("<H", data, ifd)[0]
        fields = []
        for i in range(count):
            entry = ifd + 2 + 12 * i
            tag, kind = struct.unpack_from("<HH", data, entry)
            if tag in (256, 257):
                fields.append((entry + 8, "<H" if kind == 3 else "<I"))
        return fields
    raise ValueError(format)


def exif_offsets(data: bytes) -> list[int]:
    """Offsets of the EXIF block (from its TIFF header on), or of the file's first 64 bytes if it has none."""
    start = max(data.find(b"MM\x00*"), data.find(b"II*\x00"))
    return list(range(start, min(start + 96, len(data)))) if start >= 0 else list(range(min(len(data), 64)))


def cut_exif(rng: random.Random, format: str, data: bytes) -> bytes | None:
    """``data`` with its EXIF block (JPEG APP1 segment, PNG eXIf chunk) cut short, lengths and checksum
    consistent; None for other formats."""
    if format == "JPEG" and (start := data.find(b"\xff\xe1")) >= 0:
        (length,) = struct.unpack_from(">H", data, start + 2)
        payload = data[start + 4 : start + 2 + length][: rng.randrange(length - 2)]
        return data[:start] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[start + 2 + length :]
    if format == "PNG" and (start := data.find(b"eXIf") - 4) >= 0:
        (length,) = struct.unpack_from(">I", data, start)
        payload = data[start + 8 : start + 8 + length][: rng.randrange(length)]
        chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
        return data[:start] + chunk + data[start + 12 + length :]
    return None


def structure_offsets(format: str, data: bytes) -> list[int]:
    """Offsets of structure bytes: PNG chunk lengths and types, JPEG marker segments' lengths."""
    if format == "PNG":
        offsets, position = [], 8
        while position + 8 <= len(data):
            offsets += range(position, position + 8)
            position += 12 + struct.unpack_from(">I", data, position)[0]
        return offsets
    if format == "JPEG":
        return [i + k for i in range(len(data) - 3) if data[i] == 0xFF and data[i + 1] not in (0x00, 0xFF) for k in (1, 2, 3)]
    return list(range(min(len(data), 64)))  # the header


def mutate(rng: random.Random, format: str, data: bytes) -> bytes:
    out = bytearray(data)
    kind = rng.randrange(7)
    if kind == 0:  # bit flips
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(len(out))
            out[position] ^= 1 << rng.randrange(8)
    elif kind == 1:  # overwritten bytes
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] = rng.choice((0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)))
    elif kind == 2:  # truncation
        del out[rng.randrange(len(out)) :]
    elif kind == 3:  # a run inserted or deleted
        position = rng.randrange(len(out))
        if rng.random() < 0.5:
            out[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
        else:
            del out[position : position + rng.randint(1, 32)]
    elif kind == 4:  # damaged structure
        offsets = structure_offsets(format, data)
        for _ in range(rng.randint(1, 3)):
            out[rng.choice(offsets)] = rng.randrange(256)
    elif kind == 5 and rng.random() < 0.3 and (cut := cut_exif(rng, format, data)) is not None:
        return cut
    elif kind == 5:  # a damaged EXIF block
        offsets = exif_offsets(data)
        position = rng.choice(offsets)
        if rng.random() < 0.3:
            del out[position : position + rng.randint(1, 16)]
        else:
            for _ in range(rng.randint(1, 3)):
                out[rng.choice(offsets)] = rng.choice((0x00, 0xFF, rng.randrange(256)))
    else:  # header size fields set huge
        for offset, field in rng.sample(size_fields(format, data), k=rng.randint(1, 2)):
            bits = 8 * struct.calcsize(field)
            value = rng.choice(HUGE) & ((1 << bits) - 1)
            if field[-1].islower() and value >= 1 << (bits - 1):  # a signed field: keep it in range
                value -= 1 << bits
            struct.pack_into(field, out, offset, value)
    return bytes(out)


def assert_decoded_or_data_error(read, *args, **kwargs) -> str:
    try:
        result = read(*args, **kwargs)
    except DataError as error:
        assert "\n" not in str(error)
        return "error"
    if read is load_image:
        assert result.dtype == torch.float32 and result.ndim == 3 and result.shape[0] == 3
        assert result.shape[1] > 0 and result.shape[2] > 0
        assert bool(((result >= 0) & (result <= 1)).all()), "values outside [0, 1] (or NaN)"
    else:
        assert len(result) == 2 and all(isinstance(v, int) and v > 0 for v in result)
    return "ok"


SEEDS = ["JPEG", "PNG", "PNG-16bit", "PNG-palette", "TIFF", "TIFF-float", "GIF", "WEBP", "BMP"]


@pytest.mark.parametrize("seed", SEEDS)
def test_mutated_files_decode_or_raise_data_error(seed, tmp_path):
    rng = random.Random(f"fuzz-{seed}")
    format, data = encode(seed)
    seed_shape = (3, 20, 14) if format in ("JPEG", "PNG", "WEBP") else (3, 14, 20)  # EXIF orientation 6: rotated
    assert load_image(io.BytesIO(data)).shape == seed_shape  # the seed file decodes
    path = tmp_path / f"case.{format.lower()}"
    outcomes = {"ok": 0, "error": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's decompression-bomb and corrupt-EXIF warnings
        for case in range(CASES_PER_SEED):
            mutated = mutate(rng, format, data)
            path.write_bytes(mutated)
            try:
                outcomes[assert_decoded_or_data_error(image_size, path)] += 1
                outcomes[assert_decoded_or_data_error(check_image, path)] += 1
                outcomes[assert_decoded_or_data_error(load_image, path)] += 1
                if case % 4 == 0:  # the reduced decoding (as for a large image), from a file object (as serve)
                    assert_decoded_or_data_error(load_image, io.BytesIO(mutated), reduce=2)
            except AssertionError as failure:
                raise AssertionError(f"case {case}: {failure}; file: {mutated.hex()}") from None
    assert outcomes["ok"] > 0 and outcomes["error"] > 0  # the mutations reach both outcomes
