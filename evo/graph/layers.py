"""Layer kinds an ArchGraph node can be: how to build each as an nn.Module, and its arity and attributes.

A node stores its kind (`op`), JSON-safe `attrs`, and its `params` (the built module's state dict).
Building every kind as a module keeps compile, shape inference and FLOP counting one code path.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from evo.errors import GraphError
from evo.registry import Registry


class Add(nn.Module):
    """Sum of all inputs (residual joins)."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0] + xs[1]
        for x in xs[2:]:
            out = out + x
        return out


class Mul(nn.Module):
    """Elementwise product with broadcasting (squeeze-excitation gates)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


class Cat(nn.Module):
    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.dim)


class Mean(nn.Module):
    def __init__(self, dims: list[int], keepdim: bool = False) -> None:
        super().__init__()
        self.dims = tuple(dims)
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(self.dims, keepdim=self.keepdim)


class Pad(nn.Module):
    """Fixed (left, right, top, bottom) padding: TF 'same' padding made static once the input size is known."""

    def __init__(self, pad: list[int], value: float = 0.0) -> None:
        super().__init__()
        self.pad = tuple(pad)
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pad, value=self.value)


class Reshape(nn.Module):
    """Per-sample reshape to `shape` (batch dimension kept): a traced view/reshape at the import size."""

    def __init__(self, shape: list[int]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


class Permute(nn.Module):
    """Reorder the dimensions after the batch (`dims` lists all of them, starting with 0)."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = tuple(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(self.dims)


class Slice(nn.Module):
    """Elements start..end-1 along `dim` (>= 1): one piece of a traced chunk/split."""

    def __init__(self, dim: int, start: int, end: int) -> None:
        super().__init__()
        self.dim, self.start, self.end = dim, start, end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.narrow(self.dim, self.start, self.end - self.start)


class LayerNorm2d(nn.LayerNorm):
    """Layer norm over the channels of a (N, C, H, W) map, at every position (ConvNeXt's downsampling norm)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Scale(nn.Module):
    """Elementwise product with a learned tensor of `shape` (broadcast; no batch dimension): a layer scale."""

    def __init__(self, shape: list[int]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


@functools.lru_cache(maxsize=4)
def random_matrix(rows: int, cols: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A (rows, cols) matrix of N(0, 1/rows) entries, regenerated from `seed` (torch's CPU generator, drawn
    in float64 then cast), so a graph or a head stores the seed, never the matrix. Cached and shared:
    callers must not write to it."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen, dtype=torch.float64) / math.sqrt(rows)
    return w.to(dtype)


def standardisation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column mean and 1/std of x (n, d): what `RandomFeatures` subtracts and multiplies by. A constant
    column is scaled like the rest (its std floored at 1e-3 of the mean std), never by 1/0."""
    std = x.std(0, correction=0)
    floor = float(std.mean()) * 1e-3
    if not floor > 0:  # one sample, or identical ones: nothing to scale by
        return x.mean(0), torch.ones_like(std)
    return x.mean(0), 1.0 / std.clamp_min(floor)


class RandomFeatures(nn.Module):
    """[x, relu(((x − mean) · scale) W)]: x with `out_features` random ReLU features of it appended.

    RanPAC's random expansion (McDonnell et al. 2023) kept beside the features it expands, so that a
    linear head on the output can still read x as it was. W ~ N(0, 1/in) is regenerated from `seed`
    (`random_matrix`); the standardisation (`feature_mean`, `feature_scale`) is fitted once, by the
    strategy that adds the node, and is a buffer: nothing here trains.
    """

    def __init__(self, in_features: int, out_features: int, seed: int = 0) -> None:
        super().__init__()
        self.in_features, self.out_features, self.seed = in_features, out_features, seed
        self.register_buffer("feature_mean", torch.zeros(in_features))
        self.register_buffer("feature_scale", torch.ones(in_features))
        # not saved, and moved with the module: built on the first forward, on the input's device
        self.register_buffer("weight", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.feature_mean) * self.feature_scale
        if self.weight is None or self.weight.device != z.device:
            self.weight = random_matrix(self.in_features, self.out_features, self.seed, torch.float32).to(z.device)
        w = self.weight if self.weight.dtype == z.dtype else self.weight.to(z.dtype)
        return torch.cat([x, torch.relu(z @ w)], 1)


BUFFERS = ("running_mean", "running_var", "num_batches_tracked", "feature_mean", "feature_scale")
"""Tensor names that are state, not trainable parameters."""


