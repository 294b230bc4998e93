"""``predict`` decodes images and video frames ahead of the model and batches images: the same outputs, byte for
byte and in the same order, as one image at a time without a background thread; bad images and Ctrl-C as before.

The predictable tiny model of test_detector.py on small generated images; CPU.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fasterrcnn.cli import main
from fasterrcnn.detector import Detector
from fasterrcnn.errors import ConfigError, DataError
from fasterrcnn.runs import prediction, predict
from test_detector import CLASS_NAMES, predictable_model, write_predictable_checkpoint
from test_predict_video import interrupt_third_forward, read_lines, write_clip

SIZES = [(96, 128)] * 5 + [(80, 112)] * 2 + [(96, 128)]  # (height, width): a run of another size in the middle


def write_photo(path: Path, size: tuple[int, int], seed: int) -> Path:
    """A PNG of ``size`` with noise and two shapes placed by ``seed``: every image has detections of its own."""
    rng = np.random.default_rng(seed)
    height, width = size
    image = Image.fromarray(rng.integers(0, 80, (height, width, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    x, y = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    draw.rectangle([x, y, x + width // 3, y + height // 3], fill=(250, 200, 0))
    draw.ellipse([width - x - 40, height - y - 40, width - x, height - y], fill=(0, 200, 250))
    image.save(path)
    return path


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(predictable_model(), CLASS_NAMES, device="cpu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for index, size in enumerate(SIZES):
        write_photo(folder / f"{index}.png", size, seed=index)
    return folder


def inline(items, ahead):
    """``read_ahead`` without its thread: the items read when asked for, one at a time (the old loop)."""
    yield from items


def output_files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def read_ahead_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "fasterrcnn-read-ahead"]


def test_read_ahead_keeps_the_order_raises_in_place_and_stays_bounded():
    produced = []

    def items():
        for index in range(10):
            produced.append(index)
            if index == 6:
                raise DataError("clip.mp4", "cannot decode frame 6")
            yield index

    ahead = prediction.read_ahead(items(), 2)
    assert next(ahead) == 0
    time.sleep(0.2)  # the thread runs ahead: 1 and 2 queued, 3 made and waiting for room
    assert produced == [0, 1, 2, 3]
    assert [next(ahead) for _ in range(5)] == [1, 2, 3, 4, 5]
    with pytest.raises(DataError, match="^clip.mp4: cannot decode frame 6$"):
        next(ahead)
    assert not read_ahead_threads()

    never_done = prediction.read_ahead(iter(range(100)), 3)
    with closing(never_done):
        assert next(never_done) == 0
    assert not read_ahead_threads()  # closing stops and joins it, its items never all read


def test_decoding_ahead_and_batches_write_the_same_files_as_one_image_at_a_time(detector, photos, tmp_path, monkeypatch):
    written = {}
    for batch_size in (1, 3):
        result = predict(detector, [photos], output=tmp_path / f"batch{batch_size}", score_threshold=0.0, quiet=True, batch_size=batch_size)
        written[batch_size] = output_files(result.output)
    with monkeypatch.context() as patch:
        patch.setattr(prediction, "read_ahead", inline)
        one_by_one = predict(detector, [photos], output=tmp_path / "inline", score_threshold=0.0, quiet=True)
    assert written[1] == output_files(one_by_one.output)  # byte for byte: pictures, .jsonl, .json
    lines = read_lines(one_by_one.output / "detections.jsonl")
    assert [line["image_id"] for line in lines] == [str(index) for index in range(len(SIZES))]
    assert sum(len(line["detections"]) for line in lines) > len(SIZES)

    batched = read_lines(tmp_path / "batch3" / "detections.jsonl")  # batches [0 1 2] [3 4] [5 6] [7]: by size
    assert [line["image_id"] for line in batched] == [line["image_id"] for line in lines]
    for line, expected in zip(batched, lines):
        assert [d["label"] for d in line["detections"]] == [d["label"] for d in expected["detections"]]
        for found, one in zip(line["detections"], expected["detections"]):
            assert found["box"] == pytest.approx(one["box"], abs=1e-4) and found["score"] == pytest.approx(one["score"], abs=1e-4)
    assert set(written[3]) == set(written[1])
    for index in range(len(SIZES)):  # the pictures as Detector.detect finds each image alone
        alone = detector.detect(photos / f"{index}.png", score_threshold=0.0)
        assert [d.label for d in alone] == [d["label"] for d in lines[index]["detections"]]


def test_batches_are_formed_by_size_and_end_at_a_bad_image(detector, photos, tmp_path, monkeypatch):
    forward, batches = detector.model.forward, []

    def counting(images, *args, **kwargs):
        batches.append([tuple(image.shape[1:]) for image in images])
        return forward(images, *args, **kwargs)

    folder = tmp_path / "photos"
    folder.mkdir()
    for index in (0, 1, 3, 4, 5, 6):
        (folder / f"{index}.png").write_bytes((photos / f"{index}.png").read_bytes())
    (folder / "2.png").write_bytes(b"not an image")
    monkeypatch.setattr(detector.model, "forward", counting)
    predict(detector, [folder], quiet=True, batch_size=4)
    assert batches == [[(96, 128)] * 2, [(96, 128)] * 2, [(80, 112)] * 2]  # [0 1] bad [3 4] [5 6]


@pytest.mark.parametrize("batch_size", [1, 2])
def test_a_bad_image_is_reported_at_its_place_or_stops_the_run_after_the_images_before_it(detector, photos, tmp_path, monkeypatch, batch_size):
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(5):
        (folder / f"{index}.png").write_bytes((photos / f"{index}.png").read_bytes())
    (folder / "1.png").write_bytes(b"not an image")
    (folder / "3.png").write_bytes((photos / "3.png").read_bytes()[:200])  # truncated
    events = []

    class Recorder(logging.Handler):
        def emit(self, record):
            events.append(record.getMessage())

    recorder = Recorder()
    logging.getLogger("fasterrcnn").addHandler(recorder)
    monkeypatch.setattr(prediction, "print", lambda text, **kwargs: events.append(text), raising=False)
    try:
        result = predict(detector, [folder], output=tmp_path / "skip", batch_size=batch_size)
    finally:
        logging.getLogger("fasterrcnn").removeHandler(recorder)
    names = [event.split(":")[0].removeprefix("skipping ").rsplit("/", 1)[-1] for event in events]
    assert names == ["0.png", "1.png", "2.png", "3.png", "4.png"]
    assert [event.startswith("skipping ") for event in events] == [False, True, False, True, False]
    assert [Path(file).name for file, _ in result.skipped] == ["1.png", "3.png"]
    assert [line["image_id"] for line in read_lines(tmp_path / "skip" / "detections.jsonl")] == ["0", "2", "4"]

    with pytest.raises(DataError, match="1.png: cannot read image"):
        predict(detector, [folder], output=tmp_path / "stop", on_bad_image="error", quiet=True, batch_size=batch_size)
    assert [line["image_id"] for line in read_lines(tmp_path / "stop" / "detections.jsonl")] == ["0"]
    assert {d["image_id"] for d in json.loads((tmp_path / "stop" / "detections.json").read_text())} == {"0"}
    assert not read_ahead_threads()


@pytest.mark.parametrize("batch_size", [1, 2])
def test_ctrl_c_keeps_the_images_processed_and_leaves_no_thread(detector, photos, tmp_path, monkeypatch, batch_size):
    interrupt_third_forward(detector, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        predict(detector, [photos], output=tmp_path / "out", quiet=True, batch_size=batch_size)
    done = [str(index) for index in range(2 * batch_size)]  # the images of the first two forward passes
    assert [line["image_id"] for line in read_lines(tmp_path / "out" / "detections.jsonl")] == done
    assert {d["image_id"] for d in json.loads((tmp_path / "out" / "detections.json").read_text())} == set(done)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jpg")) == [f"{name}.jpg" for name in done]
    assert not read_ahead_threads()


# The CLI in a child process, its model slowed to 0.2 s a pass, so that Ctrl-C falls in the middle of the folder.
SLOW_PREDICT = """
import sys, time
from fasterrcnn.cli import main
from fasterrcnn.modeling.faster_rcnn import FasterRCNN
forward = FasterRCNN.forward
FasterRCNN.forward = lambda self, *args, **kwargs: time.sleep(0.2) or forward(self, *args, **kwargs)
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_on_the_command_ends_the_process_with_every_image_done_written(photos, tmp_path):
    checkpoint = write_predictable_checkpoint(tmp_path / "tiny.pt")
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(40):
        (folder / f"{index:02d}.png").write_bytes((photos / "0.png").read_bytes())
    out = tmp_path / "out"
    args = ["predict", "--weights", str(checkpoint), str(folder), "--output", str(out), "--device", "cpu", "--quiet", "--batch-size", "2"]
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_PREDICT, *args], env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    lines = out / "detections.jsonl"
    deadline = time.monotonic() + 120
    while not (lines.exists() and len(lines.read_text().splitlines()) >= 4):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)  # no thread keeps the process alive
    assert process.returncode == 130 and stderr.endswith("fasterrcnn: interrupted\n"), stderr
    done = [line["image_id"] for line in read_lines(lines)]
    assert 4 <= len(done) < 40 and done == [f"{index:02d}" for index in range(len(done))]
    assert {d["image_id"] for d in json.loads((out / "detections.json").read_text())} == set(done)
    assert sorted(p.stem for p in out.glob("*.jpg")) in (done, done[:-1])  # a picture is written after its line
    assert not list(out.glob(".*"))  # nor half of one (pictures are written atomically)


