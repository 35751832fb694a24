"""ArchGraph: a mutable architecture as a networkx DAG of layer nodes joined by tensor edges.

Nodes carry `op` (a layer kind), JSON-safe `attrs` and `params` (tensors). Edges carry the argument
`index` at the consumer and the tensor `shape` (without the batch dimension). Tensors are never
mutated in place, so `copy()` shares them: growth operators replace the tensors they change, and a
parent graph stays exactly as it was.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Iterator
from typing import Any

import networkx as nx
import torch

from evo.errors import GraphError, UnknownNameError
from evo.graph.layers import BUFFERS, KINDS

Shape = tuple[int, ...]


class ArchGraph:
    """A network as a DAG with one `input` node and one `output` node."""

    def __init__(self, meta: dict[str, Any] | None = None) -> None:
        self.g = nx.DiGraph()
        self.meta: dict[str, Any] = dict(meta or {})

    # ---- construction -------------------------------------------------------------------------
    def add_node(self, name: str, op: str, attrs: dict[str, Any] | None = None,
                 params: dict[str, torch.Tensor] | None = None, source: str | None = None,
                 role: str | None = None) -> str:
        """Add a node. `source` is its module path (blocks group by it); `role` marks nodes that
        graph surgery added for a purpose (e.g. "tap", see evo.graph.taps); both are saved."""
        if name in self.g:
            raise GraphError(f"node {name!r} already exists")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise GraphError(f"node name {name!r} must be a Python identifier (letters, digits, _)")
        KINDS.get(op)
        self.g.add_node(name, op=op, attrs=dict(attrs or {}), params=dict(params or {}),
                        source=source or name, role=role, shape=None)
        return name

    def add_edge(self, src: str, dst: str, index: int = 0) -> None:
        for n in (src, dst):
            if n not in self.g:
                raise GraphError(f"edge {src!r} -> {dst!r} refers to missing node {n!r}")
        if self.g.has_edge(src, dst):
            raise GraphError(f"edge {src!r} -> {dst!r} already exists; route a repeated input through an identity node")
        self.g.add_edge(src, dst, index=index, shape=self.g.nodes[src]["shape"])

    def redirect_consumers(self, old: str, new: str, keep: tuple[str, ...] = ()) -> None:
        """Make every consumer of `old` (except those in `keep`) read `new` instead, at the same argument index."""
        for c in self.consumers(old):
            if c in keep:
                continue
            index = self.g.edges[old, c]["index"]
            self.g.remove_edge(old, c)
            self.add_edge(new, c, index=index)

    def remove_node(self, name: str) -> None:
        self.g.remove_node(name)

    def fresh_name(self, prefix: str) -> str:
        """A node name starting with `prefix` that is not used yet."""
        base = re.sub(r"\W", "_", prefix) or "n"
        if base[0].isdigit():
            base = "n_" + base
        if base not in self.g:
            return base
        i = 1
        while f"{base}_{i}" in self.g:
            i += 1
        return f"{base}_{i}"

    def copy(self) -> ArchGraph:
        """A structural copy: new node and edge dicts, shared (immutable) tensors."""
        out = ArchGraph(meta=_deep_meta(self.meta))
        for n, d in self.g.nodes(data=True):
            out.g.add_node(n, op=d["op"], attrs=_deep_meta(d["attrs"]), params=dict(d["params"]),
                           source=d["source"], role=d.get("role"), shape=d["shape"])
        for u, v, d in self.g.edges(data=True):
            out.g.add_edge(u, v, **d)
        return out

    # ---- queries ------------------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return name in self.g

    def __len__(self) -> int:
        return self.g.number_of_nodes()

    def node(self, name: str) -> dict[str, Any]:
        try:
            return self.g.nodes[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name
            raise UnknownNameError(f"no node named {name!r} in the graph") from None

    def op(self, name: str) -> str:
        return self.node(name)["op"]

    def attrs(self, name: str) -> dict[str, Any]:
        return self.node(name)["attrs"]

    def params(self, name: str) -> dict[str, torch.Tensor]:
        return self.node(name)["params"]

    def shape(self, name: str) -> Shape:
        s = self.node(name)["shape"]
        if s is None:
            self.infer_shapes()
            s = self.node(name)["shape"]
        return tuple(s)

    def set_params(self, name: str, **tensors: torch.Tensor) -> None:
        """Replace (never mutate) some of a node's tensors."""
        self.node(name)["params"] = {**self.params(name), **tensors}

    def inputs_of(self, name: str) -> list[str]:
        """Producers of a node's arguments, in argument order."""
        preds = self.g.in_edges(name, data="index")
        return [u for u, _, _ in sorted(preds, key=lambda e: e[2])]

    def consumers(self, name: str) -> list[str]:
        self.node(name)
        return list(self.g.successors(name))

    def nodes(self) -> list[str]:
        """Node names in a deterministic topological order."""
        try:
            return list(nx.topological_sort(self.g))
        except nx.NetworkXUnfeasible:
            cycle = nx.find_cycle(self.g)
            raise GraphError(f"graph has a cycle through {' -> '.join(u for u, _ in cycle)}") from None

    def nodes_of(self, *ops: str) -> Iterator[str]:
        for n in self.nodes():
            if self.op(n) in ops:
                yield n

    @property
    def input(self) -> str:
        return self._single("input")

    @property
    def output(self) -> str:
        return self._single("output")

    def _single(self, op: str) -> str:
        found = [n for n, d in self.g.nodes(data=True) if d["op"] == op]
        if len(found) != 1:
            raise GraphError(f"graph must have exactly one {op!r} node, found {len(found)}: {found}")
        return found[0]

    @property
    def input_shape(self) -> Shape:
        return tuple(self.attrs(self.input)["shape"])

    @property
    def head(self) -> str | None:
        """The final Linear feeding the output: the classifier that add_classes and the closed-form head use."""
        (src,) = self.inputs_of(self.output)
        return src if self.op(src) == "linear" else None

    @property
    def features(self) -> str:
        """The node whose output is the head's input (pre-logits); the output's producer if there is no head."""
        head = self.head
        return self.inputs_of(head)[0] if head else self.inputs_of(self.output)[0]

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes", []))

    # ---- checks and derived facts -------------------------------------------------------------
    def validate(self) -> ArchGraph:
        """Check structure, attributes, parameter shapes and tensor shapes; errors name the node."""
        if not nx.is_directed_acyclic_graph(self.g):
            self.nodes()  # raises with the cycle
        self.input, self.output  # noqa: B018 - exactly one of each
        for n in self.nodes():
            d = self.g.nodes[n]
            if d["op"] not in KINDS:
                raise GraphError(f"node {n!r} has unknown kind {d['op']!r}; valid kinds: {', '.join(KINDS.names())}")
            kind = KINDS.get(d["op"])
            n_in = self.g.in_degree(n)
            lo, hi = kind.arity
            if n_in < lo or (hi >= 0 and n_in > hi):
                raise GraphError(f"node {n!r} ({d['op']}) takes {lo}..{hi if hi >= 0 else 'n'} inputs, has {n_in}")
            idx = sorted(i for _, _, i in self.g.in_edges(n, data="index"))
            if idx != list(range(n_in)):
                raise GraphError(f"node {n!r} has input indices {idx}; expected 0..{n_in - 1}")
            missing = [k for k in kind.required if k not in d["attrs"]]
            if missing:
                raise GraphError(f"node {n!r} ({d['op']}) lacks attributes {missing}")
            if kind.build is not None:
                try:
                    expected = _expected_params(d["op"], d["attrs"])
                except Exception as e:  # noqa: BLE001 - torch refuses the attributes: name the node, not torch
                    raise GraphError(f"node {n!r} ({d['op']}) has attributes {d['attrs']} that do not build a "
                                     f"layer: {type(e).__name__}: {e}") from None
                _check_params(n, expected, d["params"])
            elif d["params"]:
                raise GraphError(f"node {n!r} ({d['op']}) takes no parameters, has {sorted(d['params'])}")
        if self.g.out_degree(self.output):
            raise GraphError(f"output node {self.output!r} must not feed other nodes")
        self.infer_shapes()
        return self

    def infer_shapes(self) -> ArchGraph:
        """Propagate tensor shapes from the input by running every node on the meta device."""
        shapes: dict[str, Shape] = {}
        for n in self.nodes():
            d = self.g.nodes[n]
            if d["op"] == "input":
                shapes[n] = tuple(d["attrs"]["shape"])
            elif d["op"] == "output":
                shapes[n] = shapes[self.inputs_of(n)[0]]
            else:
                got = tuple(shapes[p] for p in self.inputs_of(n))
                try:
                    shapes[n] = _output_shape(d["op"], _freeze(d["attrs"]), got)
                except Exception as e:  # noqa: BLE001 - any failure is a shape mismatch at this node
                    raise GraphError(f"node {n!r} ({d['op']}, from {d['source']!r}) cannot take inputs of shape "
                                     f"{list(got)}: {e}") from None
            d["shape"] = shapes[n]
        for u, _v, e in self.g.edges(data=True):
            e["shape"] = shapes[u]
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All tensors keyed `node.param`, the same keys as the compiled module's state dict."""
        return {f"{n}.{k}": t for n in self.nodes() for k, t in self.params(n).items()}

    def num_params(self) -> int:
        """Trainable parameters (buffers such as BN running statistics excluded)."""
        return sum(t.numel() for k, t in self.state_dict().items() if not k.endswith(BUFFERS))

    def flops(self, batch: int = 1, backward: bool = False, trainable: Collection[str] | None = None) -> int:
        """FLOPs of a forward (or training step) at `batch`; `trainable` limits which nodes train."""
        from evo.graph.cost import count_flops

        return count_flops(self, batch=batch, backward=backward, trainable=trainable)

    def to_module(self):  # -> EvoNet (import cycle)
        from evo.graph.compile import EvoNet

        return EvoNet(self)

    def with_weights(self, module: torch.nn.Module) -> ArchGraph:
        """A copy whose tensors are taken (detached, cloned) from a compiled module, e.g. after training."""
        if not isinstance(module, torch.nn.Module):
            raise GraphError(f"with_weights takes the module compiled from this graph (graph.to_module()); got "
                             f"{type(module).__name__}")
        out = self.copy()
        sd = module.state_dict()
        missing = [f"{n}.{k}" for n in out.nodes() for k in out.params(n) if f"{n}.{k}" not in sd]
        if missing:
            raise GraphError(f"with_weights: the module lacks tensors {missing[:3]} of this graph; pass the module "
                             "compiled from this graph (graph.to_module())")
        for n in out.nodes():
            ps = out.params(n)
            if ps:
                out.node(n)["params"] = {k: sd[f"{n}.{k}"].detach().to("cpu").clone() for k in ps}
        return out

    def summary(self) -> str:
        from evo.graph.cost import summary

        return summary(self)

    def __repr__(self) -> str:
        return f"ArchGraph({self.meta.get('name', '?')!r}, nodes={len(self)}, params={self.num_params():,})"


