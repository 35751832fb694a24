"""The pass below the cut: an increment's images → its latent part (paid once per image, when it arrives)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from evo.graph.archgraph import ArchGraph
from evo.learn.cost import CostMeter
from evo.learn.latent.codec import encode
from evo.learn.latent.cut import split
from evo.learn.latent.part import Part
from evo.learn.train import run_batches


def encode_flops(graph: ArchGraph, cut: str, n: int) -> int:
    """FLOPs of the pass below `cut` for `n` images: what a learner's meter records for encoding them
    (a search pays it once per round, apart from every candidate's `Strategy.price`)."""
    return int(split(graph, cut)[0].flops(batch=1) * n)


def encode_part(graph: ArchGraph, cut: str, images: np.ndarray, labels: np.ndarray, classes: list[str],
                increment: int, codec: str, preprocess: Any, meter: CostMeter | None = None,
                batch_size: int = 256, progress: bool = False) -> Part:
    """The latents of `images` at `cut` (labels index `classes`), compressed with `codec`."""
    below, _ = split(graph, cut)
    net = below.to_module().eval()
    fpi = below.flops(batch=1)
    codes, scales = [], []
    for start in range(0, len(images), batch_size):  # encode batch by batch: fp32 never held whole
        z = run_batches(net, images[start:start + batch_size], preprocess, _forward, meter, batch_size, fpi,
                        False)
        c, s = encode(z, codec)
        codes.append(c)
        scales.append(s)
    shape = tuple(graph.shape(cut))
    codes_a = np.concatenate(codes) if codes else np.empty((0, *shape), dtype=np.float32)
    scales_a = np.concatenate(scales) if codec == "int8" and scales else None
    return Part(increment, list(classes), np.asarray(labels, dtype=np.int64), codes_a, scales_a, codec, cut,
                flops=encode_flops(graph, cut, len(images)))


def _forward(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net(x)
