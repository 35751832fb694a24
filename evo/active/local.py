"""Local correction features: each correction brings a feature that is non-zero only near its image.

A linear head over fixed features can only fix a flagged image by tilting its decision boundary
everywhere; at full data the errors users flag are the hard, ambiguous images, and the tilt that
makes them hold costs held-out accuracy (measured: −0.2 to −0.3 points for 200 corrections on
Fashion-MNIST). So a correction k also adds the feature

    ψ_k(x) = relu((corr(x, x_k) − τ) / (1 − τ)),   corr(x, x_k) = LN(x)·LN(x_k) / d,

the Pearson correlation of x's head features with the corrected image's (LN: layer norm without
affine), thresholded at τ: 1 on the image itself, 0 for everything less similar than τ. The head
solves over [φ(x), 1, ψ(x)] with ridge `local_ridge` on the ψ block; the base statistics have no
ψ entries (the old images are taken to lie below τ of every correction), and a correction's ψ
cross terms come from the live corrections (all kept). The fix is then local: the corrected
image holds at a weight near 1 and images unlike it do not move. It is exact to add and remove
(`RankOneHead.with_column` / `without_column`), and it exports as three graph nodes: layernorm →
linear → relu, concatenated with the features before the head (`export`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from evo.errors import ConfigError
from evo.graph.archgraph import ArchGraph

LN_EPS = 1e-5


def normalised(x: Tensor) -> Tensor:
    """LN(x)/√d in float64 (rows): the unit vectors whose dot products are the correlations."""
    x = x.double()
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), eps=LN_EPS) / x.shape[-1] ** 0.5


def psi(ln: Tensor, protos: Tensor, tau: float) -> Tensor:
    """ψ (n, m) of rows whose `normalised` features are `ln` (n, d), for prototypes `protos` (m, d)."""
    if protos.shape[0] == 0:
        return ln.new_zeros(ln.shape[0], 0)
    return torch.relu((ln @ protos.T - tau) / (1.0 - tau))


def check(tau: float | None, ridge: float) -> None:
    if tau is not None and not 0.0 <= float(tau) < 1.0:
        raise ConfigError(f"locality (the correlation threshold τ) must be in [0, 1) or None; got {tau!r}")
    if not float(ridge) > 0:
        raise ConfigError(f"local_ridge must be > 0; got {ridge!r}")


def export(graph: ArchGraph, protos: Tensor, tau: float, head_weight: Tensor, head_bias: Tensor) -> ArchGraph:
    """`graph` with the local features wired in: features → layernorm → linear(m) → relu, concatenated
    (`protos`: the layer-normed prototype features LN(x_k), m × d)
    after the features as the head's input; the head gets `head_weight` (C, d + m) and `head_bias`."""
    g = graph.copy()
    feats, head = g.features, g.head
    d = int(protos.shape[1])
    dtype = g.params(head)["weight"].dtype
    ln = g.add_node(g.fresh_name("correction_norm"), "layernorm",
                    {"normalized_shape": [d], "eps": LN_EPS, "elementwise_affine": False, "bias": False},
                    role="corrections")
    lin = g.add_node(g.fresh_name("correction_match"), "linear",
                     {"in_features": d, "out_features": int(protos.shape[0]), "bias": True},
                     {"weight": (protos / (d * (1.0 - tau))).to(dtype),
                      "bias": torch.full((protos.shape[0],), -tau / (1.0 - tau), dtype=dtype)}, role="corrections")
    act = g.add_node(g.fresh_name("correction_relu"), "relu", {}, role="corrections")
    cat = g.add_node(g.fresh_name("correction_cat"), "cat", {"dim": 1}, role="corrections")
    g.add_edge(feats, ln)
    g.add_edge(ln, lin)
    g.add_edge(lin, act)
    g.redirect_consumers(feats, cat, keep=(ln,))
    g.add_edge(feats, cat, index=0)
    g.add_edge(act, cat, index=1)
    g.node(head)["attrs"] = {**g.attrs(head), "in_features": int(head_weight.shape[1])}
    g.set_params(head, weight=head_weight.to(dtype), bias=head_bias.to(dtype))
    return g.infer_shapes()