def _freeze(x: Any) -> Any:
    """A hashable form of JSON-like attributes, for the caches below."""
    if isinstance(x, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in x.items()))
    if isinstance(x, list):
        return tuple(_freeze(v) for v in x)
    return x


def _thaw(x: Any) -> Any:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in x}


@functools.lru_cache(maxsize=8192)
def _output_shape(op: str, attrs: tuple, in_shapes: tuple[Shape, ...]) -> Shape:
    """Run one node on the meta device (cached: growth re-validates graphs whose nodes rarely change)."""
    from evo.graph.compile import build_module

    known = KINDS.get(op).output_shape(_thaw(attrs), in_shapes)
    if known is not None:
        return known
    args = [torch.empty((2, *s), device="meta") for s in in_shapes]
    return tuple(build_module(op, _thaw(attrs), device="meta").eval()(*args).shape[1:])


@functools.lru_cache(maxsize=8192)
def _expected_params_cached(op: str, attrs: tuple) -> tuple[tuple[str, Shape, bool], ...]:
    from evo.graph.compile import build_module

    return tuple((k, tuple(v.shape), v.is_floating_point())
                 for k, v in build_module(op, _thaw(attrs), device="meta").state_dict().items())


def _expected_params(op: str, attrs: dict[str, Any]) -> dict[str, tuple[Shape, bool]]:
    return {k: (shape, floating) for k, shape, floating in _expected_params_cached(op, _freeze(attrs))}


def _check_params(name: str, expected: dict[str, tuple[Shape, bool]], params: dict[str, torch.Tensor]) -> None:
    got = {k: tuple(v.shape) for k, v in params.items()}
    if set(expected) != set(got):
        raise GraphError(f"node {name!r} has tensors {sorted(got)}; its kind needs {sorted(expected)}")
    for k, (shp, floating) in expected.items():
        if got[k] != shp:
            raise GraphError(f"node {name!r} tensor {k!r} has shape {got[k]}; its attributes need {shp}")
        if params[k].is_floating_point() != floating:
            want = "a floating-point" if floating else "an integer"
            raise GraphError(f"node {name!r} tensor {k!r} has dtype {params[k].dtype}; it must be {want} tensor "
                             "(was the weights file converted?)")


def _deep_meta(x: Any) -> Any:
    """Copy JSON-like data (dicts/lists of scalars) without touching tensors."""
    if isinstance(x, dict):
        return {k: _deep_meta(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deep_meta(v) for v in x]
    return x
