"""Streaming video decode with PyAV: frames arrive in bounded batches, never a whole video in memory.

Every failure is a `VideoError` naming the file: unreadable or truncated containers, files with no
video stream (audio only), streams whose codec this FFmpeg build cannot decode, and clips that
decode to zero frames. Folder and manifest sources catch it, skip the file and list it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evo.errors import ConfigError, DataError

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".wmv", ".flv", ".ogv", ".3gp"}
)


class VideoError(DataError):
    """A video file is unreadable, truncated, has no video stream, no frames, or an undecodable codec."""


def require_av() -> Any:
    """The `av` module, or a ConfigError saying how to install it (video support is an optional extra)."""
    try:
        import av
    except ImportError:
        raise ConfigError("video support needs PyAV: pip install 'evo[video]' (or pip install av)") from None
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What the container says before decoding: `duration` is None and `frames` 0 when it does not know."""

    path: str
    width: int
    height: int
    fps: float
    duration: float | None
    frames: int
    codec: str


@dataclass(frozen=True)
class FrameBatch:
    """Consecutive decoded frames: `index` counts from the clip's first frame, `time` is in seconds."""

    frames: np.ndarray  # uint8 (B, H, W, 3)
    time: np.ndarray  # float64 (B,)
    index: np.ndarray  # int64 (B,)


def _open(path: str | os.PathLike) -> Any:
    av = require_av()
    p = Path(path)
    if not p.is_file():
        raise VideoError(f"video {p} does not exist or is not a file")
    if p.stat().st_size == 0:
        raise VideoError(f"video {p} is empty (0 bytes, zero length); remove it or write the file again")
    try:
        return av.open(str(p), mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"video {p} cannot be opened ({e}); the file is corrupt, truncated or not a video") from None


def _video_stream(container: Any, path: str | os.PathLike) -> Any:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        if not kinds:
            raise VideoError(f"{path} holds no streams at all: an empty (zero-length) video; write it again")
        raise VideoError(f"{path} has no video stream (it holds only: {', '.join(kinds)}); "
                         "an audio-only file cannot give frames")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx is None or getattr(ctx, "codec", None) is None:
        raise VideoError(f"{path}: unsupported codec: this FFmpeg build has no decoder for its video stream; "
                         "re-encode it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4")
    return stream


def probe(path: str | os.PathLike) -> VideoInfo:
    """Size, frame rate, duration and codec from the container headers (decodes nothing)."""
    av = require_av()
    with _open(path) as container:
        stream = _video_stream(container, path)
        try:
            fps = float(stream.average_rate or stream.guessed_rate or stream.base_rate or 0) or 25.0
        except (ZeroDivisionError, av.error.FFmpegError):
            fps = 25.0
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        return VideoInfo(str(path), int(stream.codec_context.width), int(stream.codec_context.height), fps,
                         duration, int(stream.frames or 0), stream.codec_context.codec.name)


def _seek(container: Any, stream: Any, start: float, origin: float, fps: float) -> Iterator[Any]:
    """Decoded frames from at or before `start`. Seeking lands on a keyframe before the target in
    indexed containers, but can overshoot in MPEG-TS and friends: then it backs off (1, 2, 4 ... s)
    and finally decodes from the beginning."""
    import itertools

    av = require_av()
    back = 0.0
    while True:
        target = max(start - back, 0.0)
        try:
            container.seek(int((target + origin) / stream.time_base), stream=stream, backward=True, any_frame=False)
        except av.error.FFmpegError:
            container.seek(0, stream=stream)
            return container.decode(stream)
        frames = container.decode(stream)
        first = next(frames, None)
        if first is None or first.time is None or target == 0.0 or float(first.time) - origin <= start + 0.5 / fps:
            return itertools.chain([first] if first is not None else [], frames)
        back = 1.0 if back == 0 else back * 2


def iter_frames(
    path: str | os.PathLike,
    start: float = 0.0,
    end: float | None = None,
    size: tuple[int, int] | None = None,
    batch: int = 64,
) -> Iterator[FrameBatch]:
    """Decode frames with `start <= time < end` as RGB batches of at most `batch` frames.

    `size` (height, width) scales each frame inside FFmpeg's swscale, so a big video never
    materialises at full resolution in Python. Peak memory is one batch, whatever the video's length.
    Raises VideoError when the file cannot be read, or decodes to no frame in [start, end).
    """
    av = require_av()
    if batch < 1:
        raise ConfigError(f"batch must be >= 1; got {batch}")
    if end is not None and end <= start:
        raise VideoError(f"{path}: clip [{start}, {end}) s is empty; end must be after start")
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        # times count from the stream's first frame (MPEG-TS and some MP4s start at a nonzero pts)
        origin = float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base else 0.0
        decoded = _seek(container, stream, start, origin, fps) if start > 0 else container.decode(stream)
        kw = {} if size is None else {"height": int(size[0]), "width": int(size[1])}
        frames: list[np.ndarray] = []
        times: list[float] = []
        n = 0
        try:
            for i, frame in enumerate(decoded):
                t = float(frame.time) - origin if frame.time is not None else i / fps
                if t < start - 1e-6:
                    continue
                if end is not None and t >= end - 1e-6:
                    break
                frames.append(frame.to_ndarray(format="rgb24", **kw))
                times.append(t)
                if len(frames) == batch:
                    yield FrameBatch(np.stack(frames), np.asarray(times), np.arange(n, n + len(frames)))
                    n += len(frames)
                    frames, times = [], []
        except (av.error.FFmpegError, ValueError) as e:
            if not frames and n == 0:
                raise VideoError(f"{path}: decoding failed ({e}); the file is corrupt or truncated") from None
            raise VideoError(f"{path}: decoding failed after {n + len(frames)} frames ({e}); "
                             "the file is corrupt or truncated") from None
        if frames:
            yield FrameBatch(np.stack(frames), np.asarray(times), np.arange(n, n + len(frames)))
            n += len(frames)
        if n == 0:
            where = f" in [{start}, {end}) s" if start > 0 or end is not None else ""
            raise VideoError(f"{path} has no decodable frame{where}; the clip is empty (zero length)")
