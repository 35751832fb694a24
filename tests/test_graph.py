"""ArchGraph: import exactness, shapes, counts, save/load round trip, and every bad input the issue names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import randomize_bn
from safetensors.torch import load_file, save_file
from torch import nn

import evo
import evo.graph as eg
from evo.errors import GraphError, TraceError, WeightsError


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "mobilenet_v3_small"])
def test_import_is_exact_and_counts_match(name):
    torch.manual_seed(0)
    src = getattr(torchvision.models, name)(num_classes=7).eval()
    g = eg.from_module(src, (3, 64, 64), name=name)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(g.to_module().eval()(x), src(x))
    assert g.num_params() == sum(p.numel() for p in src.parameters())
    assert g.shape(g.output) == (7,)
    assert g.head is not None and g.op(g.head) == "linear"
    assert len(g.classes) == 7


def test_forward_features_feeds_the_head():
    g = randomize_bn(evo.zoo.load("small_cnn"))
    net = g.to_module().eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        feats, logits = net.forward_both(x)
        assert feats.shape == (4, g.attrs(g.head)["in_features"])
        assert torch.equal(net.get_classifier()(feats), net(x))
        assert torch.equal(logits, net(x))


def test_flops_match_hand_count():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 5))
    g = eg.from_module(net, (3, 4, 4))
    conv = 2 * 8 * 3 * 9 * 16  # 2 FLOPs per MAC, 16 output pixels
    linear = 2 * 8 * 16 * 5
    assert g.flops() == conv + linear
    assert g.flops(batch=4) == 4 * (conv + linear)
    assert g.flops(backward=True) > 2 * g.flops()


def test_train_mode_matches_source_including_bn_updates():
    torch.manual_seed(1)
    src = torchvision.models.resnet18(num_classes=3)
    g = eg.from_module(src, (3, 32, 32))
    net = g.to_module().train()
    src.train()
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(net(x), src(x))
    torch.testing.assert_close(net.state_dict()["bn1.running_mean"], src.bn1.running_mean)
    updated = g.with_weights(net)
    assert torch.equal(updated.params("bn1")["running_mean"], src.bn1.running_mean)
    assert not torch.equal(g.params("bn1")["running_mean"], src.bn1.running_mean)  # parent untouched


def test_save_load_round_trip_is_identical(tmp_path):
    g = randomize_bn(evo.zoo.load("mobilenet_v3_small", input_size=64, num_classes=5))
    eg.save(g, tmp_path / "m")
    assert sorted(os.listdir(tmp_path)) == ["m"]  # no temp folders left behind
    g2 = eg.load(tmp_path / "m")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(g.to_module().eval()(x), g2.to_module().eval()(x))
    assert g2.meta == json.loads(json.dumps(g.meta))
    assert g2.nodes() == g.nodes()


def test_save_replaces_existing_folder_atomically(tmp_path):
    a, b = evo.zoo.load("small_cnn", seed=0), evo.zoo.load("small_cnn", seed=1)
    eg.save(a, tmp_path / "m")
    eg.save(b, tmp_path / "m")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(eg.load(tmp_path / "m").to_module().eval()(x), b.to_module().eval()(x))
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_save_never_replaces_a_folder_evo_did_not_write(tmp_path):
    """save swaps a folder in whole: over a user's folder it deleted everything there (a thesis beside a
    model, a home directory). It now replaces only an empty folder or one its marker vouches for."""
    g = evo.zoo.load("small_cnn")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    with pytest.raises(GraphError, match="more than a model"):
        eg.save(g, mine)
    assert sorted(os.listdir(mine)) == ["thesis.txt"] and sorted(os.listdir(tmp_path)) == ["mine"]
    eg.save(g, tmp_path / "m")
    (tmp_path / "m" / "notes.json").write_text("{}")  # a user's file added to a saved model
    with pytest.raises(GraphError, match="more than a model"):
        eg.save(g, tmp_path / "m")
    assert (tmp_path / "m" / "notes.json").exists()
    (tmp_path / "m" / "notes.json").unlink()
    eg.save(g, tmp_path / "m")  # evo's own folder: replaced
    legacy = tmp_path / "legacy"  # saved before markers: only the files evo writes
    eg.save(g, legacy)
    (legacy / eg.io.MODEL_MARKER).unlink()
    eg.save(g, legacy)
    (tmp_path / "empty").mkdir()
    eg.save(g, tmp_path / "empty")
    (tmp_path / "f").write_text("x")
    for target, match in ((tmp_path / "f", "is a file"), (Path("/proc/evo-x"), "cannot save")):
        with pytest.raises(GraphError, match=match):
            eg.save(g, target)
    assert (tmp_path / "f").read_text() == "x"


# ---- bad input ---------------------------------------------------------------------------------


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 4)

    def forward(self, x):
        return self.lstm(x)[0]


def test_untraceable_model_is_a_trace_error():
    with pytest.raises(TraceError, match="cannot trace DataDependent"):
        eg.from_module(DataDependent(), (3, 8, 8))


def test_unsupported_op_names_op_and_module_path():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ELU())

        def forward(self, x):
            return self.body(x)

    with pytest.raises(TraceError, match=r"body\.1.*ELU"):
        eg.from_module(Net(), (3, 8, 8))


def test_non_module_input_is_refused():
    with pytest.raises(TraceError, match="needs an nn.Module"):
        eg.from_module("resnet18", (3, 8, 8))


def _saved(tmp_path):
    g = evo.zoo.load("small_cnn")
    eg.save(g, tmp_path / "m")
    return tmp_path / "m"


def _edit_json(path, fn):
    doc = json.loads((path / "graph.json").read_text())
    fn(doc)
    (path / "graph.json").write_text(json.dumps(doc))


def test_cycle_in_graph_json_is_named(tmp_path):
    d = _saved(tmp_path)
    _edit_json(d, lambda doc: doc["edges"].append({"src": "classifier", "dst": "stem_0", "index": 1}))
    with pytest.raises(GraphError, match="cycle"):
        eg.load(d)


def test_dangling_edge_is_named(tmp_path):
    d = _saved(tmp_path)
    _edit_json(d, lambda doc: doc["edges"].append({"src": "ghost", "dst": "stem_0", "index": 1}))
    with pytest.raises(GraphError, match="dangling.*ghost"):
        eg.load(d)


def test_unknown_kind_and_bad_attrs(tmp_path):
    d = _saved(tmp_path)
    _edit_json(d, lambda doc: doc["nodes"][2].update(op="warp_drive"))
    with pytest.raises(GraphError, match="warp_drive"):
        eg.load(d)
    d = _saved(tmp_path / "2")
    _edit_json(d, lambda doc: next(n for n in doc["nodes"] if n["name"] == "fc1")["attrs"].update(in_features=99))
    with pytest.raises(GraphError, match="fc1"):
        eg.load(d)


def test_malformed_json_and_missing_files(tmp_path):
    d = _saved(tmp_path)
    (d / "graph.json").write_text("{not json")
    with pytest.raises(GraphError, match="not valid JSON"):
        eg.load(d)
    with pytest.raises(GraphError, match="not found"):
        eg.load(tmp_path / "nowhere")
    (d / "graph.json").write_text('{"format": "something-else"}')
    with pytest.raises(GraphError, match="not an evo graph"):
        eg.load(d)


def test_corrupt_weights_file(tmp_path):
    d = _saved(tmp_path)
    data = (d / "weights.safetensors").read_bytes()
    (d / "weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="corrupt"):
        eg.load(d)


def test_mismatched_weights_file(tmp_path):
    d = _saved(tmp_path)
    tensors = load_file(str(d / "weights.safetensors"))
    tensors["fc1.weight"] = torch.zeros(3, 3)
    save_file(tensors, str(d / "weights.safetensors"))
    with pytest.raises(GraphError, match="fc1.*shape"):
        eg.load(d)
    del tensors["fc1.weight"]
    save_file(tensors, str(d / "weights.safetensors"))
    with pytest.raises(WeightsError, match="lacks tensor 'fc1.weight'"):
        eg.load(d)
    tensors["fc1.weight"] = torch.zeros(64, 32)
    tensors["extra.weight"] = torch.zeros(1)
    save_file(tensors, str(d / "weights.safetensors"))
    with pytest.raises(WeightsError, match="extra.weight"):
        eg.load(d)


def test_nan_weights_are_refused(tmp_path):
    d = _saved(tmp_path)
    tensors = load_file(str(d / "weights.safetensors"))
    tensors["stem_0.weight"] = tensors["stem_0.weight"].clone()
    tensors["stem_0.weight"][0, 0, 0, 0] = float("nan")
    save_file(tensors, str(d / "weights.safetensors"))
    with pytest.raises(WeightsError, match="stem_0.weight.*NaN"):
        eg.load(d)


def test_failed_save_leaves_no_partial_folder(tmp_path):
    g = evo.zoo.load("small_cnn").copy()
    g.set_params("fc1", weight=torch.zeros(2, 2))  # invalid: save validates first
    with pytest.raises(GraphError):
        eg.save(g, tmp_path / "m")
    assert os.listdir(tmp_path) == []


def test_validate_names_shape_mismatch_node():
    g = evo.zoo.load("small_cnn").copy()
    g.attrs("left")["out_channels"] = 8
    g.set_params("left", weight=torch.zeros(8, 32, 1, 1), bias=torch.zeros(8))
    with pytest.raises(GraphError, match="mix_bn"):
        g.validate()


def test_functional_pooling_imports_exactly():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            x = nn.functional.max_pool2d(self.conv(x), 2, ceil_mode=True)
            return nn.functional.avg_pool2d(x, kernel_size=2, stride=1)

    net = Net().eval()
    g = eg.from_module(net, (3, 11, 11))
    x = torch.randn(2, 3, 11, 11)
    with torch.no_grad():
        assert torch.equal(g.to_module().eval()(x), net(x))
    assert [g.op(n) for n in g.nodes()][2:4] == ["maxpool2d", "avgpool2d"]


@pytest.mark.parametrize("name", ["small_cnn", "mobilenet_v3_small", "efficientnet_lite0"])
def test_shape_based_flops_equal_the_meta_flop_counter(name):
    from evo.graph.cost import count_flops, meta_flops

    g = evo.zoo.load(name, input_size=None if name == "small_cnn" else 64)
    for backward in (False, True):
        assert count_flops(g, batch=3, backward=backward) == meta_flops(g, batch=3, backward=backward)
    total, per_node = count_flops(g, per_node=True)
    meta_total, meta_nodes = meta_flops(g, per_node=True)
    assert total == meta_total and per_node == {k: v for k, v in meta_nodes.items() if v}
    # a step that trains only the head, or the last two blocks: what fine-tuning candidates are priced at
    from evo.learn.train import trainable_nodes

    full = count_flops(g, batch=3, backward=True)
    for trainable in ("head", 2):
        nodes = trainable_nodes(g, trainable)
        part = count_flops(g, batch=3, backward=True, trainable=nodes)
        assert part == meta_flops(g, batch=3, backward=True, trainable=nodes)
        assert count_flops(g, batch=3) < part < full
