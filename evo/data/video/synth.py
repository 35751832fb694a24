"""Generated video collections with known ground truth, for tests and benchmarks.

Each shot shows one grayscale image (e.g. a Fashion-MNIST item) tinted with a random colour on a
random background, panning and zooming, with Gaussian noise; consecutive shots are joined by hard
cuts. Because every shot's class and its start and end are recorded, shot detection (precision,
recall) and per-segment predictions can be scored exactly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from evo.data.video.decode import require_av


@dataclass(frozen=True)
class SynthShot:
    """Ground truth of one generated shot: its class and its [start, end) in seconds."""

    label: str
    start: float
    end: float


def _render(item: np.ndarray, n: int, size: int, rng: np.random.Generator, noise: float,
            motion: bool) -> np.ndarray:
    """n frames (n, size, size, 3) of `item` panning and zooming over a background."""
    bg = rng.integers(0, 256, 3)
    tint = rng.integers(96, 256, 3)
    z0, z1 = (rng.uniform(0.55, 0.75), rng.uniform(0.75, 0.95)) if motion else (0.8, 0.8)
    if rng.random() < 0.5:
        z0, z1 = z1, z0
    dx, dy = (rng.uniform(-0.15, 0.15, 2) * size) if motion else (0.0, 0.0)
    src = Image.fromarray(item)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        a = i / max(n - 1, 1)
        side = max(int(round(size * (z0 + (z1 - z0) * a))), 4)
        alpha = np.asarray(src.resize((side, side), Image.Resampling.BILINEAR), np.float32)[..., None] / 255
        frame = np.broadcast_to(bg.astype(np.float32), (size, size, 3)).copy()
        x = int(round((size - side) / 2 + dx * (a - 0.5)))
        y = int(round((size - side) / 2 + dy * (a - 0.5)))
        x, y = min(max(x, 0), size - side), min(max(y, 0), size - side)
        patch = frame[y:y + side, x:x + side]
        frame[y:y + side, x:x + side] = patch * (1 - alpha) + tint * alpha
        if noise:
            frame += rng.normal(0, noise, frame.shape)
        out[i] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def write_video(path: str | os.PathLike, shots: Sequence[tuple[np.ndarray, str]], *, fps: int = 25,
                size: int = 64, shot_seconds: tuple[float, float] = (1.0, 2.0), noise: float = 6.0,
                motion: bool = True, seed: int = 0, codec: str = "libx264") -> list[SynthShot]:
    """Encode one video of `shots` ((gray uint8 image, class) each) joined by hard cuts.

    Frames are rendered and encoded shot by shot, so a long video never sits in memory.
    Returns each shot's ground truth.
    """
    av = require_av()
    rng = np.random.default_rng(seed)
    truth: list[SynthShot] = []
    frame_no = 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "18"}
        for item, label in shots:
            n = max(int(round(rng.uniform(*shot_seconds) * fps)), 1)
            frames = _render(np.asarray(item, np.uint8), n, size, rng, noise, motion)
            for f in frames:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            truth.append(SynthShot(str(label), frame_no / fps, (frame_no + n) / fps))
            frame_no += n
        out.mux(stream.encode(None))
    return truth


def write_collection(root: str | os.PathLike, images: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                     clips_per_class: int, shots_per_clip: int = 3, seed: int = 0, **video_opts) -> dict[str, list[SynthShot]]:
    """A video folder root/<class>/clip<k>.mp4: each clip shows `shots_per_clip` different images of its
    class (cuts between them). Returns the ground truth per written file."""
    rng = np.random.default_rng(seed)
    truth: dict[str, list[SynthShot]] = {}
    for c, name in enumerate(classes):
        name = str(name).replace("/", "-")  # folder names are the labels
        pool = np.flatnonzero(np.asarray(labels) == c)
        for k in range(clips_per_class):
            pick = rng.choice(pool, size=shots_per_clip, replace=len(pool) < shots_per_clip)
            path = Path(root) / str(name) / f"clip{k}.mp4"
            truth[str(path)] = write_video(path, [(images[i], name) for i in pick],
                                           seed=int(rng.integers(2**31)), **video_opts)
    return truth
