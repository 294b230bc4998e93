"""fasterrcnn.io: atomic writes replace the file whole or leave it untouched, and leave no temp files; load_tensors."""

import os

import pytest

from fasterrcnn.errors import DataError
from fasterrcnn.io import atomic_save, atomic_write_bytes, atomic_write_text, load_tensors, not_a_tensor_file
from fasterrcnn.paths import create_new


def test_atomic_write_bytes_creates_and_replaces(tmp_path):
    path = tmp_path / "a.bin"
    atomic_write_bytes(path, b"first")
    assert path.read_bytes() == b"first"
    atomic_write_bytes(str(path), b"\x00second\xff")
    assert path.read_bytes() == b"\x00second\xff"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_atomic_write_text_is_utf8_without_newline_translation(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "héllo\nwörld\n")
    assert path.read_bytes() == "héllo\nwörld\n".encode("utf-8")
    assert os.listdir(tmp_path) == ["a.txt"]


def test_atomic_save_passes_a_binary_file_and_fsyncs(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "b.bin"

    def writer(f):
        assert "b" in f.mode
        f.write(b"abc")
        f.write(b"def")

    atomic_save(path, writer)
    assert path.read_bytes() == b"abcdef"
    assert len(synced) == 1
    assert os.listdir(tmp_path) == ["b.bin"]


def test_failing_writer_keeps_old_file_and_removes_temp(tmp_path):
    path = tmp_path / "c.json"
    path.write_bytes(b"old contents")

    def writer(f):
        f.write(b"partial new conte")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_save(path, writer)
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["c.json"]


def test_failing_writer_on_new_file_creates_nothing(tmp_path):
    def writer(f):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_save(tmp_path / "d.bin", writer)
    assert os.listdir(tmp_path) == []


def test_ctrl_c_right_after_the_temporary_file_is_created_removes_it(tmp_path, monkeypatch):
    """A SIGINT pending while the temporary file is opened is raised as soon as the open returns, before the
    writer runs: the file is still removed (predict's pictures left ``.NAME.<hex>.tmp`` files on Ctrl-C)."""
    import fasterrcnn.io

    def interrupted_after(path, mode):
        fd = create_new(path, mode)
        os.close(fd)
        raise KeyboardInterrupt

    monkeypatch.setattr(fasterrcnn.io, "create_new", interrupted_after)
    with pytest.raises(KeyboardInterrupt):
        atomic_save(tmp_path / "g.jpg", lambda f: f.write(b"x"))
    assert os.listdir(tmp_path) == []


def test_a_foreign_file_at_the_temporary_name_is_never_removed(tmp_path, monkeypatch):
    import fasterrcnn.io

    monkeypatch.setattr(fasterrcnn.io.secrets, "token_hex", lambda n: "0" * (2 * n))
    foreign = tmp_path / ".h.bin.000000000000.tmp"
    foreign.write_bytes(b"not ours")
    with pytest.raises(FileExistsError):
        atomic_save(tmp_path / "h.bin", lambda f: f.write(b"x"))
    assert foreign.read_bytes() == b"not ours" and os.listdir(tmp_path) == [foreign.name]


def test_missing_directory_raises_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "missing" / "e.bin", b"x")
    assert os.listdir(tmp_path) == []


def test_new_file_has_umask_permissions_not_private_temp_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "f.bin", b"x")
    finally:
        os.umask(umask)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o644


def test_remove_temp_files_deletes_only_abandoned_atomic_writes(tmp_path):
    from fasterrcnn.io import remove_temp_files

    atomic_write_bytes(tmp_path / "last.pt", b"whole")
    abandoned = tmp_path / ".last.pt.0123456789ab.tmp"  # what a writer killed half-way leaves
    abandoned.write_bytes(b"half")
    for name in (".hidden", ".last.pt.tmp", "notes.0123456789ab.tmp"):
        (tmp_path / name).write_bytes(b"keep")
    assert remove_temp_files(tmp_path) == [abandoned]
    assert sorted(os.listdir(tmp_path)) == [".hidden", ".last.pt.tmp", "last.pt", "notes.0123456789ab.tmp"]
    assert remove_temp_files(tmp_path / "missing") == []


def test_load_tensors_silences_exactly_the_pickle_protocol_warning(tmp_path, monkeypatch):
    import warnings

    import torch

    def load(path, map_location, weights_only):
        assert weights_only is True
        warnings.warn("Detected pickle protocol 3 in the checkpoint, which was not the default", UserWarning)
        warnings.warn("something else", UserWarning)
        return {"loaded": str(path)}

    monkeypatch.setattr(torch, "load", load)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_tensors(tmp_path / "w.pt") == {"loaded": str(tmp_path / "w.pt")}
    assert [str(w.message) for w in caught] == ["something else"]


def _zip(path, names):
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, b"x")


@pytest.mark.parametrize(
    "content, kind",
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "it is a JPEG image"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "it is a PNG image"),
        (b"GIF89a\x01\x00", "it is a GIF image"),
        (b"BM\x3a\x00\x00\x00\x00\x00\x00\x00\x36\x00", "it is a BMP image"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "it is a WebP image"),
        (b"II*\x00\x08\x00", "it is a TIFF image"),
        (b"", "the file is empty"),
        ("a few words\nof notes\n".encode(), "it is a text file"),
        ('\ufeff {"model": "résumé"}'.encode(), "it is a JSON file"),
        (b"<!DOCTYPE html>\n<html><body>Not Found</body></html>", "it is an HTML page"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 9\n", "it is a Git LFS pointer: fetch the file itself with 'git lfs pull'"),
        (len(b'{"w":{}}').to_bytes(8, "little") + b'{"w":{}}', "it is a safetensors file, which is not read here"),
        (bytes(range(200, 256)), "it is neither a zip archive nor a pickle"),
        ("é" * 300, "it is a text file"),  # 600 bytes: the 512-byte sample ends inside no character
        ("xé" * 300, "it is a text file"),  # the sample ends inside a character
        (b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.", None),  # the legacy torch.save magic number
    ],
)
def test_not_a_tensor_file_names_what_the_file_plainly_is(tmp_path, content, kind):
    path = tmp_path / "weights.pt"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    assert not_a_tensor_file(path) == kind


def test_not_a_tensor_file_passes_torch_files_and_what_it_cannot_open(tmp_path):
    import torch

    torch.save({"w": torch.zeros(2)}, tmp_path / "new.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert not_a_tensor_file(tmp_path / "new.pt") is None
    assert not_a_tensor_file(tmp_path / "legacy.pt") is None
    assert not_a_tensor_file(tmp_path / "missing.pt") is None  # torch.load names the problem
    _zip(tmp_path / "other.zip", ["readme.txt"])
    assert not_a_tensor_file(tmp_path / "other.zip") == "it is a zip archive without PyTorch data"
    _zip(tmp_path / "renamed.zip", ["archive/data.pkl", "archive/data/0"])
    assert not_a_tensor_file(tmp_path / "renamed.zip") is None


def test_load_tensors_names_a_file_that_is_plainly_something_else(tmp_path):
    from PIL import Image

    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(photo)
    with pytest.raises(DataError) as info:
        load_tensors(photo, what="checkpoint")
    assert str(info.value) == f"{photo}: not a checkpoint (it is a JPEG image)"
    assert info.value.path == str(photo)
