"""A video folder with one subfolder per class: root/<class>/**/<video>; each file is one clip."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from evo.data.sources._images import inside, natural_key
from evo.data.sources.base import SOURCES, Split
from evo.errors import DataError

if TYPE_CHECKING:
    from evo.data.video.frames import VideoFrames


def sampling_from(sampling: str, frames: int, fps: float, detector: str | None, threshold: float | None,
                  min_shot: float, size: int | Sequence[int] | None):
    """The flat source options (what a YAML search space can name) as a `Sampling`."""
    from evo.data.video.sample import Sampling

    return Sampling(mode=sampling, frames=frames, fps=fps, detector=detector, threshold=threshold,
                    min_shot=min_shot, size=size)


def video_clips(root: Path):
    """(clips, classes) of a video folder, in natural order."""
    from evo.data.video.decode import VIDEO_EXTENSIONS
    from evo.data.video.frames import Clip, video_files

    class_dirs = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                        key=lambda d: natural_key(d.name))
    clips = []
    for d in class_dirs:
        inside(root, d.name)
        files = sorted(video_files(d, VIDEO_EXTENSIONS), key=lambda p: natural_key(str(p.relative_to(d))))
        clips += [Clip(str(inside(root, f.relative_to(root))), d.name) for f in files]
    return clips, [d.name for d in class_dirs]


def video_folder_frames(
    path: str | os.PathLike,
    sampling: str = "uniform",
    frames: int = 8,
    fps: float = 1.0,
    detector: str | None = "content",
    threshold: float | None = None,
    min_shot: float = 0.4,
    size: int | Sequence[int] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[VideoFrames, VideoFrames]:
    """Classes are the subfolder names; each video file is a clip of its folder's class. Frames are
    sampled per `sampling` ('uniform': `frames` per clip; 'fps': `fps` a second; 'shots': `frames`
    keyframes per detected shot) and carry their clip id as `ImageSet.groups`; the train/test split
    is by clip. Unreadable videos are skipped and listed in `ImageSet.skipped` with the reason.
    """
    from evo.data.video.frames import read_videos

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"video folder {root} does not exist or is not a folder")
    clips, classes = video_clips(root)
    if not clips:
        raise DataError(f"video folder {root} has no videos in class subfolders; expected {root}/<class>/<clip>.mp4")
    spec = sampling_from(sampling, frames, fps, detector, threshold, min_shot, size)
    return read_videos(clips, classes, spec, f"video folder {root}").split(test_fraction, seed)


def images_only(frames_fn):
    """The registered source for a `*_frames` reader: its (train, test) ImageSets without the per-frame
    clip/shot/time. `functools.wraps` keeps the reader's signature, which `load_source` binds options to."""

    @functools.wraps(frames_fn)
    def source(*args, **kwargs) -> Split:
        train, test = frames_fn(*args, **kwargs)
        return train.data, test.data

    return source


video_folder = SOURCES.register("video_folder")(images_only(video_folder_frames))
