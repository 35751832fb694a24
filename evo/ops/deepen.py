"""deepen (Net2DeeperNet): insert an identity layer, an identity batch norm and the same activation again.

After an idempotent activation φ (ReLU, ReLU6: φ(φ(x)) = φ(x)) the op inserts

    φ(x) → conv k×k (identity: centre tap 1, zero elsewhere, same padding) or linear (identity)
         → batch norm set to identity (optional) → φ again

and hands every former consumer of φ(x) the new φ's output. Identity layer and identity BN give back
φ(x), and φ(φ(x)) = φ(x), so the child computes exactly the parent's function in eval mode.

The new BN uses running_mean = μ, running_var = σ², weight = sqrt(σ² + eps), bias = μ, which is the
identity in eval mode for any μ, σ². With no `batch`, μ = 0 and σ² = 1. With `batch` (input images),
μ and σ² are the per-channel mean and biased variance of φ(x) on that batch, computed with the parent
in eval mode: the statistics then match the data the BN will see, and the BN is also the identity in
train mode on that batch while the layers before it stay in eval mode (train mode normalises by the
biased batch variance).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from evo.errors import ConfigError
from evo.graph.archgraph import ArchGraph
from evo.graph.layers import KINDS
from evo.ops._util import check_odd_kernel, check_seed, fresh_params, param_dtype
from evo.ops.base import GrowthOp, Site, register


@register
class Deepen(GrowthOp):
    """Insert an identity conv/linear (+ identity BN) and the same idempotent activation after one.

    Sites: `{"after": node}` for every ReLU/ReLU6 whose output is an image tensor (C, H, W), where a conv
    is inserted, or a vector (C,), where a linear is inserted, and that does not feed the output node.
    Params: `kernel_size` (odd; conv sites only, ignored at vector sites), `bn` (insert the identity BN),
    `batch` (optional input images; sets the BN's statistics from the activation on them; a tensor,
    so it is not recorded in the history), `seed` (accepted for a uniform interface; the op is
    deterministic).
    """

    name = "deepen"
    defaults = {"kernel_size": 3, "bn": True, "batch": None, "seed": 0}

    def sites(self, graph: ArchGraph) -> list[Site]:
        out = []
        for n in graph.nodes():
            op = graph.op(n)
            if op not in KINDS or not KINDS.get(op).idempotent:
                continue
            if graph.output in graph.consumers(n) or len(graph.shape(n)) not in (1, 3):
                continue
            out.append({"after": n})
        return out

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        p = super().check_params(params)
        check_odd_kernel(p["kernel_size"])
        if not isinstance(p["bn"], bool):
            raise ConfigError(f"bn must be True or False; got {p['bn']!r}")
        if p["batch"] is not None and not isinstance(p["batch"], torch.Tensor):
            raise ConfigError(f"batch must be None or a tensor of input images (N, C, H, W); got {type(p['batch'])}")
        if p["batch"] is not None and not p["bn"]:
            raise ConfigError("batch sets the new batch norm's statistics, so it needs bn=True; got bn=False")
        check_seed(p["seed"])
        return p

    def grow(self, graph: ArchGraph, site: Site, kernel_size: int = 3, bn: bool = True,
             batch: torch.Tensor | None = None, seed: int = 0) -> None:
        after = site["after"]
        shape = graph.shape(after)
        c = shape[0]
        dtype = param_dtype(graph)
        mean, var = (activation_stats(graph, after, batch) if batch is not None
                     else (torch.zeros(c, dtype=dtype), torch.ones(c, dtype=dtype)))

        if len(shape) == 3:
            k = kernel_size
            layer_op = "conv2d"
            attrs = {"in_channels": c, "out_channels": c, "kernel_size": [k, k], "stride": [1, 1],
                     "padding": [k // 2, k // 2], "dilation": [1, 1], "groups": 1, "bias": not bn}
            weight = torch.zeros(c, c, k, k, dtype=dtype)
            weight[torch.arange(c), torch.arange(c), k // 2, k // 2] = 1.0
            bn_op = "batchnorm2d"
        else:
            layer_op = "linear"
            attrs = {"in_features": c, "out_features": c, "bias": not bn}
            weight = torch.eye(c, dtype=dtype)
            bn_op = "batchnorm1d"
        tensors = {"weight": weight}
        if not bn:
            tensors["bias"] = torch.zeros(c, dtype=dtype)

        layer = graph.add_node(graph.fresh_name(f"{after}_deep"), layer_op, attrs,
                               fresh_params(layer_op, attrs, **tensors), source=f"deepen:{after}")
        last = layer
        if bn:
            bn_attrs = {"num_features": c, "eps": 1e-5, "momentum": 0.1}
            eps = bn_attrs["eps"]
            mean, var = mean.to(dtype), var.to(dtype)
            # weight = sqrt(var + eps) in the BN's own precision, so it cancels the BN's 1/sqrt(var + eps).
            bn_params = fresh_params(bn_op, bn_attrs, running_mean=mean, running_var=var,
                                     weight=torch.sqrt(var + eps), bias=mean.clone())
            last = graph.add_node(graph.fresh_name(f"{after}_deep_bn"), bn_op, bn_attrs, bn_params,
                                  source=f"deepen:{after}")
        act = graph.add_node(graph.fresh_name(f"{after}_deep_act"), graph.op(after), dict(graph.attrs(after)),
                             {}, source=f"deepen:{after}")
        graph.redirect_consumers(after, act)
        graph.add_edge(after, layer, 0)
        if bn:
            graph.add_edge(layer, last, 0)
        graph.add_edge(last, act, 0)


def activation_stats(graph: ArchGraph, node: str, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of `node`'s output on `batch`, with the network in eval mode."""
    want = graph.input_shape
    if batch.dim() != len(want) + 1 or tuple(batch.shape[1:]) != tuple(want) or batch.shape[0] < 1:
        raise ConfigError(f"batch must be input images of shape (N, {', '.join(map(str, want))}) with N >= 1; "
                          f"got {tuple(batch.shape)}")
    if not batch.is_floating_point() or not bool(torch.isfinite(batch).all()):
        raise ConfigError(f"batch must hold finite floating-point images; got dtype {batch.dtype}"
                          + ("" if not batch.is_floating_point() else " with non-finite values"))
    net = graph.to_module().to(batch.device).eval()
    seen: dict[str, torch.Tensor] = {}

    def hook(_m: torch.nn.Module, _args: Any, out: torch.Tensor) -> None:
        x = out.detach().to(torch.float64)
        dims = [0, *range(2, x.dim())]
        seen["mean"] = x.mean(dims)
        seen["var"] = x.var(dims, unbiased=False)
        raise _Stop

    handle = net.get_submodule(node).register_forward_hook(hook)
    try:
        with torch.no_grad():
            net(batch)
    except _Stop:
        pass
    finally:
        handle.remove()
    mean, var = seen["mean"].cpu(), seen["var"].cpu()
    if not (math.isfinite(mean.abs().max().item()) and math.isfinite(var.max().item())):
        raise ConfigError(f"the activation {node!r} is not finite on this batch; pass other images or batch=None")
    return mean, var


class _Stop(Exception):
    """Ends the statistics forward pass at the hooked node (nothing after it is needed)."""
