"""Where evo.learn computes: one device per Learner, AMP on CUDA, closed-form statistics in fp64.

Graphs (and so saved versions) always hold CPU tensors; a compiled network is moved to the
learner's device for feature extraction and training, and what comes back (features, trained
weights) returns to the CPU. On CUDA, forward passes run under autocast (bf16 where the GPU
supports it, else fp16 with a gradient scaler); the ridge statistics are accumulated in fp64 from
the fp32 features either way, so the closed-form head does not inherit the low precision.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

import numpy as np
import torch

from evo.errors import ConfigError

# Forward-only passes on the CPU run fastest when a batch's largest activation fits in cache: measured
# on the 2-core EPYC VM (32 MiB L3), Lite0 gave 1,049 img/s at batch 32 against 607 at 256 (64 px) and
# 313 against 139 (128 px; BENCHMARKS.md "CPU feature batches"). Other machines may prefer another size.
DEFAULT_CPU_CACHE_BYTES = 16 * 2**20
CPU_CACHE_BYTES: int | None = None  # None: $EVO_CPU_CACHE_BYTES, else the default; 0 turns the splitting off


def cpu_cache_bytes() -> int:
    """The activation bytes a CPU batch is sized to (`feature_batch`)."""
    if CPU_CACHE_BYTES is not None:
        return CPU_CACHE_BYTES
    raw = os.environ.get("EVO_CPU_CACHE_BYTES", "").strip()
    if not raw:
        return DEFAULT_CPU_CACHE_BYTES
    if not raw.isdigit():
        raise ConfigError(f"EVO_CPU_CACHE_BYTES must be a whole number of bytes >= 0 (0: no splitting); got {raw!r}")
    return int(raw)


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


def batch_to(preprocess, images: np.ndarray, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    """Preprocess uint8 images onto `device`: on CUDA the uint8 batch is copied (4× smaller than
    floats) and resized/normalised there; on the CPU exactly as before."""
    if device.type == "cpu":
        x = preprocess(images)
    else:
        x = preprocess(torch.from_numpy(np.ascontiguousarray(images)).to(device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def feature_batch(net: torch.nn.Module, batch_size: int, device: torch.device) -> int:
    """The batch a forward-only pass of `net` should run at: `batch_size` on a GPU; on the CPU the power
    of two nearest to `cpu_cache_bytes()` / the net's largest per-image activation, at most `batch_size`.

    Eval-mode layers treat every image alone, so the outputs are the same up to float rounding."""
    act = getattr(net, "activation_bytes", 0)
    if device.type != "cpu" or not act:
        return batch_size
    cache = cpu_cache_bytes()
    if not cache:
        return batch_size
    return max(1, min(batch_size, 2 ** round(math.log2(max(cache / act, 1)))))
