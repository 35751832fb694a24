"""How a latent is stored: fp32 (exact), fp16 (half the bytes), int8 with per-sample, per-channel scales.

int8 is symmetric: each (image, channel) plane is scaled by its own max |x| / 127, so one outlier
channel does not flatten the others; the scales (fp32, C per image) are stored beside the codes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from evo.errors import ConfigError

CODECS = ("fp32", "fp16", "int8")
_DTYPES = {"fp32": np.float32, "fp16": np.float16, "int8": np.int8}


def check_codec(codec: str) -> str:
    if codec not in CODECS:
        raise ConfigError(f"latent codec must be one of {list(CODECS)}; got {codec!r}")
    return codec


def encode(x: Tensor, codec: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(codes, scales or None) for a float batch (N, C, H, W) or (N, D)."""
    check_codec(codec)
    a = x.detach().float().cpu().numpy()
    if codec != "int8":
        return a.astype(_DTYPES[codec]), None
    flat = a.reshape(a.shape[0], a.shape[1], -1)
    scale = np.abs(flat).max(axis=2) / 127.0
    scale[scale == 0] = 1.0
    codes = np.clip(np.rint(flat / scale[:, :, None]), -127, 127).astype(np.int8)
    return codes.reshape(a.shape), scale.astype(np.float32)


def decode(codes: np.ndarray, scales: np.ndarray | None, codec: str) -> Tensor:
    """The float32 batch back from stored codes (rows already selected)."""
    a = np.asarray(codes)
    if codec == "int8":
        s = np.asarray(scales, dtype=np.float32).reshape(a.shape[0], a.shape[1], *([1] * (a.ndim - 2)))
        return torch.from_numpy(a.astype(np.float32) * s)
    return torch.from_numpy(a.astype(np.float32, copy=True))


def bytes_per_row(shape: tuple[int, ...], codec: str) -> int:
    """Stored bytes of one latent of `shape` (C, ...) (scales and the int64 label included)."""
    n = int(np.prod(shape))
    scales = 4 * shape[0] if codec == "int8" else 0
    return n * np.dtype(_DTYPES[check_codec(codec)]).itemsize + scales + 8


def dtype_of(codec: str) -> np.dtype:
    return np.dtype(_DTYPES[check_codec(codec)])
