"""Video collections: streaming PyAV decode, frame sampling, shot detection, clip-level prediction.

Needs the optional `video` extra (PyAV; PySceneDetect for the default `content` shot detector).
"""

from evo.data.video.decode import VIDEO_EXTENSIONS, FrameBatch, VideoError, VideoInfo, iter_frames, probe
from evo.data.video.frames import Clip, VideoFrames, read_videos
from evo.data.video.predict import clip_scores, predict_video, shot_frames
from evo.data.video.sample import ClipReader, Sampling, read_clip
from evo.data.video.shots import DETECTORS, Shot, boundary_scores, make_detector


def load_videos(source, **options) -> tuple[VideoFrames, VideoFrames]:
    """(train, test) VideoFrames of a video folder or a video CSV manifest, split by clip.

    Options as the `video_folder` / `video_csv` sources. Unlike `load_source`, each frame keeps its
    clip, shot and time, for clip-level evaluation."""
    from pathlib import Path

    from evo.data.sources.video_folder import video_folder_frames
    from evo.data.sources.video_manifest import video_csv_frames

    path = Path(source)
    if path.is_dir():
        return video_folder_frames(path, **options)
    if path.suffix.lower() == ".csv":
        return video_csv_frames(path, **options)
    raise VideoError(f"{source} is neither a video folder (one subfolder per class) nor a .csv manifest")


__all__ = [
    "DETECTORS",
    "VIDEO_EXTENSIONS",
    "Clip",
    "ClipReader",
    "FrameBatch",
    "Sampling",
    "Shot",
    "VideoError",
    "VideoFrames",
    "VideoInfo",
    "boundary_scores",
    "clip_scores",
    "predict_video",
    "shot_frames",
    "iter_frames",
    "load_videos",
    "make_detector",
    "probe",
    "read_clip",
    "read_videos",
]
