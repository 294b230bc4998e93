import numpy as np
import pytest
import torch
from PIL import Image

from fasterrcnn.data.images import image_size, load_annotated_image, load_image
from fasterrcnn.errors import DataError


def save(tmp_path, name, image, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_rgb_values_shape_and_dtype(tmp_path):
    pixels = np.array([[[0, 128, 255], [10, 20, 30], [255, 0, 1]], [[1, 2, 3], [4, 5, 6], [7, 8, 9]]], dtype=np.uint8)
    path = save(tmp_path, "rgb.png", Image.fromarray(pixels))
    image = load_image(path)
    assert image.dtype == torch.float32
    assert image.shape == (3, 2, 3)
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    assert image_size(path) == (2, 3)


def test_grayscale_l_and_1_repeated_in_three_channels(tmp_path):
    gray = np.array([[0, 128], [255, 64]], dtype=np.uint8)
    image = load_image(save(tmp_path, "l.png", Image.fromarray(gray)))
    expected = torch.from_numpy(gray).float() / 255
    assert image.shape == (3, 2, 2)
    for channel in range(3):
        assert torch.equal(image[channel], expected)
    bilevel = Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).convert("1")
    image = load_image(save(tmp_path, "one.png", bilevel))
    assert torch.equal(image, torch.tensor([[[0.0, 1.0]]] * 3))


def test_rgba_and_la_drop_alpha(tmp_path):
    rgba = np.array([[[200, 100, 50, 0], [10, 20, 30, 255]]], dtype=np.uint8)
    image = load_image(save(tmp_path, "rgba.png", Image.fromarray(rgba, mode="RGBA")))
    assert torch.equal(image, torch.tensor([[[200, 10]], [[100, 20]], [[50, 30]]]) / 255.0)
    la = Image.fromarray(np.array([[[77, 0], [99, 255]]], dtype=np.uint8), mode="LA")
    image = load_image(save(tmp_path, "la.png", la))
    assert torch.equal(image, torch.tensor([[[77, 99]]] * 3) / 255.0)


def test_palette_with_and_without_transparency(tmp_path):
    palette_image = Image.new("P", (2, 1))
    palette_image.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    palette_image.putpixel((0, 0), 0)
    palette_image.putpixel((1, 0), 1)
    expected = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]], [[0.0, 1.0]]])
    assert torch.equal(load_image(save(tmp_path, "p.png", palette_image)), expected)
    assert torch.equal(load_image(save(tmp_path, "pt.png", palette_image, transparency=1)), expected)
    assert torch.equal(load_image(save(tmp_path, "p.gif", palette_image)), expected)


def test_16_bit_grayscale_scaled_to_unit_range(tmp_path):
    values = np.array([[0, 65535, 32768, 257]], dtype=np.uint16)
    path = save(tmp_path, "gray16.png", Image.fromarray(values))
    image = load_image(path)
    expected = torch.tensor([[0.0, 1.0, 32768 / 65535, 257 / 65535]])
    assert image.shape == (3, 1, 4)
    for channel in range(3):
        assert torch.allclose(image[channel], expected, atol=1e-7, rtol=0)


def test_32_bit_integer_and_float_images(tmp_path):
    big = Image.fromarray(np.array([[0, 2**31 - 1, -5, 2**30]], dtype=np.int32), mode="I")
    image = load_image(save(tmp_path, "i32.tif", big))
    assert torch.allclose(image[0, 0], torch.tensor([0.0, 1.0, 0.0, 2**30 / (2**31 - 1)]), atol=1e-7, rtol=0)
    floats = Image.fromarray(np.array([[0.25, 2.0, -1.0]], dtype=np.float32), mode="F")
    image = load_image(save(tmp_path, "f.tif", floats))
    assert torch.equal(image[1, 0], torch.tensor([0.25, 1.0, 0.0]))


def test_cmyk_converted_to_rgb(tmp_path):
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((0, 0), (0, 0, 0, 0))  # white
    cmyk.putpixel((1, 0), (255, 0, 0, 0))  # cyan
    image = load_image(save(tmp_path, "cmyk.tif", cmyk))
    assert torch.equal(image, torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]], [[1.0, 1.0]]]))


def test_exif_orientation_6_rotates_image_and_size(tmp_path):
    pixels = np.zeros((2, 3, 3), dtype=np.uint8)  # stored: height 2, width 3
    pixels[0, 0] = (255, 0, 0)  # stored top-left is red
    stored = Image.fromarray(pixels)
    exif = stored.getexif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    path = save(tmp_path, "rotated.png", stored, exif=exif)
    assert image_size(path) == (3, 2)
    image = load_image(path)
    assert image.shape == (3, 3, 2)
    assert torch.equal(image[:, 0, 1], torch.tensor([1.0, 0.0, 0.0]))  # top-left went to top-right
    assert image.sum().item() == 1.0


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("empty.jpg", b"", "cannot read image"),
        ("text.jpg", b"this is not an image\n", "cannot read image (not an image, or a format Pillow cannot read)"),
        ("missing.jpg", None, "image file not found"),
    ],
)
def test_unreadable_files_raise_one_line_data_error(tmp_path, name, content, problem):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    for read in (load_image, image_size):
        with pytest.raises(DataError) as info:
            read(path)
        assert str(info.value).startswith(f"{path}: {problem}")
        assert "\n" not in str(info.value)
        assert info.value.path == str(path)


