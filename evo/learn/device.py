"""Where evo.learn computes: one device per Learner, AMP on CUDA, closed-form statistics in fp64.

Graphs (and so saved versions) always hold CPU tensors; a compiled network is moved to the
learner's device for feature extraction and training, and what comes back (features, trained
weights) returns to the CPU. On CUDA, forward passes run under autocast (bf16 where the GPU
supports it, else fp16 with a gradient scaler); the ridge statistics are accumulated in fp64 from
the fp32 features either way, so the closed-form head does not inherit the low precision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from evo.errors import ConfigError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """A torch.device from 'cpu', 'cuda', 'cuda:N' (None: the CPU); an unusable one is a ConfigError."""
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N'; got {device!r} ({e})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available here; use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif dev.type != "cpu":
        raise ConfigError(f"device must be 'cpu' or 'cuda[:N]'; got {device!r}")
    return dev


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype on `device`: bf16 on CUDA where supported, else fp16; None on the CPU (fp32)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """Mixed precision on CUDA; nothing on the CPU, so CPU results stay exactly fp32."""
    dtype = amp_dtype(device)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def grad_scaler(device: torch.device) -> torch.amp.GradScaler | None:
    """A loss scaler where autocast uses fp16 (bf16 and fp32 need none)."""
    if amp_dtype(device) != torch.float16:
        return None
    return torch.amp.GradScaler("cuda")
