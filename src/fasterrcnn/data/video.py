"""Video files: frames decoded one at a time (``VideoReader``), annotated frames encoded to an .mp4 (``VideoWriter``).

Both need PyAV (``pip install 'fasterrcnn[video]'``), FFmpeg's decoders and encoders; it is imported when a
video is opened, so the rest of the package works without it (``require_av`` says how to install it).

    with VideoReader("clip.mp4") as video:              # its first video stream
        for index, time, frame in video.frames():       # frame: av.VideoFrame, decoded when reached
            rgb = to_rgb(frame)                          # [H, W, 3] uint8
    with open("out.mp4", "wb") as f, VideoWriter(f, width, height, rate) as writer:
        writer.write(rgb)

Memory: one decoded frame exists at a time (FFmpeg's decoder keeps its few reference frames, the encoder
its 10-frame lookahead), whatever the length of the video: predicting on a 4K video peaks at ~1.2 GB. ``to_rgb(frame, reduce=f)`` converts a frame at ``1/f`` of its size in one swscale
pass (area averaging), so a frame much larger than the model's input never exists as a full-size float
tensor (``data.images.reduction_factor`` picks ``f``, as for large images).

A file FFmpeg cannot open or decode (missing, empty, truncated, not a video, no video stream) raises
``DataError(path, problem)``: one line naming the file. Rotation metadata (phone videos) is not applied:
frames are read as stored, like ``ffmpeg -noautorotate``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from fractions import Fraction
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from fasterrcnn.errors import ConfigError, DataError
from fasterrcnn.reading import check_regular_file

if TYPE_CHECKING:
    import av

__all__ = ["VIDEO_SUFFIXES", "VideoReader", "VideoWriter", "require_av", "to_rgb"]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
DEFAULT_RATE = Fraction(25)  # frames per second of a stream that states no rate


def require_av(path=None):
    """The ``av`` module (PyAV), or a one-line ``ConfigError`` (naming ``path``) saying how to install it."""
    try:
        import av
    except ImportError:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}reading videos needs PyAV: pip install 'fasterrcnn[video]'") from None
    return av


def _problem(error: Exception) -> str:
    """An FFmpeg error's reason without its errno and file name ("Invalid data found when processing input")."""
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


class VideoReader:
    """A video file's first video stream, opened for reading (a context manager).

    Attributes:
        width, height: the frames' size in pixels (as stored).
        rate: frames per second (the stream's average rate; ``DEFAULT_RATE`` when it states none).
        num_frames: the frame count the container states, or None when it states none (e.g. some .mkv / .webm).
    """

    def __init__(self, path: str | os.PathLike):
        av = require_av(path)
        self.path = path
        try:
            if check_regular_file(path).st_size == 0:  # a named pipe would block the open
                raise DataError(path, "video file is empty (0 bytes)")
            self._container = av.open(os.fspath(path))
        except (av.error.FFmpegError, OSError) as e:
            raise DataError(path, f"cannot read video ({_problem(e)})") from None
        if not self._container.streams.video:
            self._container.close()
            raise DataError(path, "holds no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"  # frame and slice threads: the same frames, decoded faster
        self.width, self.height = self._stream.codec_context.width, self._stream.codec_context.height
        self.rate = Fraction(self._stream.average_rate or self._stream.guessed_rate or DEFAULT_RATE)
        self.num_frames = self._stream.frames or None

    def frames(self, stride: int = 1) -> Iterator[tuple[int, float, av.VideoFrame]]:
        """``(index, time, frame)`` of every ``stride``-th frame, in presentation order, decoded one at a time:
        ``index`` counts all decoded frames from 0; ``time`` is the frame's presentation time in seconds
        (``index / rate`` when the frame has no timestamp). Raises ``DataError`` naming the file (and the
        frame) at data the decoder cannot read, or when the stream has no frame."""
        av = require_av(self.path)
        index = 0
        decoded = self._container.decode(self._stream)
        while True:
            try:
                frame = next(decoded)
            except StopIteration:
                if index == 0:
                    raise DataError(self.path, "video holds no frame that can be decoded") from None
                return
            except (av.error.FFmpegError, OSError) as e:
                raise DataError(self.path, f"cannot decode frame {index} ({_problem(e)})") from None
            if index % stride == 0:
                time = frame.time if frame.time is not None else float(index / self.rate)
                yield index, time, frame
            index += 1

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def to_rgb(frame: av.VideoFrame, reduce: int = 1) -> np.ndarray:
    """A decoded frame as ``[H, W, 3]`` uint8 RGB; ``reduce=f`` gives it at ``1/f`` of its size (each side
    ``ceil(side / f)``, area averaging), converted in the same pass, without a full-size RGB copy."""
    if reduce == 1:
        return frame.to_ndarray(format="rgb24")
    width, height = math.ceil(frame.width / reduce), math.ceil(frame.height / reduce)
    return frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()


class VideoWriter:
    """Encodes ``[height, width, 3]`` uint8 RGB frames at ``rate`` frames per second into an .mp4 on ``file``
    (a binary file object open for writing and seekable, e.g. from ``io.atomic_save``); a context manager,
    the encoder is flushed and the file completed on leaving.

    The codec is H.264 (libx264, constant quality) in 4:2:0 chroma, which browsers and players show; an odd
    width or height, which 4:2:0 cannot hold, gets 4:4:4 (desktop players such as VLC and ffplay show it,
    browsers do not). Where PyAV's FFmpeg lacks libx264: MPEG-4 Part 2.
    """

    def __init__(self, file: BinaryIO, width: int, height: int, rate: Fraction):
        av = require_av()
        self._container = av.open(file, "w", format="mp4")
        try:
            av.codec.Codec("libx264", "w")
            codec, pixels = "libx264", "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
            # x264 "veryfast" holds 10 frames of lookahead ("medium": 40, 2 GB of 4K frames) and encodes faster
            options = {"preset": "veryfast"}
        except ValueError:  # UnknownCodecError, a build without libx264: mpeg4 takes any size in 4:2:0
            codec, pixels, options = "mpeg4", "yuv420p", {}
        # MPEG-4 Part 2 takes time bases up to 1/65535; the rate of a variable-rate stream may be an odd fraction
        self._stream = self._container.add_stream(codec, rate=Fraction(rate).limit_denominator(65535), options=options)
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, pixels
        if codec == "mpeg4":  # its default 200 kbit/s blurs the drawn labels; ~0.3 bit per pixel keeps them sharp
            self._stream.bit_rate = max(200_000, int(0.3 * width * height * rate))
        self._av = av

    def write(self, rgb: np.ndarray) -> None:
        """Encode the next frame (``[height, width, 3]`` uint8 RGB)."""
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        self._container.mux(self._stream.encode(frame))

    def close(self) -> None:
        """Flush the encoder's delayed frames and write the container's index."""
        try:
            self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:  # the file is being abandoned: release the container without flushing
            self._container.close()
