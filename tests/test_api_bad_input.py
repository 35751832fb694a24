"""Bad input to the public Python API (zoo, ops, data, graph, Learner) raises a named EvoError, never a
raw Python or torch exception, and a refused call leaves the object it was made on as it was."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import evo
import evo.graph as eg
from evo.data import ImageSet, class_incremental, concat, domain_incremental, holdout_split, load_source
from evo.errors import ConfigError, DataError, EvoError, GraphError, UnknownNameError


@pytest.fixture(scope="module")
def graph():
    return evo.zoo.load("small_cnn", input_size=32, width=4)


def _set(n: int = 16, classes: tuple[str, ...] = ("a", "b", "c", "d"), hw: int = 16, seed: int = 0) -> ImageSet:
    rng = np.random.default_rng(seed)
    return ImageSet.from_arrays(rng.integers(0, 255, (n, hw, hw, 3), dtype=np.uint8), np.arange(n) % len(classes),
                                list(classes))


@pytest.fixture(scope="module")
def pair():
    return _set(16), _set(8, seed=1)


@pytest.fixture(scope="module")
def learner(graph, pair):
    lrn = evo.Learner(graph, memory=20, strategy="replay", epochs=1, progress=False)
    lrn.learn(class_incremental(pair, increments=2, seed=0)[0])
    return lrn


def _snapshot(lrn) -> tuple:
    return lrn.graph_, list(lrn.classes_), len(lrn.reports_), lrn._first_index, {
        k: v.clone() for k, v in lrn.state_dict().items()}


def _same(lrn, snap) -> bool:
    graph, classes, n_reports, first, state = snap
    now = lrn.state_dict()
    return (lrn.graph_ is graph and lrn.classes_ == classes and len(lrn.reports_) == n_reports
            and lrn._first_index == first and now.keys() == state.keys()
            and all(torch.equal(now[k], state[k]) for k in now))


# -- registries and the zoo -------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda g: evo.zoo.load(["small_cnn"]),
    lambda g: evo.ops.sites(g, ["widen"]),
    lambda g: evo.ops.get_op({}),
    lambda g: evo.Learner(g, selector=["herding"]),
], ids=["zoo", "ops.sites", "ops.get_op", "selector"])
def test_unhashable_name_is_unknown_name(graph, call):
    with pytest.raises(UnknownNameError, match="valid names"):
        call(graph)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_classes": 0}, "num_classes"), ({"num_classes": -1}, "num_classes"), ({"num_classes": "a"}, "num_classes"),
    ({"num_classes": 2.5}, "num_classes"), ({"pretrained": "yes"}, "pretrained"),
    ({"pretrained": True}, "no pretrained weights"),
])
def test_zoo_load_refuses_bad_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        evo.zoo.load("small_cnn", input_size=32, width=4, **kwargs)


@pytest.mark.parametrize("kwargs, match", [({"num_classes": 0}, "num_classes"),  # was silently 1000 classes
                                           ({"seed": -1}, "seed"), ({"seed": "x"}, "seed")])
def test_torchvision_zoo_model_refuses_bad_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        evo.zoo.load("resnet18", input_size=32, **kwargs)


@pytest.mark.parametrize("spec, options", [(None, None), (5, None), ("small_cnn", [("width", 4)])])
def test_zoo_resolve_refuses_bad_types(spec, options):
    with pytest.raises(ConfigError):
        evo.zoo.resolve(spec, options=options)


# -- growth operators -------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [None, torch.nn.Linear(2, 2)], ids=["None", "module"])
def test_ops_refuse_a_non_graph(bad):
    with pytest.raises(ConfigError, match="ArchGraph"):
        evo.ops.sites(bad, "widen")
    with pytest.raises(ConfigError, match="ArchGraph"):
        evo.ops.apply(bad, "widen", site={"group": "stem_0"})


@pytest.mark.parametrize("op", ["widen", "deepen", "add_branch"])
def test_ops_refuse_a_seed_torch_cannot_take(graph, op):
    site = evo.ops.sites(graph, op)[0]
    with pytest.raises(ConfigError, match="seed"):
        evo.ops.apply(graph, op, site=site, seed=2**70)


# -- data -------------------------------------------------------------------------------------------

_IMG = np.zeros((2, 8, 8, 3), np.uint8)


@pytest.mark.parametrize("call", [
    lambda: ImageSet.from_arrays(_IMG, ["a", "b"], ["a", "b"]),
    lambda: ImageSet.from_arrays(_IMG, None, ["a", "b"]),
    lambda: ImageSet.from_arrays(_IMG, [0.5, 1.2], ["a", "b"]),  # was truncated to [0, 1]
    lambda: ImageSet.from_arrays(_IMG, [0, 1], None),
    lambda: ImageSet.from_arrays(_IMG, [0, 1], "ab"),
    lambda: ImageSet.from_arrays([np.zeros((8, 8, 3), np.uint8), np.zeros((9, 9, 3), np.uint8)], [0, 1], ["a", "b"]),
    lambda: ImageSet.from_arrays(np.zeros((2, 0, 0, 3), np.uint8), [0, 1], ["a", "b"]),
], ids=["str-labels", "None-labels", "fractional-labels", "None-classes", "str-classes", "ragged", "0x0"])
def test_imageset_refuses_bad_arrays(call):
    with pytest.raises(DataError):
        call()


@pytest.mark.parametrize("call", [
    lambda s: s.resized((0, 0)), lambda s: s.resized((-1, 4)), lambda s: s.resized("x"),
    lambda s: s.permuted(-1), lambda s: s.permuted("a"), lambda s: s.subset([0.5]),
    lambda s: s.select_classes("ab"), lambda s: concat([s, 5]),
    lambda s: holdout_split(s, "x"), lambda s: holdout_split(s, 0.2, seed=-1), lambda s: holdout_split(None, 0.2),
], ids=["resized-0", "resized-neg", "resized-str", "permuted-neg", "permuted-str", "subset-float",
        "select-str", "concat-int", "holdout-str", "holdout-seed", "holdout-None"])
def test_imageset_methods_refuse_bad_arguments(call):
    with pytest.raises(EvoError):
        call(_set(8))


def test_imageset_subset_takes_a_boolean_mask():
    s = _set(8)
    mask = np.arange(8) % 2 == 0
    assert np.array_equal(s.subset(mask).labels, s.labels[mask])  # was read as indices 0 and 1


@pytest.mark.parametrize("kwargs", [
    {"source": None}, {"source": 5}, {"source": "LIST"}, {"source": "digits", "source_opts": [1]},
    {"source": "PAIR", "order": 5}, {"source": "PAIR", "order": "ab"},
])
def test_scenarios_refuse_bad_sources_and_orders(pair, kwargs):
    kwargs = dict(kwargs)
    kwargs["source"] = {"PAIR": pair, "LIST": list(pair)}.get(kwargs["source"], kwargs["source"]) \
        if isinstance(kwargs["source"], str) else kwargs["source"]
    with pytest.raises(ConfigError):
        class_incremental(increments=2, **kwargs)


@pytest.mark.parametrize("source", [None, 5])
def test_load_source_refuses_a_non_path(source):
    with pytest.raises(ConfigError, match="data source"):
        load_source(source)


@pytest.mark.parametrize("kwargs", [{"sources": None}, {"sources": 5}, {"size": 0}, {"size": (-1, 4)},
                                    {"size": "ab"}, {"source_opts": 5}])
def test_domain_incremental_refuses_bad_arguments(pair, kwargs):
    other = (_set(8, classes=("x", "y")), _set(4, classes=("x", "y")))
    with pytest.raises(ConfigError):
        domain_incremental(**{"sources": [pair, other], **kwargs})


# -- the architecture graph -------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda g: g.flops(batch="2"), lambda g: g.flops(batch=None), lambda g: g.flops(batch=0),
    lambda g: g.flops(backward=True, trainable=5), lambda g: g.flops(backward=True, trainable="stem_0"),
    lambda g: g.shape(["a"]), lambda g: g.consumers("nope"),
    lambda g: g.with_weights(None), lambda g: g.with_weights(torch.nn.Linear(2, 2)),
    lambda g: eg.save(None, "x"), lambda g: eg.save(g, None), lambda g: eg.load(None), lambda g: eg.load(5),
    lambda g: eg.from_module(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 2)), "abc"),
    lambda g: eg.from_module(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 2)), None),
    lambda g: eg.from_module(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 2)), (3, 1.5, 1)),
], ids=["batch-str", "batch-None", "batch-0", "trainable-int", "trainable-str", "shape-list", "consumers-unknown",
        "with_weights-None", "with_weights-other", "save-None", "save-dir-None", "load-None", "load-int",
        "from_module-str", "from_module-None", "from_module-float"])
def test_graph_methods_refuse_bad_arguments(graph, call):
    with pytest.raises(EvoError):
        call(graph)


@pytest.mark.parametrize("x", [torch.zeros(1, 1, 32, 32), torch.zeros(1, 3, 32, 32, dtype=torch.uint8),
                               np.zeros((1, 3, 32, 32), np.float32), torch.zeros(3, 32, 32)],
                         ids=["channels", "uint8", "numpy", "3d"])
def test_compiled_net_refuses_bad_input(graph, x):
    net = graph.to_module().eval()
    with pytest.raises(DataError, match=r"\(N, 3, H, W\)"):
        net(x)
    with pytest.raises(DataError):
        net.forward_features(x)


def _damage_node(doc, key, value):
    nodes = list(doc["nodes"])
    i = next(i for i, n in enumerate(nodes) if n["op"] == "conv2d")
    node = dict(nodes[i])
    if key.startswith("attrs."):
        node["attrs"] = {**node["attrs"], key[len("attrs."):]: value}
    else:
        node[key] = value
    nodes[i] = node
    return {**doc, "nodes": nodes}


@pytest.mark.parametrize("damage", [
    lambda d: _damage_node(d, "attrs", 5), lambda d: _damage_node(d, "attrs", "x"),
    lambda d: _damage_node(d, "params", None), lambda d: _damage_node(d, "params", 5),
    lambda d: _damage_node(d, "attrs.in_channels", None), lambda d: _damage_node(d, "attrs.in_channels", -1),
    lambda d: _damage_node(d, "attrs.kernel_size", "x"), lambda d: _damage_node(d, "attrs.kernel_size", 10**12),
    lambda d: _damage_node(d, "attrs.groups", -1), lambda d: _damage_node(d, "attrs.stride", None),
    lambda d: {**d, "edges": [{**d["edges"][0], "index": "x"}, *d["edges"][1:]]},
    lambda d: {**d, "edges": [{**d["edges"][0], "index": None}, *d["edges"][1:]]},
], ids=["attrs-int", "attrs-str", "params-None", "params-int", "in_channels-None", "in_channels-neg",
        "kernel-str", "kernel-huge", "groups-neg", "stride-None", "edge-index-str", "edge-index-None"])
def test_load_refuses_a_damaged_graph_json(graph, tmp_path, damage):
    good = eg.save(graph, tmp_path / "good")
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    doc = json.loads((good / "graph.json").read_text())
    (bad / "graph.json").write_text(json.dumps(damage(doc)))
    with pytest.raises(GraphError):
        eg.load(bad)


# -- the Learner ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    {"strategy": "joint", "seed": "x"}, {"strategy": "joint", "seed": -1},
    {"strategy": "lwf", "replay": "x"}, {"strategy": "joint", "channels_last": "x"},
])
def test_learner_refuses_bad_options(graph, kwargs):
    with pytest.raises(ConfigError):
        evo.Learner(graph, progress=False, **kwargs)


@pytest.mark.parametrize("kwargs", [{"forget": np.zeros((2, 16, 16, 3), np.uint8)}, {"corrections": 5},
                                    {"forget": 5}])
def test_learn_refuses_bad_corrections_and_forget_unchanged(learner, pair, kwargs):
    snap = _snapshot(learner)
    with pytest.raises(DataError, match="ImageSet"):
        learner.learn(class_incremental(pair, increments=2, seed=0)[1], **kwargs)
    assert _same(learner, snap)


@pytest.mark.parametrize("images", [np.zeros((2, 0, 0, 3), np.uint8), np.zeros((2, 16, 0), np.uint8)])
def test_predict_refuses_empty_images(learner, images):
    with pytest.raises(DataError, match="H, W >= 1"):
        learner.predict(images)


@pytest.mark.parametrize("bad", [None, torch.nn.Linear(2, 2)], ids=["None", "module"])
def test_with_graph_refuses_a_non_graph(learner, bad):
    with pytest.raises(ConfigError, match="ArchGraph"):
        learner.with_graph(bad)


@pytest.mark.parametrize("state, graph_ok", [
    (None, True), ({}, False),
    ({"learner.increments": torch.zeros(0, dtype=torch.int64)}, True),
    ({"learner.increments": torch.tensor([-1])}, True),
    ({"memory.images": torch.zeros(3)}, True),  # not a memory state: refused after nothing was reset
])
def test_load_state_dict_refuses_bad_state_unchanged(learner, state, graph_ok):
    snap = _snapshot(learner)
    with pytest.raises(ConfigError):
        learner.load_state_dict(state, learner.graph_ if graph_ok else None)
    assert _same(learner, snap)
    assert learner.predict(np.zeros((1, 16, 16, 3), np.uint8))[0][0] in learner.classes_


def test_load_state_dict_refuses_a_state_of_another_shape_unchanged(graph, pair):
    """A state whose tensors do not fit (here a 0-d ridge) was a raw IndexError."""
    lrn = evo.Learner(graph, memory=20, strategy="evo", progress=False)
    lrn.learn(class_incremental(pair, increments=2, seed=0)[0])
    snap = _snapshot(lrn)
    with pytest.raises(ConfigError, match="does not load"):
        lrn.load_state_dict({**lrn.state_dict(), "strategy.ridge": torch.tensor(1.0)}, lrn.graph_)
    assert _same(lrn, snap)


def test_from_arrays_takes_integer_labels_held_as_objects():
    s = ImageSet.from_arrays(np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 1, 0, 1], dtype=object), ["a", "b"])
    assert s.labels.dtype == np.int64 and s.labels.tolist() == [0, 1, 0, 1]
    with pytest.raises(DataError, match="integers"):
        ImageSet.from_arrays(np.zeros((2, 8, 8, 3), np.uint8), np.array(["x", None], dtype=object), ["a", "b"])
