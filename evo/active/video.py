"""Videos through the corrections engine: per-shot predictions that see every live correction.

    predict_video(eng, "match.mp4", fps=2)      # VideoPrediction: shots (start, end, label, p) and the clip

One owner for the engine-to-video glue, shared by `evo predict RUN VIDEO`, `evo report` and Python.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from evo.active.engine import Corrections
    from evo.data.video.predict import VideoPrediction


def video_callables(eng: Corrections, aggregate: str = "proba"):
    """(predict_proba, embed, head) for `evo.data.video.predict_video` from the engine; embed/head are
    None unless `aggregate='features'` (the head applied to a shot's mean feature)."""
    import torch

    def proba(frames):
        return torch.softmax(eng.logits(eng.features(frames)), dim=1).numpy()

    if aggregate != "features":
        return proba, None, None
    return proba, (lambda frames: eng.features(frames).double().numpy()), \
        (lambda feats: torch.softmax(eng.logits(torch.as_tensor(feats).float()), dim=1).numpy())


def predict_video(eng: Corrections, path: str | os.PathLike, *, fps: float = 2.0, detector: str | None = "content",
                  threshold: float | None = None, smooth: int = 0, aggregate: str = "proba") -> VideoPrediction:
    """Per-shot and whole-clip predictions of the video at `path` by the engine's model."""
    from evo.data.video.predict import predict_video as predict

    proba, embed, head = video_callables(eng, aggregate)
    return predict(path, proba, eng.classes, fps=fps, detector=detector, threshold=threshold, smooth=smooth,
                   aggregate=aggregate, embed=embed, head=head)
