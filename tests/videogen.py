"""Generated videos with known ground truth for the video tests (Fashion-MNIST items, cuts, motion, noise)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evo.data.sources.fashion_mnist import fashion_mnist
from evo.data.video.synth import SynthShot, write_collection, write_video


def fmnist():
    train, test = fashion_mnist()
    return train, test


def shot_video(path: Path, n_shots: int, seed: int = 0, **opts) -> list[SynthShot]:
    """One video of `n_shots` random Fashion-MNIST items, hard cuts between them."""
    train, _ = fmnist()
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(train), n_shots, replace=False)
    return write_video(path, [(train.images[i, ..., 0], train.classes[train.labels[i]]) for i in idx],
                       seed=seed, **opts)


def collection(root: Path, n_classes: int = 3, clips_per_class: int = 4, shots_per_clip: int = 2, seed: int = 0,
               **opts):
    train, _ = fmnist()
    keep = np.flatnonzero(train.labels < n_classes)[:3000]
    return write_collection(root, train.images[keep, ..., 0], train.labels[keep], train.classes[:n_classes],
                            clips_per_class, shots_per_clip, seed, **opts)


def colour_video(path: Path, shots: list[tuple[int, int]], fps: int = 25, size: int = 32, noise: float = 10.0,
                 seed: int = 0) -> list[SynthShot]:
    """Shots of flat colour (class k = channel k brightest) for `n` frames each: [(class, frames), ...]."""
    import av

    rng = np.random.default_rng(seed)
    truth, n0 = [], 0
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "10"}
        for k, n in shots:
            colour = np.full(3, 40.0)
            colour[k] = 200.0
            for _ in range(n):
                f = np.clip(colour + rng.normal(0, noise, (size, size, 3)), 0, 255).astype(np.uint8)
                out.mux(s.encode(__import__("av").VideoFrame.from_ndarray(f, format="rgb24")))
            truth.append(SynthShot(str(k), n0 / fps, (n0 + n) / fps))
            n0 += n
        out.mux(s.encode(None))
    return truth
