"""Import any torch.fx-traceable nn.Module into an ArchGraph.

Each fx node maps to one layer kind (a library layer such as timm's BatchNormAct2d to a few, see
`_leaves`), to nothing when it is the identity in eval mode (nn.Identity, contiguous, stochastic depth, a
one-tensor cat), or to a constant when it is shape arithmetic (`x.size()`, `_assert(x.ndim == 4)`; see `_static`),
which is folded at the import size. Anything else stops the import with the op and its module path.
Weights are cloned, so the imported graph never aliases the source module.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn
from torch.nn import functional as F

from evo.errors import ConfigError, TraceError
from evo.graph._leaves import is_library_leaf, module_specs
from evo.graph._static import check_shape_only, concrete_condition, is_tensor, is_tensors, record
from evo.graph.archgraph import ArchGraph

_FN_ACTIVATIONS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.silu: "silu", F.hardswish: "hardswish",
    F.hardsigmoid: "hardsigmoid", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
}
_METHOD_ACTIVATIONS = {"relu": "relu", "sigmoid": "sigmoid"}
_RESHAPES = {torch.reshape, torch.flatten, torch.squeeze, torch.unsqueeze, "view", "reshape", "flatten",
             "squeeze", "unsqueeze", "unflatten", torch.unflatten}
_PERMUTES = {torch.transpose, torch.permute, "transpose", "permute"}
_SPLITS = {torch.chunk, torch.split, "chunk", "split"}
_NO_OPS = {"contiguous"}
_SUPPORTED = ("conv, batch/layer norm, ReLU/ReLU6/LeakyReLU/SiLU/GELU/Hardswish/Hardsigmoid/Sigmoid, pooling, "
              "linear, flatten, add, mul, layer scale, cat, mean, dropout, pad, stochastic depth (eval), "
              "view/reshape/transpose/permute keeping the batch first, chunk/split, x[:, a:b]")


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


try:  # private, but made for this: lift fx's patches while real code runs during a trace
    from torch.fx._symbolic_trace import _maybe_revert_all_patches as _unpatched
except ImportError:  # pragma: no cover
    _unpatched = None


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with the library layers of `evo.graph._leaves` kept whole, and Python branches on
    shapes (`if x.shape[-1] < 7:`) taken as the module takes them at the import size."""

    def __init__(self, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.input_shape = input_shape

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_library_leaf(m) or super().is_leaf_module(m, module_qualified_name)

    def to_bool(self, obj: fx.Proxy) -> bool:
        if _unpatched is None:  # a torch without the hook: such a branch stays untraceable
            return super().to_bool(obj)
        with _unpatched():  # run real modules, not the tracer's patched Module.__call__
            return concrete_condition(self.root, self.graph, obj.node, self.input_shape)


class _Importer:
    def __init__(self, module: nn.Module, input_shape: Sequence[int], name: str) -> None:
        self.module = module
        self.input_shape = tuple(int(s) for s in input_shape)
        self.graph = ArchGraph(meta={"name": name, "source": type(module).__name__})
        self.names: dict[fx.Node, str] = {}
        self.values: dict[fx.Node, tuple[Any, Any]] = {}

    def run(self) -> ArchGraph:
        try:
            traced = fx.GraphModule(self.module, _Tracer(self.input_shape).trace(self.module))
        except Exception as e:  # noqa: BLE001 - fx raises many kinds; all mean "not traceable"
            raise TraceError(f"cannot trace {type(self.module).__name__} with torch.fx: {e}. evo imports modules "
                             "without data-dependent control flow; wrap or rewrite the offending forward") from None
        self.traced = traced
        try:
            self.values = record(traced, self.input_shape)
        except Exception as e:  # noqa: BLE001
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TraceError(f"{type(self.module).__name__} does not run on input shape {self.input_shape}: {first}") from None
        for node in traced.graph.nodes:
            try:
                self._import(traced, node)
            except TraceError as e:
                raise TraceError(f"cannot import {_where(node)!r} ({node.op} {_target_name(node)}) of "
                                 f"{type(self.module).__name__}: {e}") from None
        return self.graph.validate()

    # ---- values recorded at the import size ---------------------------------------------------
    def _shape(self, n: fx.Node) -> tuple[int, ...]:
        v = self.values[n][0]
        if not is_tensor(v):
            raise TraceError(f"{n.name!r} is not a tensor")
        return v.shape[1:]

    def _batched(self, n: fx.Node) -> bool:
        """The tensor's first dimension is the batch (1 and 2 in the two recorded runs)."""
        a, b = self.values[n]
        return is_tensor(a) and is_tensor(b) and (a.shape[:1], b.shape[:1]) == ((1,), (2,))

    def _const(self, a: Any) -> Any:
        """An argument with every traced Python value replaced by its value at the import size."""
        def one(x: fx.Node) -> Any:
            v1, v2 = self.values[x]
            if x in self.names or is_tensor(v1) or is_tensors(v1):
                return x
            if v1 != v2:
                raise TraceError(f"argument {x.name!r} depends on the batch size ({v1} at batch 1, {v2} at batch 2)")
            return v1
        return fx.node.map_arg(a, one)

    # ---- graph construction -------------------------------------------------------------------
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

    def _alias(self, n: fx.Node, src: fx.Node) -> None:
        """`n` computes exactly `src` in eval mode: no node, its users read `src`."""
        self.names[n] = self.names[src]

    def _import(self, traced: fx.GraphModule, n: fx.Node) -> None:
        v1 = self.values[n][0]
        if n.op == "placeholder":
            if self.names:
                raise TraceError("models with more than one input are not supported")
            self.names[n] = self.graph.add_node("input", "input", {"shape": list(self.input_shape)})
        elif n.op == "output":
            if not isinstance(n.args[0], fx.Node) or n.args[0] not in self.names:
                raise TraceError("the model must return a single tensor, not a tuple or dict")
            name = self.graph.add_node("output", "output")
            self.graph.add_edge(self.names[n.args[0]], name)
        elif n.op == "get_attr":
            pass  # a parameter used outside a module: its user imports it (a layer scale) or refuses it
        elif n.op in ("call_function", "call_method") and not (is_tensor(v1) or is_tensors(v1)):
            check_shape_only(self.values, n)  # folded into its users; refused if it reads tensor data
        elif is_tensors(v1):
            if n.target not in _SPLITS:
                raise TraceError("returns several tensors; evo supports that for chunk and split only")
        elif n.op == "call_module":
            self._import_module(traced, n)
        elif n.op in ("call_function", "call_method"):
            self._import_function(n)
        else:
            raise TraceError(f"{n.op} is not supported")

    def _import_module(self, traced: fx.GraphModule, n: fx.Node) -> None:
        m = traced.get_submodule(n.target)
        (src,) = _tensor_args(n)
        if type(m) is nn.Identity:  # e.g. timm's post-classifier flatten: the head stays the final Linear
            self._alias(n, src)
            return
        specs = module_specs(m, self._shape(src))
        prev: fx.Node | str = src
        for spec in specs:
            source = f"{n.target}.{spec.suffix}" if spec.suffix else n.target
            prev = self._add(n, spec.kind, spec.attrs, [prev], spec.params or None, source=source)

    def _import_function(self, n: fx.Node) -> None:  # noqa: C901 - one branch per supported op
        t = n.target
        if any(a.op == "get_attr" for a in _tensor_args(n)):
            self._import_scale(n, _tensor_args(n))
            return
        if t in _RESHAPES:  # its shape arguments may hold the batch size; the recorded shapes say it all
            self._import_reshape(n, _tensor_args(n)[0])
            return
        cargs, ckw = self._const(n.args), self._const(n.kwargs)
        args = [a for a in cargs if isinstance(a, fx.Node)]
        nonten = [a for a in cargs if not isinstance(a, (fx.Node, list, tuple))]
        if t in (operator.add, torch.add, "add", operator.iadd) and len(args) == 2 and not ckw:
            self._add(n, "add", {}, args)
        elif t in (operator.mul, torch.mul, "mul") and len(args) == 2 and not ckw:
            self._add(n, "mul", {}, args)
        elif t in _FN_ACTIVATIONS or (n.op == "call_method" and t in _METHOD_ACTIVATIONS):
            self._add(n, _FN_ACTIVATIONS.get(t) or _METHOD_ACTIVATIONS[t], {}, args)
        elif t in _PERMUTES:
            self._import_permute(n, args[0], cargs, ckw)
        elif t in _NO_OPS and n.op == "call_method":
            self._alias(n, args[0])
        elif t is operator.getitem and args and is_tensors(self.values[args[0]][0]):
            self._import_piece(n, args[0], cargs[1])
        elif t is operator.getitem and len(args) == 1 and args[0] is cargs[0]:
            self._import_index(n, args[0], cargs[1])
        elif t is torch.cat:
            dim = ckw.get("dim", cargs[1] if len(cargs) > 1 else 0)
            parts = list(cargs[0])
            if dim not in (1, 1 - len(self._shape(parts[0])) - 1):
                raise TraceError(f"cat is supported along channels (dim=1), got dim={dim}")
            if len(parts) == 1:  # torch.cat([x]) is x
                self._alias(n, parts[0])
            else:
                self._add(n, "cat", {"dim": 1}, parts)
        elif _target_name(n) == "stochastic_depth" and n.op == "call_function":
            self._import_stochastic_depth(n, args[0], cargs, ckw)
        elif t in (F.adaptive_avg_pool2d,):
            size = ckw.get("output_size", cargs[1] if len(cargs) > 1 else None)
            self._add(n, "adaptiveavgpool2d", {"output_size": _jsonable(size)}, args)
        elif t in (F.max_pool2d, F.avg_pool2d):
            names = ["kernel_size", "stride", "padding"] + (["dilation", "ceil_mode"] if t is F.max_pool2d
                                                            else ["ceil_mode", "count_include_pad"])
            given = dict(zip(names, cargs[1:], strict=False)) | dict(ckw)
            if given.get("return_indices") or given.get("divisor_override"):
                raise TraceError("pooling with return_indices or divisor_override is not supported")
            given.pop("return_indices", None), given.pop("divisor_override", None)
            self._add(n, "maxpool2d" if t is F.max_pool2d else "avgpool2d", given, args)
        elif t in (torch.mean, "mean"):
            dims = ckw.get("dim", cargs[1] if len(cargs) > 1 else None)
            keep = ckw.get("keepdim", cargs[2] if len(cargs) > 2 else False)
            if dims is None:
                raise TraceError("mean over all dimensions would mix the batch; give dim=")
            dims = [dims] if isinstance(dims, int) else list(dims)
            if 0 in dims:
                raise TraceError("mean over the batch dimension is not supported")
            self._add(n, "mean", {"dims": dims, "keepdim": bool(keep)}, args)
        elif t is F.leaky_relu:
            slope = ckw.get("negative_slope", cargs[1] if len(cargs) > 1 else 0.01)
            self._add(n, "leakyrelu", {"negative_slope": float(slope)}, args)
        elif t is F.gelu:
            self._add(n, "gelu", {"approximate": ckw.get("approximate", "none")}, args)
        elif t in (F.dropout, "dropout"):
            self._add(n, "dropout", {"p": float(ckw.get("p", nonten[0] if nonten else 0.5))}, args)
        elif t in (F.pad,):
            pad = ckw.get("pad", cargs[1] if len(cargs) > 1 else None)
            self._add(n, "pad", {"pad": list(pad), "value": float(ckw.get("value", 0.0))}, args)
        else:
            raise TraceError(f"unsupported operation; evo supports {_SUPPORTED}")

    def _import_scale(self, n: fx.Node, args: list[fx.Node]) -> None:
        """`p * x` with a parameter p used outside a module (ConvNeXt's layer scale): a `scale` node holding p."""
        params = [a for a in args if a.op == "get_attr"]
        where = ", ".join(str(p.target) for p in params)
        if n.target not in (operator.mul, torch.mul, "mul") or len(args) != 2 or len(params) != 1 or n.kwargs \
                or any(not isinstance(a, fx.Node) for a in n.args):
            raise TraceError(f"uses parameter {where} outside a module; evo supports that only as a layer scale "
                             "(x * p); move the computation into a module")
        (x,) = [a for a in args if a.op != "get_attr"]
        if self._shape(n) != self._shape(x) or not self._batched(n):
            raise TraceError(f"the layer scale {where} changes the shape of its input; it must broadcast over it")
        p: Any = self.traced
        for part in str(params[0].target).split("."):
            p = getattr(p, part)
        self._add(n, "scale", {"shape": list(p.shape)}, [x], {"weight": p.detach().clone()},
                  source=str(params[0].target))

    def _import_reshape(self, n: fx.Node, src: fx.Node) -> None:
        """Any view/reshape/flatten that keeps the batch first: the per-sample shape recorded at the import size."""
        if not (self._batched(src) and self._batched(n)):
            raise TraceError("reshapes across the batch dimension; keep the batch first (e.g. x.view(x.size(0), ...))")
        shape, before = self._shape(n), self._shape(src)
        if shape == before:
            self._alias(n, src)
        elif len(shape) == 1:  # flatten(x, 1): a kind the growth operators know
            self._add(n, "flatten", {"start_dim": 1, "end_dim": -1}, [src])
        else:
            self._add(n, "reshape", {"shape": list(shape)}, [src])

    def _import_permute(self, n: fx.Node, src: fx.Node, cargs: list, ckw: dict) -> None:
        nd = len(self._shape(src)) + 1
        if n.target in (torch.transpose, "transpose"):
            d0 = ckw.get("dim0", cargs[1] if len(cargs) > 1 else None)
            d1 = ckw.get("dim1", cargs[2] if len(cargs) > 2 else None)
            dims = list(range(nd))
            dims[d0 % nd], dims[d1 % nd] = dims[d1 % nd], dims[d0 % nd]
        else:
            rest = list(cargs[1:])
            dims = ckw.get("dims", rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest)
            dims = [d % nd for d in dims]
        if dims[0] != 0:
            raise TraceError(f"permutes the batch dimension (dims={dims}); keep dimension 0 first")
        if dims == sorted(dims):
            self._alias(n, src)
        else:
            self._add(n, "permute", {"dims": dims}, [src])

    def _import_piece(self, n: fx.Node, src: fx.Node, index: Any) -> None:
        """`chunk(x, k, dim)[i]` / `split(x, s, dim)[i]`: a slice of x along `dim`."""
        split = src.all_input_nodes[0]
        cargs, ckw = self._const(src.args), self._const(src.kwargs)
        nd = len(self._shape(split)) + 1
        dim = ckw.get("dim", cargs[2] if len(cargs) > 2 else 0) % nd
        if dim == 0:
            raise TraceError("chunk/split along the batch dimension is not supported")
        sizes = [p.shape[dim] for p in self.values[src][0]]
        if not isinstance(index, int):
            raise TraceError(f"index {index!r} into chunks must be an integer")
        start = sum(sizes[:index % len(sizes)])
        self._add(n, "slice", {"dim": dim, "start": start, "end": start + sizes[index % len(sizes)]}, [split])

    def _import_index(self, n: fx.Node, src: fx.Node, index: Any) -> None:
        """`x[:, a:b]` (GhostNet, ReXNet): one slice node per sliced dimension; the batch stays whole."""
        index = index if isinstance(index, tuple) else (index,)
        shape = self._shape(src)
        if not all(isinstance(i, slice) for i in index) or len(index) > len(shape) + 1:
            raise TraceError(f"indexing with {index!r} is not supported; evo supports slices x[:, a:b, ...]")
        if index and index[0] != slice(None):
            raise TraceError(f"indexing {index!r} slices the batch dimension; keep it whole (x[:, ...])")
        prev: fx.Node | str = src
        for dim, sl in enumerate(index[1:], start=1):
            start, end, step = sl.indices(shape[dim - 1])
            if step != 1:
                raise TraceError(f"slices with a step ({sl!r}) are not supported")
            if (start, end) != (0, shape[dim - 1]):
                prev = self._add(n, "slice", {"dim": dim, "start": start, "end": max(start, end)}, [prev])
        if prev is src:
            self._alias(n, src)

    def _import_stochastic_depth(self, n: fx.Node, src: fx.Node, cargs: list, ckw: dict) -> None:
        """torchvision's stochastic_depth(x, p, mode, training) is x in eval mode (or at p = 0)."""
        names = ["input", "p", "mode", "training"]
        given = dict(zip(names, cargs, strict=False)) | dict(ckw)
        if given.get("training", True) and given.get("p", 1.0) != 0:
            raise TraceError("stochastic depth in training mode is random; import the model in eval mode")
        self._alias(n, src)


def _tensor_args(n: fx.Node) -> list[fx.Node]:
    return [a for a in n.args if isinstance(a, fx.Node)]


def _where(n: fx.Node) -> str:
    """The module path of a node: the module a call_module runs, else the module whose forward made it."""
    if n.op == "call_module":
        return str(n.target)
    stack = n.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]
        return f"{path}:{n.name}" if path else n.name
    return n.name


def _target_name(n: fx.Node) -> str:
    t = n.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def from_module(module: nn.Module, input_shape: Sequence[int] = (3, 224, 224), name: str | None = None,
                classes: Sequence[str] | None = None) -> ArchGraph:
    """Trace `module` with torch.fx and import it (eval-mode semantics, weights cloned)."""
    if not isinstance(module, nn.Module):
        raise TraceError(f"from_module needs an nn.Module, got {type(module).__name__}")
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) or not input_shape or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in input_shape):
        raise ConfigError(f"from_module input_shape is one image's shape without the batch, positive ints such as "
                          f"(3, 224, 224); got {input_shape!r}")
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

