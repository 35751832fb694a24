"""Leaf modules of an import: which modules become graph nodes whole, and the node(s) each one becomes.

torch.nn layers are leaves (torch.fx's default). A few library layers subclass them with a forward that
fx cannot or should not trace; they are leaves too, recognised by their exact qualified name, so evo
never imports timm:
  * timm `BatchNormAct2d`: a functional batch norm (parameters outside a module) then its activation;
  * timm `Conv2dSame`: TF "same" padding computed from the input size in Python; static at the import size;
  * timm `Linear`: nn.Linear with an AMP cast that is a no-op in fp32;
  * torchvision `LayerNorm2d` (ConvNeXt): layer norm over channels, written as permute, layer_norm, permute.
A subclass not named here is traced through, so an unknown forward is never mistaken for its base's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from evo.errors import TraceError

_ACTIVATIONS: dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.Hardswish: "hardswish",
    nn.Hardsigmoid: "hardsigmoid", nn.Sigmoid: "sigmoid", nn.GELU: "gelu",
    nn.LeakyReLU: "leakyrelu",
}
_BN_ACT = "timm.layers.norm_act.BatchNormAct2d"
_CONV_SAME = "timm.layers.conv2d_same.Conv2dSame"
_LINEAR = "timm.layers.linear.Linear"
_LN2D = "torchvision.models.convnext.LayerNorm2d"
LIBRARY_LEAVES = frozenset({_BN_ACT, _CONV_SAME, _LINEAR, _LN2D})


@dataclass
class Spec:
    """One graph node a leaf module becomes; `suffix` names the extra nodes ("" for the module's own)."""

    kind: str
    attrs: dict[str, Any]
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    suffix: str = ""


def qualname(m: nn.Module) -> str:
    return f"{type(m).__module__}.{type(m).__qualname__}"


def is_library_leaf(m: nn.Module) -> bool:
    return qualname(m) in LIBRARY_LEAVES


def same_pad(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TF 'same' padding (before, after) of one spatial dimension at input `size`."""
    total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def _own(m: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """The module's tensors (cloned), optionally only those under `prefix`."""
    return {k[len(prefix):]: v.detach().clone() for k, v in m.state_dict().items() if k.startswith(prefix)}


def module_specs(m: nn.Module, in_shape: tuple[int, ...]) -> list[Spec]:
    """The nodes a leaf module becomes, in order; the last one produces the module's output."""
    name = qualname(m)
    if name == _CONV_SAME:
        return _conv_same(m, in_shape)
    if name == _BN_ACT:
        specs = _batchnorm(m)
        if not isinstance(m.act, nn.Identity):
            specs += [Spec(*_activation(m.act), suffix="act")]
        return specs
    if name == _LN2D:
        if len(m.normalized_shape) != 1 or not m.elementwise_affine or m.bias is None:
            raise TraceError("LayerNorm2d over more than the channels, or without affine weight and bias, is not supported")
        return [Spec("layernorm2d", {"num_channels": m.normalized_shape[0], "eps": m.eps}, _own(m))]
    if isinstance(m, nn.Conv2d):
        return _conv(m, in_shape)
    if type(m) is nn.LayerNorm:
        return [Spec("layernorm", {"normalized_shape": list(m.normalized_shape), "eps": m.eps,
                                   "elementwise_affine": m.elementwise_affine, "bias": m.bias is not None}, _own(m))]
    if isinstance(m, nn.Linear):
        return [Spec("linear", dict(in_features=m.in_features, out_features=m.out_features, bias=m.bias is not None),
                     _own(m))]
    if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
        return _batchnorm(m)
    if type(m) in _ACTIVATIONS:
        return [Spec(*_activation(m))]
    return [Spec(*_simple(m))]


def _activation(m: nn.Module) -> tuple[str, dict[str, Any]]:
    if type(m) not in _ACTIVATIONS:
        raise TraceError(f"unsupported activation {qualname(m)}")
    if isinstance(m, nn.GELU):
        return "gelu", {"approximate": m.approximate}
    if isinstance(m, nn.LeakyReLU):
        return "leakyrelu", {"negative_slope": m.negative_slope}
    return _ACTIVATIONS[type(m)], {}


def _batchnorm(m: nn.Module) -> list[Spec]:
    if not (m.affine and m.track_running_stats):
        raise TraceError("batch norm without affine or running statistics is not supported")
    kind = "batchnorm1d" if isinstance(m, nn.BatchNorm1d) else "batchnorm2d"
    return [Spec(kind, dict(num_features=m.num_features, eps=m.eps, momentum=m.momentum),
                 {k: v for k, v in _own(m).items() if "." not in k})]  # not its activation's


def _conv_attrs(m: nn.Conv2d, padding: list[int]) -> dict[str, Any]:
    if m.padding_mode != "zeros":
        raise TraceError(f"padding_mode={m.padding_mode!r} is not supported (only 'zeros')")
    return dict(in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=list(m.kernel_size),
                stride=list(m.stride), padding=padding, dilation=list(m.dilation), groups=m.groups,
                bias=m.bias is not None)


def _padded_conv(m: nn.Conv2d, in_shape: tuple[int, ...], stride: tuple[int, int]) -> list[Spec]:
    """A conv with static 'same' padding: symmetric padding in the conv, else an explicit pad node in front."""
    ph = same_pad(in_shape[1], m.kernel_size[0], stride[0], m.dilation[0])
    pw = same_pad(in_shape[2], m.kernel_size[1], stride[1], m.dilation[1])
    if ph[0] == ph[1] and pw[0] == pw[1]:
        return [Spec("conv2d", _conv_attrs(m, [ph[0], pw[0]]), _own(m))]
    return [Spec("pad", {"pad": [pw[0], pw[1], ph[0], ph[1]], "value": 0.0}, suffix="pad"),
            Spec("conv2d", _conv_attrs(m, [0, 0]), _own(m))]


def _conv(m: nn.Conv2d, in_shape: tuple[int, ...]) -> list[Spec]:
    if not isinstance(m.padding, str):
        return [Spec("conv2d", _conv_attrs(m, list(m.padding)), _own(m))]
    if m.padding == "valid":
        return [Spec("conv2d", _conv_attrs(m, [0, 0]), _own(m))]
    return _padded_conv(m, in_shape, (1, 1))  # torch allows padding='same' only at stride 1


def _conv_same(m: nn.Conv2d, in_shape: tuple[int, ...]) -> list[Spec]:
    if tuple(m.padding) != (0, 0):
        raise TraceError(f"Conv2dSame with extra padding {tuple(m.padding)} is not supported")
    return _padded_conv(m, in_shape, tuple(m.stride))


def _simple(m: nn.Module) -> tuple[str, dict[str, Any]]:
    """Parameter-free layers."""
    if isinstance(m, nn.MaxPool2d):
        return "maxpool2d", dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                                 dilation=m.dilation, ceil_mode=m.ceil_mode)
    if isinstance(m, nn.AvgPool2d):
        return "avgpool2d", dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                                 ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return "adaptiveavgpool2d", dict(output_size=m.output_size)
    if isinstance(m, nn.Flatten):
        return "flatten", dict(start_dim=m.start_dim, end_dim=m.end_dim)
    if isinstance(m, (nn.Dropout, nn.Dropout2d, nn.AlphaDropout)):
        return "dropout", dict(p=m.p)
    if isinstance(m, nn.Identity):
        return "identity", {}
    if isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d)):
        return "pad", dict(pad=list(m.padding), value=float(getattr(m, "value", 0.0)))
    raise TraceError(f"unsupported module type {type(m).__name__}")