def test_truncated_jpeg_raises_data_error(tmp_path):
    rng = np.random.default_rng(0)
    full = save(tmp_path, "full.jpg", Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), quality=95)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert image_size(truncated) == (64, 64)  # the header is intact
    with pytest.raises(DataError) as info:
        load_image(truncated)
    assert str(info.value).startswith(f"{truncated}: cannot read image")
    assert "\n" not in str(info.value)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(DataError) as info:
        load_image(tmp_path)
    assert str(info.value).startswith(str(tmp_path))


def test_load_annotated_image_follows_the_annotation_orientation(tmp_path):
    pixels = np.zeros((2, 3, 3), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0)
    stored = Image.fromarray(pixels)
    exif = stored.getexif()
    exif[0x0112] = 6
    path = save(tmp_path, "rotated.png", stored, exif=exif)
    oriented = load_annotated_image(path, (3, 2), "a.xml")
    assert oriented.shape == (3, 3, 2)
    assert torch.equal(oriented[:, 0, 1], torch.tensor([1.0, 0.0, 0.0]))
    raw = load_annotated_image(path, (2, 3), "a.xml")  # annotated on the stored pixel grid
    assert raw.shape == (3, 2, 3)
    assert torch.equal(raw[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(load_image(path, apply_exif=False), raw)
    with pytest.raises(DataError) as info:
        load_annotated_image(path, (4, 2), "dir/a.xml")
    assert str(info.value) == f"{path}: is 3x2 (h x w, after EXIF orientation) but a.xml says 4x2"
    plain = save(tmp_path, "plain.png", stored)
    with pytest.raises(DataError):  # swapped size without an EXIF rotation is an error
        load_annotated_image(plain, (3, 2), "a.xml")


# -- decoding huge images reduced ------------------------------------------------------------------------
def test_reduction_factor_keeps_the_image_at_least_the_model_input():
    from fasterrcnn.data.images import reduction_factor

    assert reduction_factor((6000, 8000), 256, 384) == 16  # 375 x 500 >= the resize to 256 x 341
    assert reduction_factor((6000, 8000), 800, 1333) == 4  # 1500 x 2000 >= 800 x 1067
    assert reduction_factor((600, 1000), 800, 1333) == 1  # upscaled by the model: never reduced
    assert reduction_factor((600, 1000), 600, 1000) == 1
    assert reduction_factor((1200, 2000), 600, 1000) == 2  # exactly twice: halved
    assert reduction_factor((1199, 1999), 600, 1000) == 1


@pytest.mark.parametrize("name", ["photo.jpg", "photo.png"])
def test_reduced_decoding_sizes_values_and_orientation(tmp_path, name):
    from fasterrcnn.data.images import load_image

    rng = np.random.default_rng(0)
    pixels = np.kron(rng.integers(0, 256, (10, 13, 3), dtype=np.uint8), np.ones((8, 8, 1), dtype=np.uint8))  # 80 x 104, 8x8 blocks
    stored = Image.fromarray(pixels)
    exif = stored.getexif()
    exif[0x0112] = 6
    path = save(tmp_path, name, stored, exif=exif, **({"quality": 95, "subsampling": 0} if name.endswith(".jpg") else {}))
    full = load_image(path)
    assert full.shape == (3, 104, 80)  # EXIF orientation 6 applied
    for factor in (2, 4, 8, 16):
        reduced = load_image(path, reduce=factor)
        assert reduced.shape == (3, -(-104 // factor), -(-80 // factor))
        if factor <= 8:  # whole 8x8 blocks: the reduced pixel is the block's colour
            expected = torch.nn.functional.avg_pool2d(full[None], factor)[0]
            assert (reduced - expected).abs().max() < (0.09 if name.endswith(".jpg") else 1 / 255 + 1e-6)
    assert torch.equal(load_image(path, reduce=1), full)
    with pytest.raises(ValueError, match="power of two"):
        load_image(path, reduce=3)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def declared_png(width: int, height: int, rows: int = 1, exif_after_pixels: bytes | None = None) -> bytes:
    """A grayscale PNG whose header says ``width`` x ``height`` with the pixel data of ``rows`` rows only."""
    import struct
    import zlib

    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    pixels = png_chunk(b"IDAT", zlib.compress(bytes(rows * (width + 1))))
    tail = png_chunk(b"eXIf", exif_after_pixels) if exif_after_pixels is not None else b""
    return b"\x89PNG\r\n\x1a\n" + header + pixels + tail + png_chunk(b"IEND", b"")


def exif_with_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


@pytest.fixture
def decodes(monkeypatch):
    """A list that records every pixel decode (``ImageFile.load``) Pillow does."""
    from PIL import ImageFile

    calls = []
    original = ImageFile.ImageFile.load

    def spy(self):
        calls.append(self.format)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


def test_header_checks_of_a_huge_png_never_decode_it(tmp_path, decodes):
    from fasterrcnn.data.images import check_image

    path = tmp_path / "huge.png"
    path.write_bytes(declared_png(12000, 12000))  # 144 MB of pixels declared in a 100-byte file
    assert image_size(path) == (12000, 12000)
    assert check_image(path) == (12000, 12000)
    assert check_image(path, (12000, 12000), tmp_path / "a.xml") == (12000, 12000)
    assert decodes == []


def test_an_exif_chunk_after_the_png_pixels_is_ignored_everywhere(tmp_path, decodes):
    from fasterrcnn.data.images import check_image

    pixels = np.arange(2 * 3, dtype=np.uint8).reshape(2, 3) * 40
    stored = tmp_path / "plain.png"
    Image.fromarray(pixels).save(stored)
    raw = stored.read_bytes()
    end = raw.rindex(b"IEND") - 4  # the IEND chunk starts with its 4-byte length
    late = tmp_path / "late_exif.png"
    late.write_bytes(raw[:end] + png_chunk(b"eXIf", exif_with_orientation(6)) + raw[end:])
    assert image_size(late) == (2, 3) and check_image(late) == (2, 3)
    assert decodes == []
    assert torch.equal(load_image(late), load_image(stored))  # not rotated, as the size says
    early = tmp_path / "early_exif.png"
    Image.fromarray(pixels).save(early, exif=exif_with_orientation(6))  # Pillow writes eXIf before IDAT
    assert image_size(early) == (3, 2)
    assert load_image(early).shape == (3, 3, 2)


def test_a_truncated_png_or_one_with_trailing_bytes_is_told_apart_without_decoding(tmp_path, decodes):
    from fasterrcnn.data.images import check_image

    path = save(tmp_path, "image.png", Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    raw = path.read_bytes()
    trailing = tmp_path / "trailing.png"
    trailing.write_bytes(raw + b"some bytes after IEND")
    assert check_image(trailing) == (64, 64)
    cut = tmp_path / "cut.png"
    cut.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(DataError, match=r"cut.png: cannot read image"):
        check_image(cut)
    assert decodes == []


def test_a_malformed_exif_block_is_a_data_error(tmp_path):
    from fasterrcnn.data.images import check_image

    path = save(tmp_path, "bad_exif.jpg", Image.new("RGB", (32, 24), (10, 20, 30)), exif=b"Exif\x00\x00MM\x00*", dpi=(72, 72))
    for read in (load_image, image_size, check_image, lambda p: load_image(p, reduce=2)):
        with pytest.raises(DataError) as info:
            read(path)
        assert str(info.value) == f"{path}: cannot read image (malformed EXIF block: unpack requires a buffer of 4 bytes)"


def test_nan_in_a_float_image_reads_as_zero(tmp_path):
    pixels = np.array([[0.25, np.nan], [np.inf, -np.inf]], dtype=np.float32)
    image = load_image(save(tmp_path, "float.tiff", Image.fromarray(pixels)))
    assert torch.equal(image, torch.tensor([[[0.25, 0.0], [1.0, 0.0]]] * 3))


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "RGBA", "P", "P-transparent"])
def test_a_png_decoded_reduced_is_decoded_in_strips_with_the_same_pixels(tmp_path, monkeypatch, mode):
    from PIL import ImageFile

    import fasterrcnn.data.images as images

    height, width = 203, 157  # odd sides: the last strip and the last reduced row are partial
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.stack([x, y, (x * y) % 256], axis=2).astype(np.uint8)  # Pillow's filters Sub / Up / Paeth in use
    noise = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(np.where(y[..., None] < height // 2, smooth, noise))
    options = {}
    if mode.startswith("P"):
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
        options = {"transparency": 2} if mode == "P-transparent" else {}
    else:
        image = image.convert(mode)
    path = save(tmp_path, "image.png", image, **options)
    monkeypatch.setattr(images, "_PNG_STRIP_BYTES", 20 * (1 + width * 4))  # 20 RGBA rows: many strips
    decoded_heights = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded_heights.append(self.size[1]) or load(self))
    for reduce in (2, 4, 8):
        decoded_heights.clear()
        reduced = load_image(path, reduce=reduce)
        assert len(decoded_heights) > 3 and max(decoded_heights) <= 81  # strips (+ the row before), never 203 rows
        with Image.open(path) as whole:
            whole.load()
            expected = images._to_tensor(images._to_rgb_array(images._reducible(whole).reduce(reduce)))
        assert reduced.shape == (3, -(-height // reduce), -(-width // reduce))
        assert torch.equal(reduced, expected)


def test_a_truncated_png_decoded_in_strips_is_a_data_error(tmp_path):
    path = save(tmp_path, "image.png", Image.fromarray(np.random.default_rng(2).integers(0, 256, (300, 200, 3), dtype=np.uint8)))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"image.png: cannot read image \(image file is truncated"):
        load_image(path, reduce=2)
