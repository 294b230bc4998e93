"""``predict``: what ``fasterrcnn predict`` does, from Python: detections on image and video files and folders.

    found = predict("runs/voc07/checkpoints/best.pt", ["photos/", "clip.mp4"], output="predictions")
    for path, detections in found.detections.items(): ...          # images
    for path, video in found.videos.items(): video.frames[0].detections

Inputs: files, and folders searched recursively for images (``IMAGE_SUFFIXES``) and videos
(``data.video.VIDEO_SUFFIXES``), any letter case, in sorted order. Hidden files and folders (``.name``) are
left out, folder links are not followed, and a subfolder that holds ``detections.json`` or
``detections.jsonl`` (an earlier predict's output) is skipped with a warning, so a run never reads outputs.

Outputs (``output=DIR``), each input at ``NAME``: its path relative to the folder given without its suffix
(``a/img`` for ``photos/a/img.jpg`` of ``photos/``), or the stem of a file given:

    DIR/NAME.jpg           an image with its detections drawn (on the image as decoded, reduced when large)
    DIR/NAME.mp4           a video with its detections drawn, same size, rate / frame_stride frames per second;
                           written under a temporary name and renamed when complete
    DIR/NAME.jsonl         a video's detections, one line per frame processed, written and flushed frame by frame:
                           {"frame": index from 0, "time": seconds, "precision", "detections": [DETECTION, ...]}
    DIR/detections.jsonl   the images' detections, one line per image read, written and flushed image by image:
                           {"image": path, "image_id": NAME, "height", "width", "precision", "detections": [DETECTION, ...]}
    DIR/detections.json    the images' detections as a COCO results list (image_id = NAME), written atomically
                           at the end, also when a bad image or Ctrl-C stops the run: it covers every image read

DETECTION is ``Detection.to_dict()``: ``{"box": [x1, y1, x2, y2] in the original image's or frame's pixels,
"label", "class_name", "score"}``, with ``"probabilities"`` (the box head's softmax over background and the
C classes, in label order) when ``probabilities`` is on; ``detections.json``'s entries then carry it too. An interrupted run keeps every line written; only the last line may be
cut, when the process is killed during its write.

Outputs are claimed before the model is loaded (``runs.folder.OutputFolder``): an existing output file is
refused unless ``overwrite``, ``DIR`` may neither hold an input nor lie inside an input folder, and two
inputs with the same output name (or one whose name is the folder of another's) are refused, as is an output
name that is a folder or lies below a link. A link under an output's name is replaced itself, never written
through (``fasterrcnn.paths``). A write that fails (a full disk, ``ulimit -f``) ends the run with a
``paths.WriteError`` naming the file, whatever ``on_bad_image`` says.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from fasterrcnn.config import check_score_threshold
from fasterrcnn.data.bad_images import check_policy
from fasterrcnn.data.video import VIDEO_SUFFIXES
from fasterrcnn.errors import ConfigError, DataError
from fasterrcnn.io import atomic_save
from fasterrcnn.paths import WriteError, open_replacing, writing
from fasterrcnn.runs.folder import OutputFolder
from fasterrcnn.runs.inference import load_detector

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from fasterrcnn.detector import Detection, Detector
    from fasterrcnn.inference import InferenceOptions

__all__ = ["IMAGE_SUFFIXES", "FrameDetections", "PredictInput", "PredictResult", "VideoResult", "find_inputs", "predict"]

logger = logging.getLogger("fasterrcnn")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
INPUT_SUFFIXES = IMAGE_SUFFIXES + VIDEO_SUFFIXES
OUTPUT_MARKERS = ("detections.json", "detections.jsonl")  # files that make a folder a predict output folder
PICTURE_MAX_SIDE = 4096  # the largest side of a picture drawn on an image read whole for slicing
READ_AHEAD = 2  # images or video frames decoded ahead of the model, besides a batch being gathered


class FrameDetections(NamedTuple):
    """One processed video frame: ``index`` from 0 among all frames, ``time`` in seconds, its ``detections``."""

    index: int
    time: float
    detections: list[Detection]


@dataclass(frozen=True)
class VideoResult:
    """``frames``: per frame processed, its ``FrameDetections`` (the detections only: no pixels are kept);
    ``video`` and ``lines``: the annotated video and the JSON Lines written (None without an output folder)."""

    frames: list[FrameDetections]
    video: Path | None = None
    lines: Path | None = None


@dataclass(frozen=True)
class PredictResult:
    """``detections``: per image read, its detections (original pixels); ``videos``: per video read, its
    ``VideoResult``; ``skipped``: ``(file, problem)`` of the inputs that could not be read; ``output``:
    the folder written (or None)."""

    detections: dict[Path, list[Detection]]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    output: Path | None = None
    videos: dict[Path, VideoResult] = field(default_factory=dict)


@dataclass(frozen=True)
class PredictInput:
    """An input file and ``name``, where its outputs go (see the module docstring); ``is_video`` by its suffix."""

    path: Path
    name: str

    @property
    def is_video(self) -> bool:
        return self.path.suffix.lower() in VIDEO_SUFFIXES

    def outputs(self) -> tuple[str, ...]:
        """Its output files, relative to the output folder."""
        return (f"{self.name}.mp4", f"{self.name}.jsonl") if self.is_video else (f"{self.name}.jpg",)


def _folder_files(root: Path) -> list[Path]:
    """The image and video files under ``root``, recursively (see the module docstring), sorted by relative path."""
    found: list[Path] = []

    def unreadable(error: OSError) -> None:
        logger.warning(f"skipping folder {error.filename}: cannot list it ({error.strerror or error})")

    for folder, subfolders, names in os.walk(root, onerror=unreadable):
        here = Path(folder)
        marker = next((m for m in OUTPUT_MARKERS if m in names), None)
        if here != root and marker is not None:
            logger.warning(f"skipping folder {here}: it holds {marker}, so it is the output of an earlier predict")
            subfolders.clear()
            continue
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        found.extend(here / name for name in names if not name.startswith(".") and Path(name).suffix.lower() in INPUT_SUFFIXES)
    return sorted(found, key=lambda path: path.relative_to(root).parts)


def find_inputs(inputs: Sequence[str | Path]) -> list[PredictInput]:
    """The image and video files named by ``inputs`` (files, and the files of folders searched recursively),
    each once, in order; ``DataError`` for a missing input or a folder without images or videos."""
    found: dict[Path, PredictInput] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = _folder_files(path)
            if not files:
                raise DataError(path, f"folder holds no images or videos ({', '.join(INPUT_SUFFIXES)})")
            entries = [PredictInput(file, file.relative_to(path).with_suffix("").as_posix()) for file in files]
        elif path.exists():  # a file; one that is not a regular file (a named pipe) is refused when read
            entries = [PredictInput(path, path.stem)]
        else:
            raise DataError(path, "no such image or video file or folder")
        for entry in entries:
            found.setdefault(entry.path.resolve(), entry)
    return list(found.values())


def _claim_outputs(folder: OutputFolder, inputs: Sequence[str | Path], found: list[PredictInput], overwrite: bool) -> None:
    """Claim every output of ``found`` in ``folder``; ``ConfigError`` when two inputs would write the same file."""
    writers: dict[str, Path] = {}
    for entry in found:
        for name in entry.outputs():
            if name in OUTPUT_MARKERS:
                raise ConfigError(f"{entry.path} would write {name} in --output, the name of the run's own file; rename it")
            if name in writers:
                raise ConfigError(f"{writers[name]} and {entry.path} would both write {name} in --output; rename one of them")
            writers[name] = entry.path
    input_folders = [Path(item) for item in inputs if Path(item).is_dir()]
    folder.claim([*writers, *OUTPUT_MARKERS], overwrite=overwrite, inputs=[entry.path for entry in found], input_folders=input_folders)


def read_ahead(items: Iterator, ahead: int) -> Iterator:
    """``items`` in order, each produced by one background thread up to ``ahead`` items before it is asked for
    (Pillow's and PyAV's decoders and torch release the GIL: the next images decode while the model runs).

    An exception of ``items`` is raised here, in its place. Closing this generator (``contextlib.closing``;
    Ctrl-C, an error, the end) stops the thread and waits for the item it is producing, so that what
    ``items`` reads (an open video) may be closed then. One thread: Pillow is decoded inside
    ``warnings.catch_warnings``, whose filters are the process's, so two decoders at once could leave
    each other's filters behind. The thread is a daemon: it never keeps the process alive.
    """
    done = object()
    produced: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                produced.put((item, None))
                if stop.is_set():
                    return
        except BaseException as error:  # any: raised in the reader's place, which never waits for an item that will not come
            produced.put((done, error))
        else:
            produced.put((done, None))

    thread = threading.Thread(target=produce, name="fasterrcnn-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = produced.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock its put, then let it finish the item it reads
            try:
                produced.get(timeout=0.05)
            except queue.Empty:
                pass


def _loaded(entries: Sequence[PredictInput], load: Callable) -> Iterator[tuple[PredictInput, tuple | DataError]]:
    """``(entry, load(entry.path))`` of each image, or ``(entry, DataError)`` for one that cannot be read."""
    for entry in entries:
        try:
            yield entry, load(entry.path)
        except DataError as error:
            yield entry, error


def _batches(loaded: Iterator[tuple[PredictInput, tuple | DataError]], batch_size: int):
    """``(batch, bad)`` in input order: ``batch`` up to ``batch_size`` consecutive images ``(entry, image, size)``
    of one tensor shape (no padding in the model: the detections of one image at a time), possibly
    empty; ``bad`` the ``(entry, DataError)`` that follows it, or None."""
    batch: list = []
    for entry, found in loaded:
        if isinstance(found, DataError):
            yield batch, (entry, found)
            batch = []
            continue
        if batch and found[0].shape != batch[0][1].shape:
            yield batch, None
            batch = []
        batch.append((entry, *found))
        if len(batch) == batch_size:
            yield batch, None
            batch = []
    if batch:
        yield batch, None


def _detect(
    detector: Detector, images: list[torch.Tensor], sizes: list[tuple[int, int] | None], score_threshold: float, inference: InferenceOptions,
    probabilities: bool = False,
) -> list[tuple[dict, dict]]:
    """Per image, the model's detections scoring >= ``score_threshold`` on it (CPU tensors; sliced and / or TTA
    by ``inference``, one image at a time; plain inference in one batch, with the class ``probabilities``), and the
    same in the pixels of the original image of its size (``fasterrcnn.data.images.in_original_pixels``)."""
    import torch

    from fasterrcnn.data.images import in_original_pixels
    from fasterrcnn.inference import detect_image

    if inference.plain:
        with torch.inference_mode(), detector.autocast(), detector.keeping_probabilities(probabilities):
            found = detector.model([image.to(detector.device) for image in images])
    else:
        found = [
            detect_image(detector.model, image, inference, device=detector.device, amp_dtype=detector.amp_dtype, score_threshold=score_threshold)
            for image in images
        ]  # fmt: skip
    pairs = []
    for detection, image, size in zip(found, images, sizes):
        keep = detection["scores"] >= score_threshold
        detection = {k: v[keep].cpu() for k, v in detection.items()}
        pairs.append((detection, {**detection, "boxes": in_original_pixels(detection["boxes"], image, size)}))
    return pairs


def _picture(image: torch.Tensor, detection: dict, class_names) -> Image.Image:
    """``image`` with ``detection`` drawn; a uint8 image (read whole for slicing) is drawn reduced by 2, 4 ...
    to at most ``PICTURE_MAX_SIDE`` pixels a side, its boxes scaled alike."""
    import torch

    from fasterrcnn.data.transforms import resize_boxes
    from fasterrcnn.inference import reduced_float
    from fasterrcnn.visualize import draw_detections

    boxes = detection["boxes"]
    if image.dtype == torch.uint8:
        factor = 1
        while max(image.shape[1:]) > PICTURE_MAX_SIDE * factor:
            factor *= 2
        reduced = reduced_float(image, factor)
        boxes = resize_boxes(boxes, tuple(image.shape[1:]), tuple(reduced.shape[1:]))
        image = reduced
    return draw_detections(image, boxes, detection["labels"], detection["scores"], class_names)


def _json_line(record: dict) -> str:
    return json.dumps(record, allow_nan=False) + "\n"


def _predict_video(
    detector: Detector, entry: PredictInput, folder: OutputFolder | None, *, score_threshold: float, frame_stride: int, quiet: bool,
    inference: InferenceOptions,
    probabilities: bool = False,
) -> VideoResult:
    """Detect objects in every ``frame_stride``-th frame of a video; with ``folder``, write its annotated video
    and JSON Lines (see the module docstring). The frames are decoded (to RGB arrays) ``READ_AHEAD`` ahead
    of the model, in a background thread (``read_ahead``): at most that many more in memory."""
    import numpy as np
    import torch
    from PIL import Image
    from tqdm import tqdm

    from fasterrcnn.data.images import reduction_factor, to_image_tensor
    from fasterrcnn.data.video import VideoReader, VideoWriter, to_rgb
    from fasterrcnn.visualize import draw_detections

    frames: list[FrameDetections] = []
    with VideoReader(entry.path) as video:
        size = (video.height, video.width)
        transform = getattr(detector.model, "transform", None)
        reduce = 1 if transform is None else reduction_factor(size, transform.min_size, transform.max_size)
        total = None if video.num_frames is None else -(-video.num_frames // frame_stride)

        sliced = inference.slice is not None

        def decoded(drawn: bool) -> Iterator[tuple[int, float, np.ndarray | None, np.ndarray | None]]:
            """``(index, time, full, small)``: the frame as RGB at full size (when drawn, sliced or not reduced) and
            reduced (when neither sliced nor at full size), from the decoded frame."""
            for index, time, frame in video.frames(frame_stride):
                full = to_rgb(frame) if drawn or reduce == 1 or sliced else None
                yield index, time, full, None if sliced or reduce == 1 else to_rgb(frame, reduce)

        def run(writer: VideoWriter | None, lines) -> None:
            with tqdm(total=total, desc=entry.path.name, unit="frame", disable=quiet or None, leave=False) as bar, \
                    closing(read_ahead(decoded(writer is not None), READ_AHEAD)) as ahead:  # fmt: skip
                for index, time, full, small in ahead:
                    if sliced:  # uint8 at full resolution, cut into tiles
                        image, reduced = torch.from_numpy(full).permute(2, 0, 1), False
                    else:  # a large frame reduced before any float copy
                        image, reduced = to_image_tensor(full if small is None else small), small is not None
                    [(_, original)] = _detect(detector, [image], [size if reduced else None], score_threshold, inference, probabilities)
                    detections = detector.as_detections(original)
                    frames.append(FrameDetections(index, time, detections))
                    if lines is not None:
                        record = {"frame": index, "time": time, "precision": detector.precision, "detections": [d.to_dict() for d in detections]}
                        with writing(lines_path, "the video's detections"):
                            lines.write(_json_line(record))
                            lines.flush()
                    if writer is not None:  # drawn on the full-size frame, boxes in its pixels
                        drawn = draw_detections(Image.fromarray(full), original["boxes"], original["labels"], original["scores"], detector.class_names)
                        writer.write(np.asarray(drawn))
                    bar.update()

        if folder is None:
            run(None, None)
            return VideoResult(frames)
        video_path, lines_path = (folder.path / name for name in entry.outputs())
        video_path.parent.mkdir(parents=True, exist_ok=True)
        video_path.unlink(missing_ok=True)  # an earlier run's (claimed with overwrite): never beside this run's lines
        with open_replacing(lines_path) as lines:

            def annotate(file) -> None:
                with VideoWriter(file, video.width, video.height, video.rate / frame_stride) as writer:
                    run(writer, lines)

            with writing(video_path, "the annotated video"):
                atomic_save(video_path, annotate)
    return VideoResult(frames, video_path, lines_path)


def predict(
    weights: str | Path | Detector,
    inputs: Sequence[str | Path],
    *,
    output: str | Path | None = None,
    overwrite: bool = False,
    score_threshold: float = 0.5,
    on_bad_image: str = "skip",
    frame_stride: int = 1,
    preset: str | None = None,
    classes: Sequence[str] | str | None = None,
    device: str = "auto",
    precision: str = "auto",
    quiet: bool = False,
    slice: int | None = None,
    overlap: float = 0.2,
    full_image: bool = True,
    tta: bool = False,
    probabilities: bool = False,
    batch_size: int = 1,
) -> PredictResult:
    """Detect objects in image and video files and folders with a checkpoint, a ``Detector`` or (``preset``)
    a torchvision file.

    With ``output``, writes the files of the module docstring. Videos need PyAV (``pip install
    'fasterrcnn[video]'``); ``frame_stride=N`` processes every N-th frame of a video. A bad image or video
    (missing, truncated, not decodable) is skipped with a warning (``on_bad_image="skip"``) or stops the run
    (``"error"``). An image or frame much larger than the model's input is decoded reduced (memory stays
    bounded). ``precision``: the model's (``Detector``), recorded in every line of the ``.jsonl`` files.
    ``probabilities``: each detection also carries its class probabilities (plain inference only).
    Unless ``quiet``, prints one line per image and shows a progress bar over a video's frames.

    ``slice`` / ``overlap`` / ``full_image`` / ``tta``: sliced inference and test-time augmentation, as
    ``Detector.detect`` (``fasterrcnn.inference``). With ``slice``, images (up to 150 megapixels) and frames
    are read whole as uint8, and the picture is drawn reduced to at most ``PICTURE_MAX_SIDE`` pixels a side.

    Images are decoded ``READ_AHEAD`` ahead of the model in a background thread (``read_ahead``), and
    ``batch_size=N`` runs up to N consecutive images of the same size in one forward pass (plain inference
    only: sliced inference and TTA batch each image's own tiles and passes); the outputs and their order are
    those of one image at a time, the detections up to float rounding (batch 1: byte for byte). Images of
    different sizes are not batched together: the model would pad them to one size, which moves the anchors
    and proposals near the padded edges.
    """
    from fasterrcnn.inference import InferenceOptions, check_probabilities, load_uint8

    from fasterrcnn.data.video import require_av
    from fasterrcnn.evaluation import detections_to_results, save_results

    check_policy(on_bad_image)
    check_score_threshold(score_threshold)
    inference = InferenceOptions(slice=slice, overlap=overlap, full_image=full_image, tta=tta)
    check_probabilities(probabilities, inference)
    if isinstance(frame_stride, bool) or not isinstance(frame_stride, int) or frame_stride < 1:
        raise ConfigError(f"frame_stride must be a whole number >= 1, got {frame_stride!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if batch_size > 1 and not inference.plain:
        raise ConfigError("batch_size > 1 goes with plain inference (no slice, no tta): those already batch each image's tiles and passes")
    found = find_inputs(inputs)
    videos = [entry for entry in found if entry.is_video]
    if videos:
        require_av(videos[0].path)  # before the long work
    folder = OutputFolder(output) if output is not None else None
    if folder is not None:
        _claim_outputs(folder, inputs, found, overwrite)
    detector = load_detector(weights, device=device, precision=precision, preset=preset, classes=classes)
    detections: dict[Path, list[Detection]] = {}
    video_results: dict[Path, VideoResult] = {}
    skipped: list[tuple[str, str]] = []
    results: list[dict] = []
    lines_path = folder.path / "detections.jsonl" if folder is not None else None
    lines = open_replacing(lines_path) if folder is not None else None  # a link there is replaced, never written through
    load = (lambda path: (load_uint8(path), None)) if slice is not None else detector.load  # (image, original size or None)

    def bad(entry: PredictInput, error: DataError) -> None:
        if on_bad_image == "error" or isinstance(error, WriteError):  # a write that fails is an output's, never skipped
            raise error
        logger.warning(f"skipping {error}")
        skipped.append((str(entry.path), error.problem))

    def write(entry: PredictInput, image: torch.Tensor, size: tuple[int, int] | None, detection: dict, original: dict) -> None:
        detections[entry.path] = detector.as_detections(original)
        results.extend(detections_to_results(entry.name, original, detector.class_names, detector.label_to_category_id))
        if folder is not None:
            height, width = size or tuple(image.shape[1:])
            record = {"image": str(entry.path), "image_id": entry.name, "height": height, "width": width, "precision": detector.precision}
            with writing(lines_path, "the detections"):
                lines.write(_json_line({**record, "detections": [d.to_dict() for d in detections[entry.path]]}))
                lines.flush()
            picture = _picture(image, detection, detector.class_names)
            target = folder.path / entry.outputs()[0]
            with writing(target, "the picture"):
                target.parent.mkdir(parents=True, exist_ok=True)
                atomic_save(target, lambda f: picture.save(f, format="JPEG", quality=92))
        if not quiet:
            print(f"{entry.path}: {len(detections[entry.path])} detections", flush=True)

    try:
        for is_video, run in itertools.groupby(found, key=lambda entry: entry.is_video):
            if is_video:
                for entry in run:
                    try:
                        video = _predict_video(
                            detector, entry, folder, score_threshold=score_threshold, frame_stride=frame_stride, quiet=quiet,
                            inference=inference, probabilities=probabilities,
                        )  # fmt: skip
                    except DataError as error:
                        bad(entry, error)
                        continue
                    video_results[entry.path] = video
                    if not quiet:
                        count = sum(len(frame.detections) for frame in video.frames)
                        print(f"{entry.path}: {count} detections on {len(video.frames)} frames", flush=True)
                continue
            # a run of images, decoded ahead of the model in one background thread (read_ahead), in batches
            with closing(read_ahead(_loaded(list(run), load), READ_AHEAD + batch_size - 1)) as loaded:
                for batch, failed in _batches(loaded, batch_size):
                    if batch:
                        _, images, sizes = zip(*batch)
                        pairs = _detect(detector, list(images), list(sizes), score_threshold, inference, probabilities)
                        for (entry, image, size), (detection, original) in zip(batch, pairs):
                            write(entry, image, size, detection, original)
                    if failed is not None:
                        bad(*failed)
    finally:
        if folder is not None:
            with writing(lines_path, "the detections"):
                lines.close()
            with writing(folder.path / "detections.json", "the detections"):
                save_results(folder.path / "detections.json", results)
    return PredictResult(detections, skipped, folder.path if folder else None, video_results)