@dataclass(frozen=True)
class LayerKind:
    """One node kind: its builder, how many inputs it takes, and its required attributes."""

    name: str
    build: Callable[..., nn.Module] | None
    arity: tuple[int, int] = (1, 1)  # (min, max) number of inputs; max -1 = unbounded
    required: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    activation: bool = False  # elementwise nonlinearity
    idempotent: bool = False  # f(f(x)) == f(x): deepen may repeat it after an identity layer
    same_shape: bool = False  # output shape = input shape (shape inference skips running it)...
    ranks: tuple[int, ...] | None = None  # ...when the input has one of these ranks (no batch; None = any)
    channels: str | None = None  # ...and this attribute equals the input's channels

    def output_shape(self, attrs: dict[str, Any], in_shapes: tuple[tuple[int, ...], ...]) -> tuple[int, ...] | None:
        """The output shape where the kind declares it (elementwise layers, batch norm), else None (run it)."""
        if not self.same_shape or len(in_shapes) != 1:
            return None
        (s,) = in_shapes
        if (self.ranks is not None and len(s) not in self.ranks) or (self.channels and (not s or attrs.get(self.channels) != s[0])):
            return None  # running the module gives the precise error
        return s

    def make(self, attrs: dict[str, Any]) -> nn.Module:
        if self.build is None:
            raise GraphError(f"node kind {self.name!r} has no module")
        kwargs = {**self.defaults, **{k: v for k, v in attrs.items() if k in self.accepted}}
        return self.build(**kwargs)

    @property
    def accepted(self) -> set[str]:
        return set(self.required) | set(self.defaults)


KINDS: Registry[LayerKind] = Registry("layer kind")


def _kind(name: str, build: Callable[..., nn.Module] | None, **kw: Any) -> None:
    KINDS.add(name, LayerKind(name, build, **kw))


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def _conv(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True):
    return nn.Conv2d(in_channels, out_channels, _pair(kernel_size), _pair(stride), _pair(padding),
                     _pair(dilation), groups, bias)


_kind("input", None, arity=(0, 0), required=("shape",))
_kind("output", None)
_kind("conv2d", _conv, required=("in_channels", "out_channels", "kernel_size"),
      defaults={"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "bias": True})
_kind("linear", nn.Linear, required=("in_features", "out_features"), defaults={"bias": True})
_kind("batchnorm2d", nn.BatchNorm2d, required=("num_features",), defaults={"eps": 1e-5, "momentum": 0.1},
      same_shape=True, ranks=(3,), channels="num_features")
_kind("batchnorm1d", nn.BatchNorm1d, required=("num_features",), defaults={"eps": 1e-5, "momentum": 0.1},
      same_shape=True, ranks=(1, 2), channels="num_features")
_kind("relu", nn.ReLU, defaults={"inplace": False}, activation=True, same_shape=True, idempotent=True)
_kind("relu6", nn.ReLU6, defaults={"inplace": False}, activation=True, same_shape=True, idempotent=True)
_kind("silu", nn.SiLU, defaults={"inplace": False}, activation=True, same_shape=True)
_kind("hardswish", nn.Hardswish, defaults={"inplace": False}, activation=True, same_shape=True)
_kind("hardsigmoid", nn.Hardsigmoid, defaults={"inplace": False}, activation=True, same_shape=True)
_kind("sigmoid", nn.Sigmoid, activation=True, same_shape=True)
_kind("leakyrelu", nn.LeakyReLU, defaults={"negative_slope": 0.01, "inplace": False}, activation=True,
      same_shape=True)
_kind("gelu", nn.GELU, defaults={"approximate": "none"}, activation=True, same_shape=True)
_kind("layernorm", nn.LayerNorm, required=("normalized_shape",),
      defaults={"eps": 1e-5, "elementwise_affine": True, "bias": True})
_kind("layernorm2d", LayerNorm2d, required=("num_channels",), defaults={"eps": 1e-6},
      same_shape=True, ranks=(3,), channels="num_channels")
_kind("scale", Scale, required=("shape",))
_kind("maxpool2d", nn.MaxPool2d, required=("kernel_size",),
      defaults={"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False})
_kind("avgpool2d", nn.AvgPool2d, required=("kernel_size",),
      defaults={"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True})
_kind("adaptiveavgpool2d", nn.AdaptiveAvgPool2d, required=("output_size",))
_kind("flatten", nn.Flatten, defaults={"start_dim": 1, "end_dim": -1})
_kind("dropout", nn.Dropout, defaults={"p": 0.5}, same_shape=True)
_kind("identity", nn.Identity, same_shape=True)
_kind("pad", Pad, required=("pad",), defaults={"value": 0.0})
_kind("mean", Mean, required=("dims",), defaults={"keepdim": False})
_kind("reshape", Reshape, required=("shape",))
_kind("permute", Permute, required=("dims",))
_kind("slice", Slice, required=("dim", "start", "end"))
_kind("add", Add, arity=(2, -1))
_kind("mul", Mul, arity=(2, 2))
_kind("cat", Cat, arity=(2, -1), defaults={"dim": 1})
_kind("random_features", RandomFeatures, required=("in_features", "out_features"), defaults={"seed": 0})


def is_depthwise(attrs: dict[str, Any]) -> bool:
    """A conv whose groups equal its input and output channels: one filter per channel."""
    g = attrs.get("groups", 1)
    return g > 1 and g == attrs["in_channels"] == attrs["out_channels"]
