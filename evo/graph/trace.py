"""Import any torch.fx-traceable nn.Module into an ArchGraph.

Each fx node maps to one layer kind; anything else stops the import with the op and its module path.
Weights are cloned, so the imported graph never aliases the source module.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.nn import functional as F

from evo.errors import TraceError
from evo.graph.archgraph import ArchGraph

_ACTIVATIONS: dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.Hardswish: "hardswish",
    nn.Hardsigmoid: "hardsigmoid", nn.Sigmoid: "sigmoid",
}
_FN_ACTIVATIONS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.silu: "silu", F.hardswish: "hardswish",
    F.hardsigmoid: "hardsigmoid", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
}
_METHOD_ACTIVATIONS = {"relu": "relu", "sigmoid": "sigmoid"}


def _same_pad(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def _module_spec(m: nn.Module, in_shape: tuple[int, ...]) -> tuple[str, dict[str, Any]] | list:
    """Kind and attributes for a leaf module; a list of two specs when it needs a pad node in front."""
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros":
            raise TraceError(f"padding_mode={m.padding_mode!r} is not supported (only 'zeros')")
        attrs = dict(in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=list(m.kernel_size),
                     stride=list(m.stride), dilation=list(m.dilation), groups=m.groups, bias=m.bias is not None)
        if isinstance(m.padding, str):
            if m.padding == "valid":
                attrs["padding"] = [0, 0]
            else:  # 'same' at stride 1: make it static, with an explicit pad when it is asymmetric
                ph = _same_pad(in_shape[1], m.kernel_size[0], 1, m.dilation[0])
                pw = _same_pad(in_shape[2], m.kernel_size[1], 1, m.dilation[1])
                attrs["padding"] = [0, 0]
                if ph[0] == ph[1] and pw[0] == pw[1]:
                    attrs["padding"] = [ph[0], pw[0]]
                else:
                    return [("pad", {"pad": [pw[0], pw[1], ph[0], ph[1]]}), ("conv2d", attrs)]
        else:
            attrs["padding"] = list(m.padding)
        return "conv2d", attrs
    if isinstance(m, nn.Linear):
        return "linear", dict(in_features=m.in_features, out_features=m.out_features, bias=m.bias is not None)
    if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
        if not (m.affine and m.track_running_stats):
            raise TraceError("batch norm without affine or running statistics is not supported")
        kind = "batchnorm2d" if isinstance(m, nn.BatchNorm2d) else "batchnorm1d"
        return kind, dict(num_features=m.num_features, eps=m.eps, momentum=m.momentum)
    if type(m) in _ACTIVATIONS:
        return _ACTIVATIONS[type(m)], {}
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


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


class _Importer:
    def __init__(self, module: nn.Module, input_shape: Sequence[int], name: str) -> None:
        self.module = module
        self.input_shape = tuple(int(s) for s in input_shape)
        self.graph = ArchGraph(meta={"name": name, "source": type(module).__name__})
        self.names: dict[fx.Node, str] = {}

    def run(self) -> ArchGraph:
        try:
            traced = fx.symbolic_trace(self.module)
        except Exception as e:  # noqa: BLE001 - fx raises many kinds; all mean "not traceable"
            raise TraceError(f"cannot trace {type(self.module).__name__} with torch.fx: {e}. evo imports modules "
                             "without data-dependent control flow; wrap or rewrite the offending forward") from None
        try:
            from torch.fx.passes.shape_prop import ShapeProp

            ShapeProp(traced).propagate(torch.zeros((1, *self.input_shape)))
        except Exception as e:  # noqa: BLE001
            raise TraceError(f"{type(self.module).__name__} does not run on input shape {self.input_shape}: {e}") from None
        for node in traced.graph.nodes:
            try:
                self._import(traced, node)
            except TraceError as e:
                where = node.target if node.op == "call_module" else node.name
                raise TraceError(f"cannot import {where!r} ({node.op} {_target_name(node)}) of "
                                 f"{type(self.module).__name__}: {e}") from None
        return self.graph.validate()

    def _shape(self, n: fx.Node) -> tuple[int, ...]:
        meta = n.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise TraceError("produces a non-tensor value")
        return tuple(meta.shape[1:])

    def _add(self, fx_node: fx.Node, op: str, attrs: dict[str, Any], inputs: list[fx.Node | str],
             params: dict[str, torch.Tensor] | None = None, source: str | None = None) -> str:
        """Add a node fed by `inputs` (fx nodes already imported, or graph node names)."""
        name = self.graph.fresh_name(source or fx_node.name)
        self.graph.add_node(name, op, {k: _jsonable(v) for k, v in attrs.items()}, params, source=source)
        srcs = [i if isinstance(i, str) else self.names[i] for i in inputs]
        if len(set(srcs)) != len(srcs):  # x + x: route the repeat through an identity so edges stay unique
            seen: set[str] = set()
            for j, s in enumerate(srcs):
                if s in seen:
                    ident = self.graph.fresh_name(f"{name}_repeat")
                    self.graph.add_node(ident, "identity")
                    self.graph.add_edge(s, ident)
                    srcs[j] = ident
                seen.add(s)
        for i, s in enumerate(srcs):
            self.graph.add_edge(s, name, index=i)
        self.names[fx_node] = name
        return name

    def _import(self, traced: fx.GraphModule, n: fx.Node) -> None:
        if n.op == "placeholder":
            if self.names:
                raise TraceError("models with more than one input are not supported")
            self.names[n] = self.graph.add_node("input", "input", {"shape": list(self.input_shape)})
        elif n.op == "output":
            if not isinstance(n.args[0], fx.Node):
                raise TraceError("the model must return a single tensor, not a tuple or dict")
            name = self.graph.add_node("output", "output")
            self.graph.add_edge(self.names[n.args[0]], name)
        elif n.op == "call_module":
            self._import_module(traced, n)
        elif n.op in ("call_function", "call_method"):
            self._import_function(n)
        else:
            raise TraceError(f"{n.op} is not supported (parameters used outside a module)")

    def _import_module(self, traced: fx.GraphModule, n: fx.Node) -> None:
        m = traced.get_submodule(n.target)
        (src,) = _tensor_args(n)
        spec = _module_spec(m, self._shape(src))
        params = {k: v.detach().clone() for k, v in m.state_dict().items()}
        if isinstance(spec, list):
            (pad_kind, pad_attrs), (kind, attrs) = spec
            pad_name = self._add(n, pad_kind, pad_attrs, [src], source=f"{n.target}_pad")
            self._add(n, kind, attrs, [pad_name], params, source=n.target)
        else:
            kind, attrs = spec
            self._add(n, kind, attrs, [src], params if params else None, source=n.target)

    def _import_function(self, n: fx.Node) -> None:
        t, args = n.target, _tensor_args(n)
        nonten = [a for a in n.args if not isinstance(a, (fx.Node, list, tuple))]
        if t in (operator.add, torch.add, "add", operator.iadd) and len(args) == 2 and not n.kwargs:
            self._add(n, "add", {}, args)
        elif t in (operator.mul, torch.mul, "mul") and len(args) == 2 and not n.kwargs:
            self._add(n, "mul", {}, args)
        elif t in _FN_ACTIVATIONS or (n.op == "call_method" and t in _METHOD_ACTIVATIONS):
            self._add(n, _FN_ACTIVATIONS.get(t) or _METHOD_ACTIVATIONS[t], {}, args)
        elif t in (torch.flatten, "flatten"):
            start = n.kwargs.get("start_dim", nonten[0] if nonten else 0)
            end = n.kwargs.get("end_dim", nonten[1] if len(nonten) > 1 else -1)
            if start != 1:
                raise TraceError(f"flatten must keep the batch dimension (start_dim=1), got {start}")
            self._add(n, "flatten", {"start_dim": 1, "end_dim": end}, args)
        elif t is torch.cat:
            dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0)
            if dim != 1:
                raise TraceError(f"cat is supported along channels (dim=1), got dim={dim}")
            self._add(n, "cat", {"dim": 1}, list(n.args[0]))
        elif t in (F.adaptive_avg_pool2d,):
            size = n.kwargs.get("output_size", n.args[1] if len(n.args) > 1 else None)
            self._add(n, "adaptiveavgpool2d", {"output_size": _jsonable(size)}, args)
        elif t in (F.max_pool2d, F.avg_pool2d):
            names = ["kernel_size", "stride", "padding"] + (["dilation", "ceil_mode"] if t is F.max_pool2d
                                                            else ["ceil_mode", "count_include_pad"])
            given = dict(zip(names, n.args[1:], strict=False)) | dict(n.kwargs)
            if given.get("return_indices") or given.get("divisor_override"):
                raise TraceError("pooling with return_indices or divisor_override is not supported")
            given.pop("return_indices", None), given.pop("divisor_override", None)
            self._add(n, "maxpool2d" if t is F.max_pool2d else "avgpool2d", given, args)
        elif t in (torch.mean, "mean"):
            dims = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else None)
            keep = n.kwargs.get("keepdim", n.args[2] if len(n.args) > 2 else False)
            if dims is None:
                raise TraceError("mean over all dimensions would mix the batch; give dim=")
            dims = [dims] if isinstance(dims, int) else list(dims)
            if 0 in dims:
                raise TraceError("mean over the batch dimension is not supported")
            self._add(n, "mean", {"dims": dims, "keepdim": bool(keep)}, args)
        elif t in (F.dropout, "dropout"):
            self._add(n, "dropout", {"p": float(n.kwargs.get("p", nonten[0] if nonten else 0.5))}, args)
        elif t in (F.pad,):
            pad = n.kwargs.get("pad", n.args[1] if len(n.args) > 1 else None)
            self._add(n, "pad", {"pad": list(pad), "value": float(n.kwargs.get("value", 0.0))}, args)
        else:
            raise TraceError("unsupported operation; evo supports conv, batch norm, ReLU/ReLU6/SiLU/Hardswish/"
                             "Hardsigmoid/Sigmoid, pooling, linear, flatten, add, mul, cat, mean, dropout, pad")


def _tensor_args(n: fx.Node) -> list[fx.Node]:
    return [a for a in n.args if isinstance(a, fx.Node)]


def _target_name(n: fx.Node) -> str:
    t = n.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def from_module(module: nn.Module, input_shape: Sequence[int] = (3, 224, 224), name: str | None = None,
                classes: Sequence[str] | None = None) -> ArchGraph:
    """Trace `module` with torch.fx and import it (eval-mode semantics, weights cloned)."""
    if not isinstance(module, nn.Module):
        raise TraceError(f"from_module needs an nn.Module, got {type(module).__name__}")
    was_training = module.training
    module.eval()
    try:
        graph = _Importer(module, input_shape, name or type(module).__name__).run()
    finally:
        module.train(was_training)
    head = graph.head
    n_out = graph.shape(graph.output)[0] if len(graph.shape(graph.output)) == 1 else None
    if classes is not None:
        if n_out is not None and len(classes) != n_out:
            raise TraceError(f"{len(classes)} class names given but the model has {n_out} outputs")
        graph.meta["classes"] = list(classes)
    elif head is not None and n_out is not None:
        graph.meta["classes"] = [f"class_{i}" for i in range(n_out)]
    return graph

