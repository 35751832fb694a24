"""Importer rules behind the classifier families (issue 13): folded shape arithmetic, eval-mode no-ops,
reshape/permute/chunk, layer scale, and the one-line errors for what cannot be expressed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import evo.graph as eg
import evo.ops as ops
from evo.errors import TraceError


def _same(net: nn.Module, shape=(8, 6, 6)) -> eg.ArchGraph:
    net = net.eval()
    g = eg.from_module(net, shape)
    x = torch.randn(3, *shape)
    with torch.no_grad():
        assert torch.equal(g.to_module().eval()(x), net(x))
    return g


class Shuffle(nn.Module):
    """ShuffleNet v2's unit: chunk, conv one half, cat, channel shuffle through view/transpose/view."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        x = torch.cat((a, torch.relu(self.conv(b))), dim=1)
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
        torch._assert(x.dim() == 4, "4-D")
        return self.fc(torch.cat([x.mean((2, 3))], 1))  # a one-tensor cat is the tensor itself


def test_channel_shuffle_imports_as_slice_reshape_permute():
    g = _same(Shuffle())
    kinds = [g.op(n) for n in g.nodes()]
    assert {"slice", "reshape", "permute"} <= set(kinds) and "cat" in kinds
    assert kinds.count("cat") == 1  # the one-tensor cat is no node
    for op in ("deepen", "add_branch", "add_classes"):  # growth stays exact around the new kinds
        for site in ops.sites(g, op):
            child = ops.apply(g, op, site=site)
            x = torch.randn(2, 8, 6, 6)
            with torch.no_grad():
                ref, out = g.to_module().eval()(x), child.to_module().eval()(x)
            assert (out[:, :5] - ref).abs().max() <= 1e-5


def test_widen_refuses_channels_a_slice_or_reshape_reads():
    g = _same(Shuffle())
    groups = {s["group"] for s in ops.sites(g, "widen")}
    assert "conv" not in groups  # its output is reshaped by the shuffle
    with pytest.raises(Exception, match="cannot be widened exactly"):
        ops.apply(g, "widen", site={"group": "conv"})


class LayerScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.randn(8, 1, 1))
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.norm = nn.LayerNorm(8)
        self.act = nn.GELU()

    def forward(self, x):
        y = self.act(self.norm(self.dw(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return torch.flatten(x + self.gamma * y, 1)


def test_layer_scale_and_channels_last_norm_import():
    g = _same(LayerScale())
    assert {"scale", "layernorm", "gelu", "permute"} <= {g.op(n) for n in g.nodes()}
    assert g.flops() == eg.cost.meta_flops(g)


class BatchInView(nn.Module):
    def forward(self, x):
        return x.view(1, -1)


class DataValue(nn.Module):
    def forward(self, x):
        return x * x.mean((1, 2, 3)).tolist()[0]


class BiasOutside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(8, 1, 1))

    def forward(self, x):
        return x + self.bias


class Unbind(nn.Module):
    def forward(self, x):
        return x.unbind(1)[0]


@pytest.mark.parametrize(("net", "match"), [
    (BatchInView(), "reshapes across the batch dimension"),
    (DataValue(), "computes a Python value from tensor data"),
    (BiasOutside(), "uses parameter bias outside a module"),
    (Unbind(), "returns several tensors"),
])
def test_what_cannot_be_expressed_is_one_line_naming_the_op(net, match):
    with pytest.raises(TraceError, match=match) as e:
        eg.from_module(net.eval(), (8, 6, 6))
    assert "\n" not in str(e.value) and "cannot import" in str(e.value)


def test_same_padding_conv_at_stride_2_is_made_static():
    timm = pytest.importorskip("timm")
    from timm.layers import create_conv2d

    net = nn.Sequential(create_conv2d(3, 4, 3, stride=2, padding="same"), nn.Flatten()).eval()
    assert type(net[0]).__name__ == "Conv2dSame"
    g = _same(net, (3, 8, 8))  # TF pads 0 before and 1 after: an explicit pad node
    assert [g.op(n) for n in g.nodes()][1:3] == ["pad", "conv2d"] and g.attrs("n_0")["padding"] == [0, 0]
    g = _same(net, (3, 7, 7))  # 1 and 1: the conv's own padding
    assert [g.op(n) for n in g.nodes()][1:3] == ["conv2d", "flatten"] and g.attrs("n_0")["padding"] == [1, 1]
    assert timm


@pytest.mark.parametrize("net", [Shuffle(), LayerScale()])
def test_new_kinds_round_trip_through_save_and_load(net, tmp_path):
    g = _same(net)
    eg.save(g, tmp_path / "g")
    loaded = eg.load(tmp_path / "g")
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        assert torch.equal(loaded.to_module().eval()(x), g.to_module().eval()(x))


class ShapeBranch(nn.Module):
    """timm's VGG pre-logits: pool up to 4×4 only when the map is smaller (a Python branch on the shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        x = self.conv(x)
        if x.shape[-2] < 4 or x.shape[-1] < 4:
            x = nn.functional.adaptive_avg_pool2d(x, (max(4, x.shape[-2]), max(4, x.shape[-1])))
        return self.fc(torch.flatten(x, 1))


def test_a_branch_on_shapes_is_taken_as_at_the_import_size():
    g = _same(ShapeBranch(), (3, 5, 5))  # 3×3 after the conv: pooled up to 4×4
    assert "adaptiveavgpool2d" in {g.op(n) for n in g.nodes()}
    g = _same(ShapeBranch(), (3, 6, 6))  # 4×4 after the conv: the branch is not taken
    assert "adaptiveavgpool2d" not in {g.op(n) for n in g.nodes()}


class DataBranch(nn.Module):
    def forward(self, x):
        return torch.relu(x) if x.mean((1, 2, 3)).max() > 0 else x


class BatchBranch(nn.Module):
    def forward(self, x):
        return torch.relu(x) if x.shape[0] > 1 else x


@pytest.mark.parametrize(("net", "match"), [(DataBranch(), "branches on tensor data"),
                                            (BatchBranch(), "branches on the batch size")])
def test_a_branch_on_data_or_batch_size_is_refused(net, match):
    with pytest.raises(TraceError, match=match) as e:
        eg.from_module(net.eval(), (3, 4, 4))
    assert "\n" not in str(e.value)