def test_video_frames_decoded_ahead_give_the_same_files_as_frame_by_frame(detector, tmp_path, monkeypatch):
    clip = write_clip(tmp_path / "clip.mp4")
    ahead = predict(detector, [clip], output=tmp_path / "ahead", score_threshold=0.0, quiet=True)
    with monkeypatch.context() as patch:
        patch.setattr(prediction, "read_ahead", inline)
        one_by_one = predict(detector, [clip], output=tmp_path / "inline", score_threshold=0.0, quiet=True)
    assert output_files(ahead.output) == output_files(one_by_one.output)
    assert len(read_lines(ahead.output / "clip.jsonl")) == 12 and not read_ahead_threads()


def test_batch_size_below_one_or_with_slices_is_a_one_line_error(detector, photos, tmp_path, capsys):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match=f"^batch_size must be a whole number >= 1, got {bad!r}$"):
            predict(detector, [photos], batch_size=bad)
    with pytest.raises(ConfigError, match="^batch_size > 1 goes with plain inference"):
        predict(detector, [photos], batch_size=2, slice=64)
    assert main(["predict", str(photos), "--weights", "x.pt", "--output", str(tmp_path / "out"), "--batch-size", "0"]) == 2
    error = capsys.readouterr().err
    assert error == "fasterrcnn predict: error: argument --batch-size: must be >= 1, got 0 (see 'fasterrcnn predict --help')\n"
    assert not (tmp_path / "out").exists()
