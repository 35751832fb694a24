"""Preprocessing that belongs to a model version: saved with it, so a reloaded model sees the same inputs.

Everything is batch-wise torch (one `F.interpolate` per batch, antialiased), never per-image PIL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from evo.errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE0_MEAN = LITE0_STD = (0.5, 0.5, 0.5)
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as Pillow's "L" conversion


def _as_nchw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) → a uint8 (N, C, H, W) view (channels-last memory, no copy when possible)."""
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(f"expected uint8 (N, H, W, C) images; got {images.dtype} {tuple(images.shape)}")
        return images.permute(0, 3, 1, 2)
    arr = np.ascontiguousarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise DataError(f"expected uint8 (N, H, W, C) images; got {arr.dtype} {arr.shape}")
    if not arr.flags.writeable:  # torch refuses to share read-only memory (ImageSet arrays are read-only)
        arr = arr.copy()
    return torch.from_numpy(arr).permute(0, 3, 1, 2)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear. On CPU, uint8 stays uint8: torch has a much faster path for it on
    large inputs, at a fixed-point rounding cost of at most one grey level (torchvision does the same)."""
    if tuple(x.shape[-2:]) == tuple(size) or x.shape[0] == 0:
        return x
    if x.dtype == torch.uint8 and x.device.type != "cpu":
        x = x.float()
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def resize_uint8(images: np.ndarray, size: tuple[int, int], chunk: int = 4096) -> np.ndarray:
    """Resize uint8 (N, H, W, C) to (N, *size, C), antialiased bilinear."""
    size = (int(size[0]), int(size[1]))
    if images.shape[1:3] == size:
        return images
    out = np.empty((len(images), *size, images.shape[-1]), dtype=np.uint8)
    for start in range(0, len(images), chunk):
        x = _resize(_as_nchw(images[start : start + chunk]), size)
        out[start : start + chunk] = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return out


def _floats(name: str, value: Any, channels: int) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"Preprocess {name!r} must be a list of {channels} numbers; got {value!r}"
        ) from None
    if len(vals) != channels or not all(math.isfinite(v) for v in vals):
        raise ConfigError(
            f"Preprocess {name!r} must be {channels} finite numbers (one per channel); got {value!r}"
        )
    return vals


@dataclass(frozen=True)
class Preprocess:
    """uint8 NHWC → normalised float NCHW at `input_size` (square; non-square inputs are stretched).

    `channels=1` turns RGB into luminance, for models trained on grayscale.
    """

    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int = 3

    def __post_init__(self) -> None:
        if (
            isinstance(self.channels, bool)
            or not isinstance(self.channels, int)
            or self.channels not in (1, 3)
        ):
            raise ConfigError(f"Preprocess 'channels' must be 1 or 3; got {self.channels!r}")
        size = self.input_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"Preprocess 'input_size' must be a positive integer; got {size!r}")
        object.__setattr__(self, "mean", _floats("mean", self.mean, self.channels))
        object.__setattr__(self, "std", _floats("std", self.std, self.channels))
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"Preprocess 'std' must be positive; got {self.std!r}")

    @classmethod
    def imagenet(cls, input_size: int = 224) -> Preprocess:
        """The mean/std every torchvision ImageNet model was trained with."""
        return cls(input_size, IMAGENET_MEAN, IMAGENET_STD)

    @classmethod
    def lite0(cls, input_size: int = 224) -> Preprocess:
        """EfficientNet-Lite0: inputs mapped to [-1, 1]."""
        return cls(input_size, LITE0_MEAN, LITE0_STD)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form stored in a model version's meta.json."""
        return {
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "channels": self.channels,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocess:
        """Inverse of `to_dict`; a missing or unknown key is a ConfigError naming it."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"Preprocess.from_dict needs a mapping; got {type(d).__name__}")
        allowed = {"input_size", "mean", "std", "channels"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ConfigError(f"Preprocess: unknown key {unknown[0]!r}; valid keys: {sorted(allowed)}")
        for key in ("input_size", "mean", "std"):
            if key not in d:
                raise ConfigError(f"Preprocess: missing key {key!r} (needs input_size, mean, std)")
        return cls(d["input_size"], d["mean"], d["std"], d.get("channels", 3))

    def __call__(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Resize, scale to [0, 1] and normalise a batch; returns float32 (N, channels, S, S)."""
        x = _as_nchw(images)
        if x.shape[1] not in (1, 3):
            raise DataError(f"expected 1 or 3 image channels; got {x.shape[1]}")
        x = _resize(x, (self.input_size, self.input_size))
        x = x.to(torch.float32, memory_format=torch.contiguous_format)
        if self.channels == 1 and x.shape[1] == 3:
            x = torch.einsum("nchw,c->nhw", x, torch.tensor(_LUMA, device=x.device)).unsqueeze(1)
        elif self.channels == 3 and x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std], device=x.device).view(1, -1, 1, 1)
        shift = torch.tensor([m / s for m, s in zip(self.mean, self.std, strict=True)], device=x.device)
        return x.mul_(scale).sub_(shift.view(1, -1, 1, 1))
