"""Compute accounting: FLOPs priced on the meta device, plus measured seconds and peak memory.

FLOPs come from torch's FlopCounterMode (matmuls, convolutions and attention, forward and
backward; elementwise ops, norms and the optimiser step are not counted; a multiply-add is 2),
with one correction: torch's convolution-backward formula ignores `groups` in the weight
gradient, overcounting grouped convs by the group count (a depthwise conv by its channel count),
so evo prices that op itself.
Pricing runs a copy of the module on the meta device: shapes only, no real memory or compute,
and the caller's module is never touched.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from evo.errors import ConfigError
from evo.graph.cost import flop_counter

try:  # Unix only; elsewhere the CPU peak is reported as 0
    import resource
except ImportError:  # pragma: no cover
    resource = None

META = torch.device("meta")


def meta_copy(module: nn.Module) -> nn.Module:
    """Deep copy of `module` whose parameters and buffers live on the meta device.

    The memo maps each real tensor to a meta stand-in before copying, so no weight is ever
    duplicated in real memory.
    """
    memo: dict[int, Any] = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device=META), requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = torch.empty_like(b, device=META)
    return copy.deepcopy(module, memo)


def _to_meta(x: Any) -> Any:
    if isinstance(x, Tensor):
        return torch.empty_like(x, device=META)
    if isinstance(x, (list, tuple)):
        return type(x)(_to_meta(v) for v in x)
    if isinstance(x, Mapping):
        return {k: _to_meta(v) for k, v in x.items()}
    return x


def _call(module: nn.Module, inputs: Any) -> Any:
    return module(*inputs) if isinstance(inputs, tuple) else module(inputs)


def _sum_outputs(out: Any) -> Tensor:
    """Default loss: the sum of every floating output (its own FLOPs are not counted)."""
    if isinstance(out, Tensor):
        return out.sum()
    values = out.values() if isinstance(out, Mapping) else out
    parts = [_sum_outputs(v) for v in values if isinstance(v, (Tensor, list, tuple, Mapping))]
    if not parts:
        raise ConfigError("module output holds no tensor to differentiate; pass loss_fn=")
    return torch.stack(parts).sum()


def forward_flops(module: nn.Module, example_input: Any) -> int:
    """FLOPs of one forward pass on a batch shaped like `example_input` (a tensor or tuple of them)."""
    model = meta_copy(module)
    with torch.no_grad(), flop_counter() as counter:
        _call(model, _to_meta(example_input))
    return int(counter.get_total_flops())


def train_flops(module: nn.Module, example_input: Any, loss_fn: Callable[[Any], Tensor] | None = None) -> int:
    """FLOPs of one training step (forward + backward, train mode) on a batch like `example_input`.

    `loss_fn(output) -> scalar` defaults to summing the outputs; build any targets it needs with
    `device=output.device` (they must be meta tensors too). The input gets no gradient, so the
    first layer skips its input-gradient matmul: a step costs a little under 3× the forward.
    """
    model = meta_copy(module).train()
    with flop_counter() as counter:
        out = _call(model, _to_meta(example_input))
        loss = loss_fn(out) if loss_fn is not None else _sum_outputs(out)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ConfigError(f"loss_fn must return a scalar tensor; got {type(loss).__name__}")
        if loss.requires_grad:
            loss.backward()
    return int(counter.get_total_flops())


# -- dense linear algebra: the one place for its FLOP formulas (the head charges them, pricing sums them)
# `d` counts the bias column; `c` is the number of right-hand sides (classes).


def cholesky_flops(d: int) -> int:
    """A d×d Cholesky factorisation."""
    return int(d**3 // 3)


def ridge_solve_flops(d: int, c: int) -> int:
    """Solve (G + λD) W = B: Cholesky plus two triangular solves with c right-hand sides."""
    return cholesky_flops(d) + int(4 * d * d * c)


def gcv_eval_flops(d: int, c: int) -> int:
    """One GCV evaluation: Cholesky, a triangular inverse (d³/3), and the solves and products (8d²c)."""
    return int(2 * d**3 // 3 + 8 * d * d * c)


GRAM_BLOCK = 512  # columns per block of ΦᵀΦ's upper block triangle (benchmarks/gram.py)


def gram_blocks(d: int) -> list[tuple[int, int]]:
    """The column blocks [j, e) of a d-column Gram: block j computes rows 0..e of columns j..e, the
    upper block triangle; the rest is its mirror. One block (the full product) when d ≤ GRAM_BLOCK
    (read at the call), so that the count never falls as d grows: prices take a width as an upper bound."""
    return [(j, min(j + GRAM_BLOCK, d)) for j in range(0, d, GRAM_BLOCK)]


def gram_flops(n: int, d: int, c: int) -> int:
    """ΦᵀΦ (its upper block triangle, `gram_blocks`) and ΦᵀY over n rows (d columns with the bias, c targets)."""
    return int(sum(2 * n * e * (e - j) for j, e in gram_blocks(d)) + 2 * n * d * c)


def matmul_flops(n: int, k: int, m: int) -> int:
    """An (n×k)·(k×m) product."""
    return int(2 * n * k * m)


def ridge_flops(n: int, d: int, c: int, gcv_evals: int) -> int:
    """Upper bound of the closed-form head's work on n rows of d features (no bias column) and c
    classes: statistics, `gcv_evals` GCV evaluations, the final solve, and the calibration logits. A
    walk's chosen λ was solved by its evaluation (`RidgeHead.solve_flops`), so the final solve is
    charged only without one; an evaluation whose factorisation fails costs d³/3 less than charged,
    which covers the solve that then follows."""
    d1 = d + 1
    final = 0 if gcv_evals else ridge_solve_flops(d1, c)
    return gram_flops(n, d1, c) + gcv_evals * gcv_eval_flops(d1, c) + final + matmul_flops(n, d, c)


@dataclass(frozen=True)
class Cost:
    """What some work cost. `+` sums FLOPs and seconds and keeps the larger memory peak."""

    flops: int = 0
    seconds: float = 0.0
    peak_mem_bytes: int = 0

    def __add__(self, other: Cost) -> Cost:
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost(
            self.flops + other.flops,
            self.seconds + other.seconds,
            max(self.peak_mem_bytes, other.peak_mem_bytes),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Cost:
        return cls(int(d["flops"]), float(d["seconds"]), int(d["peak_mem_bytes"]))


def _rss_peak_bytes() -> int:
    if resource is None:  # pragma: no cover
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # Linux reports KiB


class CostMeter:
    """Measures a block: wall seconds, peak memory, and the FLOPs callers add.

        with CostMeter() as meter:
            for _ in range(steps): step()
            meter.add_flops(steps * train_flops(model, batch))
        meter.cost  # Cost(flops, seconds, peak_mem_bytes)

    Memory: on CUDA, the peak allocated by torch during the block (the device's peak counter is
    reset on entry, so nested CUDA meters share it). On CPU, the process's resident-set high-water
    mark (ru_maxrss): an upper bound that includes everything loaded before the block.
    """

    def __init__(self, device: str | torch.device | None = None) -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"CostMeter device {self.device} requested but CUDA is not available; use 'cpu'"
            )
        self.flops = 0
        self._start: float | None = None
        self._seconds = 0.0
        self._peak = 0

    def add_flops(self, flops: int) -> None:
        """Add FLOPs spent (typically steps × `train_flops(...)`)."""
        if isinstance(flops, bool) or not isinstance(flops, (int, np.integer)) or flops < 0:
            raise ConfigError(f"add_flops needs a non-negative integer; got {flops!r}")
        self.flops += int(flops)

    def start(self) -> CostMeter:
        if self._start is not None:
            raise ConfigError("CostMeter is already running; stop it before starting again")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._start = time.perf_counter()
        return self

    def stop(self) -> Cost:
        if self._start is None:
            raise ConfigError("CostMeter was not started; use it as a context manager or call start()")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            peak = _rss_peak_bytes()
        self._seconds += time.perf_counter() - self._start
        self._peak = max(self._peak, peak)
        self._start = None
        return self.cost

    @property
    def cost(self) -> Cost:
        """Cost so far: FLOPs added (also after stopping), seconds and peak of the measured spans.

        A meter can be started and stopped several times; seconds add up and the peak is the max.
        """
        running = 0.0 if self._start is None else time.perf_counter() - self._start
        return Cost(self.flops, self._seconds + running, self._peak)

    def __enter__(self) -> CostMeter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
