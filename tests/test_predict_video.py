"""``predict`` on real inputs: videos (PyAV), folders searched recursively, detections streamed as JSON Lines.

The predictable tiny model of test_detector.py, on 96 x 128 generated clips and images; CPU.
"""

from __future__ import annotations

import json
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from fasterrcnn.cli import main
from fasterrcnn.data.transforms import resize_boxes
from fasterrcnn.data.video import VideoReader, VideoWriter, to_rgb
from fasterrcnn.detector import Detector
from fasterrcnn.errors import ConfigError, DataError
from fasterrcnn.modeling.faster_rcnn import FasterRCNN
from fasterrcnn.runs import PredictResult, predict
from fasterrcnn.config import get_preset, to_dict
from fasterrcnn.engine.checkpoint import save_checkpoint
from test_detector import CLASS_NAMES, IMAGE_SIZE, predictable_model, write_test_image

NUM_FRAMES, RATE = 12, 24


def write_clip(path: Path, num_frames: int = NUM_FRAMES, container: str | None = None) -> Path:
    """An MPEG-4 clip of IMAGE_SIZE at RATE fps: a yellow rectangle moving right on a blue-grey ground."""
    height, width = IMAGE_SIZE
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream("mpeg4", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            rgb = np.full((height, width, 3), (40, 60, 80), np.uint8)
            rgb[20:70, 10 + 5 * i : 60 + 5 * i] = (250, 200, 0)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def decoded_frames(path: Path) -> list[np.ndarray]:
    with VideoReader(path) as video:
        return [to_rgb(frame) for _, _, frame in video.frames()]


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """test_detector's predictable model, resizing to IMAGE_SIZE (its frames and images run at their own size)."""
    model = predictable_model()
    config = {"model": {**to_dict(model.config), "min_size": IMAGE_SIZE[0], "max_size": IMAGE_SIZE[1]}, "train": to_dict(get_preset("tiny").train)}
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": {"preset": "tiny", **config}, "class_names": CLASS_NAMES})
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("videos") / "clip.mp4")


