"""A strip of keyframes, one per shot, each captioned with its predicted label: the picture of a
video's per-shot predictions for reports and notebooks."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from evo.data.video.decode import iter_frames
from evo.data.video.predict import VideoPrediction


def keyframes(path: str | os.PathLike, times: list[float], size: tuple[int, int]) -> list[np.ndarray]:
    """The decoded frame nearest each time (ascending times), in one streaming pass."""
    out: list[np.ndarray] = []
    last = None
    wanted = iter(sorted(times))
    target = next(wanted, None)
    for b in iter_frames(path, size=size):
        for t, f in zip(b.time, b.frames, strict=True):
            while target is not None and t >= target:
                out.append(f)
                target = next(wanted, None)
            last = f
        if target is None:
            break
    while target is not None and last is not None:
        out.append(last)
        target = next(wanted, None)
    return out


def shot_strip(prediction: VideoPrediction, tile: int = 96, columns: int = 8) -> Image.Image:
    """Middle keyframe of every shot, captioned 'shot: label p' and its time span, `columns` a row."""
    shots = prediction.shots
    frames = keyframes(prediction.path, [(s.start + s.end) / 2 for s in shots], (tile, tile))
    rows = max(1, -(-len(shots) // columns))
    cap = 28
    img = Image.new("RGB", (min(columns, len(shots)) * tile or tile, rows * (tile + cap)), "white")
    draw = ImageDraw.Draw(img)
    for i, (s, f) in enumerate(zip(shots, frames, strict=False)):
        x, y = (i % columns) * tile, (i // columns) * (tile + cap)
        img.paste(Image.fromarray(f), (x, y))
        draw.text((x + 2, y + tile + 1), f"{s.index}: {s.label[:12]} {s.probability:.2f}", fill="black")
        draw.text((x + 2, y + tile + 14), f"{s.start:.1f}-{s.end:.1f}s", fill="gray")
    return img