def test_a_video_gives_an_annotated_video_and_the_detections_of_every_frame(checkpoint, clip, tmp_path):
    out = tmp_path / "out"
    result = predict(checkpoint, [clip], output=out, device="cpu", quiet=True)
    assert isinstance(result, PredictResult) and result.detections == {} and list(result.videos) == [clip]
    video = result.videos[clip]
    assert video.video == out / "clip.mp4" and video.lines == out / "clip.jsonl"
    assert sorted(p.name for p in out.iterdir()) == ["clip.jsonl", "clip.mp4", "detections.json", "detections.jsonl"]

    with VideoReader(video.video) as annotated:  # same size, rate and frame count as the input
        assert (annotated.width, annotated.height, annotated.rate) == (IMAGE_SIZE[1], IMAGE_SIZE[0], Fraction(RATE))
        assert sum(1 for _ in annotated.frames()) == NUM_FRAMES

    lines = read_lines(video.lines)
    assert [line["frame"] for line in lines] == list(range(NUM_FRAMES))
    assert [line["time"] for line in lines] == pytest.approx([i / RATE for i in range(NUM_FRAMES)])
    assert [line["detections"] for line in lines] == [[d.to_dict() for d in frame.detections] for frame in video.frames]
    for line in lines:
        for d in line["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= IMAGE_SIZE[1] and 0 <= y1 <= y2 <= IMAGE_SIZE[0]
    detector = Detector.from_checkpoint(checkpoint, device="cpu")
    frames = decoded_frames(clip)
    for index in (0, 5, NUM_FRAMES - 1):  # the same decoded frame: exactly the same detections
        expected = detector.detect(frames[index], score_threshold=0.5)
        assert expected and video.frames[index].detections == expected
    assert json.loads((out / "detections.json").read_text()) == [] and (out / "detections.jsonl").read_text() == ""


def test_a_frame_much_larger_than_the_model_input_is_decoded_reduced(clip):
    torch.manual_seed(0)
    model = FasterRCNN.from_preset("tiny", num_classes=len(CLASS_NAMES), min_size=32, max_size=48)  # frames are 2x larger
    detector = Detector(model, CLASS_NAMES, device="cpu")
    result = predict(detector, [clip], score_threshold=0.0, frame_stride=4, quiet=True)
    frames = result.videos[clip].frames
    assert [frame.index for frame in frames] == [0, 4, 8] and result.videos[clip].video is None
    with VideoReader(clip) as video:
        reduced = [to_rgb(frame, 2) for _, _, frame in video.frames(4)]
    for frame, half in zip(frames, reduced):
        assert half.shape == (48, 64, 3)
        expected = detector.detect(half, score_threshold=0.0)
        assert frame.detections and [d.box for d in frame.detections] == [
            tuple(box) for box in resize_boxes(torch.tensor([d.box for d in expected]), (48, 64), IMAGE_SIZE).tolist()
        ]


def test_a_bad_video_is_skipped_with_a_warning_or_stops_the_run(checkpoint, tmp_path, caplog):
    clip = write_clip(tmp_path / "clip.mp4", num_frames=2)
    garbage, truncated, no_frames = tmp_path / "garbage.mp4", tmp_path / "truncated.mp4", tmp_path / "no_frames.avi"
    garbage.write_bytes(b"not a video" * 100)
    truncated.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    with av.open(str(no_frames), "w") as out:  # a header, no frame
        stream = out.add_stream("mpeg4", rate=RATE)
        stream.width, stream.height = 64, 48
        out.start_encoding()
    result = predict(checkpoint, [garbage, truncated, no_frames, clip], output=tmp_path / "out", device="cpu", quiet=True)
    assert list(result.videos) == [clip] and [file for file, _ in result.skipped] == [str(garbage), str(truncated), str(no_frames)]
    assert f"skipping {garbage}: cannot read video (Invalid data found" in caplog.text and f"skipping {truncated}: cannot read video" in caplog.text
    assert f"skipping {no_frames}: video holds no frame that can be decoded" in caplog.text
    written = sorted(p.name for p in (tmp_path / "out").iterdir())  # the lines of a broken video's frames read: none
    assert written == ["clip.jsonl", "clip.mp4", "detections.json", "detections.jsonl", "no_frames.jsonl"]
    assert (tmp_path / "out" / "no_frames.jsonl").read_text() == ""
    stale = tmp_path / "out" / "no_frames.mp4"  # as an earlier run with a readable no_frames.avi wrote it
    stale.write_bytes(b"an earlier run's video")
    predict(checkpoint, [no_frames], output=tmp_path / "out", overwrite=True, device="cpu", quiet=True)
    assert not stale.exists()  # replaced by nothing: it would sit beside this run's lines of the same name
    with pytest.raises(DataError, match=f"^{truncated}: cannot read video"):
        predict(checkpoint, [clip, truncated], output=tmp_path / "stop", on_bad_image="error", device="cpu", quiet=True)
    assert len(read_lines(tmp_path / "stop" / "clip.jsonl")) == 2 and (tmp_path / "stop" / "clip.mp4").is_file()


def interrupt_third_forward(detector: Detector, monkeypatch) -> None:
    """Ctrl-C during the third forward pass of ``detector``'s model (two passes done)."""
    forward, calls = detector.model.forward, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return forward(*args, **kwargs)

    monkeypatch.setattr(detector.model, "forward", interrupted)


def test_an_interrupted_video_keeps_its_lines_and_leaves_no_partial_video(checkpoint, clip, tmp_path, monkeypatch):
    detector = Detector.from_checkpoint(checkpoint, device="cpu")
    interrupt_third_forward(detector, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        predict(detector, [clip], output=tmp_path / "out", quiet=True)
    assert [line["frame"] for line in read_lines(tmp_path / "out" / "clip.jsonl")] == [0, 1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip.jsonl", "detections.json", "detections.jsonl"]


def test_overwrite_replaces_a_link_under_a_videos_output_names_never_its_target(checkpoint, clip, tmp_path):
    before = clip.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    (out / "clip.jsonl").symlink_to(clip)  # the video's lines and its annotated video: links to the input itself
    (out / "clip.mp4").symlink_to(clip)
    predict(checkpoint, [clip], output=out, overwrite=True, device="cpu", quiet=True)
    assert clip.read_bytes() == before
    assert not (out / "clip.jsonl").is_symlink() and len(read_lines(out / "clip.jsonl")) == NUM_FRAMES
    assert not (out / "clip.mp4").is_symlink()


def test_a_video_past_the_file_size_limit_is_one_line(checkpoint, clip, tmp_path, monkeypatch, capsys):
    import resource
    import signal

    import fasterrcnn.runs.prediction as prediction

    save = prediction.atomic_save

    def limited(path, writer):  # no file may grow past 1 KB while the video is written (SIGXFSZ ignored: EFBIG)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))
        try:
            return save(path, writer)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, handler)

    monkeypatch.setattr(prediction, "atomic_save", limited)
    out = tmp_path / "out"
    args = ["predict", "--weights", str(checkpoint), str(clip), "--output", str(out), "--quiet", "--device", "cpu", "--precision", "f32"]
    code = main([*args, "--score-threshold", "1"])  # no detections: the lines stay short, the video does not fit
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err == f"fasterrcnn: error: {out / 'clip.mp4'}: cannot write the annotated video (the file size limit or quota is reached: File too large)"
    assert not (out / "clip.mp4").exists()


def test_folders_are_searched_recursively_and_their_subfolders_mirrored(checkpoint, tmp_path, capsys):
    root = tmp_path / "photos"
    for sub in ("a", "b", ".cache"):
        write_test_image((root / sub).mkdir(parents=True) or root / sub / "img.png")
    write_clip((root / "b" / "deep").mkdir(parents=True) or root / "b" / "deep" / "Clip.MKV", num_frames=6, container="matroska")
    earlier = root / "earlier"  # the output of an earlier run, inside the folder: never read
    earlier.mkdir()
    Image.new("RGB", (64, 48)).save(earlier / "x.jpg")
    (earlier / "detections.json").write_text("[]")

    out = tmp_path / "out"
    args = ["predict", "--weights", str(checkpoint), str(root), "--output", str(out), "--frame-stride", "2", "--device", "cpu", "--quiet"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert f"skipping folder {earlier}: it holds detections.json" in captured.err
    assert " detections on 2 images, " in captured.out and " detections on 3 frames of 1 videos (score >= 0.5); " in captured.out
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a/img.jpg", "b/deep/Clip.jsonl", "b/deep/Clip.mp4", "b/img.jpg", "detections.json", "detections.jsonl"]
    assert {d["image_id"] for d in json.loads((out / "detections.json").read_text())} == {"a/img", "b/img"}
    lines = read_lines(out / "detections.jsonl")
    assert [(line["image"], line["image_id"], line["height"], line["width"]) for line in lines] == [
        (str(root / "a" / "img.png"), "a/img", *IMAGE_SIZE), (str(root / "b" / "img.png"), "b/img", *IMAGE_SIZE)
    ]  # fmt: skip
    assert [line["frame"] for line in read_lines(out / "b" / "deep" / "Clip.jsonl")] == [0, 2, 4]
    with VideoReader(out / "b" / "deep" / "Clip.mp4") as annotated:
        assert annotated.rate == Fraction(RATE, 2) and sum(1 for _ in annotated.frames()) == 3

    with pytest.raises(ConfigError, match="would both write img.jpg"):
        predict(checkpoint, [root / "a" / "img.png", root / "b" / "img.png"], output=tmp_path / "flat")
    with pytest.raises(ConfigError, match=f"lies inside the input folder {root}"):
        predict(checkpoint, [root], output=root / "predictions")
    assert not (root / "predictions").exists()


def test_detections_jsonl_holds_every_image_read_before_an_error(checkpoint, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("1.png", "2.png"):
        write_test_image(photos / name)
    (photos / "zz_junk.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="zz_junk.png: cannot read image"):
        predict(checkpoint, [photos], output=tmp_path / "out", on_bad_image="error", device="cpu", quiet=True)
    lines = read_lines(tmp_path / "out" / "detections.jsonl")
    assert [line["image_id"] for line in lines] == ["1", "2"] and all(line["detections"] for line in lines)
    assert {d["image_id"] for d in json.loads((tmp_path / "out" / "detections.json").read_text())} == {"1", "2"}


def test_without_pyav_a_video_is_a_one_line_error_saying_how_to_install_it(checkpoint, clip, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    code = main(["predict", "--weights", str(checkpoint), str(clip), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"fasterrcnn: error: {clip}: reading videos needs PyAV: pip install 'fasterrcnn[video]'"
    assert not (tmp_path / "out").exists()  # refused before anything is written
    image = write_test_image(tmp_path / "photo.png")
    assert len(predict(checkpoint, [image], device="cpu", quiet=True).detections[image]) > 0  # images need no PyAV


@pytest.mark.parametrize("libx264", [True, False])
@pytest.mark.parametrize("size", [(96, 128), (97, 129)])
def test_the_video_writer_keeps_the_size_rate_and_pixels(tmp_path, monkeypatch, libx264, size):
    if not libx264:  # as in an FFmpeg build without libx264
        codec = av.codec.Codec
        monkeypatch.setattr(av.codec, "Codec", lambda name, mode="r": codec("libx264-missing" if name == "libx264" else name, mode))
    height, width = size
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[10:50, 20:90] = (250, 200, 0)
    with open(tmp_path / "out.mp4", "wb") as f, VideoWriter(f, width, height, Fraction(30000, 1001)) as writer:
        for _ in range(3):
            writer.write(rgb)
    with av.open(str(tmp_path / "out.mp4")) as container:
        stream = container.streams.video[0]
        expected = ("h264", "yuv420p" if width % 2 == 0 else "yuv444p") if libx264 else ("mpeg4", "yuv420p")
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == expected
    with VideoReader(tmp_path / "out.mp4") as video:
        assert (video.width, video.height, video.rate) == (width, height, Fraction(30000, 1001))
        decoded = [to_rgb(frame) for _, _, frame in video.frames()]
    assert len(decoded) == 3 and all(np.abs(frame.astype(int) - rgb).mean() < 3 for frame in decoded)
