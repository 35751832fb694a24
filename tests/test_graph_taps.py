"""Tap surgery lives in evo.graph: tap nodes carry role="tap", which save/load keeps (and old
graphs marked by the `evo_taps` source prefix still read as tapped)."""

from __future__ import annotations

import json
import subprocess
import sys

import evo.graph as eg
import evo.zoo
from evo.graph.taps import Tap, backbone_outputs, is_tap_node, is_tapped, tap_graph


def _tapped():
    g = evo.zoo.load("small_cnn")
    outs = backbone_outputs(g)
    return tap_graph(g, [Tap(outs[0], 2), Tap(outs[1], 1)])


def test_tap_nodes_carry_a_role_that_save_and_load_keep(tmp_path) -> None:
    g = _tapped()
    roles = {n: g.node(n).get("role") for n in g.nodes()}
    assert {n for n, r in roles.items() if r == "tap"} == {n for n in g.nodes() if is_tap_node(g, n)}
    assert sum(r == "tap" for r in roles.values()) == 5  # two pools, two flattens, one cat
    back = eg.load(eg.save(g, tmp_path / "m"))
    assert is_tapped(back) and {n: back.node(n).get("role") for n in back.nodes()} == roles
    assert not is_tapped(evo.zoo.load("small_cnn"))


def test_graphs_saved_with_the_old_source_prefix_still_read_as_tapped(tmp_path) -> None:
    d = eg.save(_tapped(), tmp_path / "m")
    doc = json.loads((d / "graph.json").read_text())
    for nd in doc["nodes"]:
        if nd.pop("role", None):
            nd["source"] = "evo_taps." + nd["source"]
    (d / "graph.json").write_text(json.dumps(doc))
    old = eg.load(d)
    assert is_tapped(old) and sum(is_tap_node(old, n) for n in old.nodes()) == 5


def test_listing_add_tap_sites_does_not_load_the_learn_stack() -> None:
    code = ("import sys, evo.ops, evo.zoo; g = evo.zoo.load('small_cnn'); "
            "assert evo.ops.sites(g, 'add_tap'); print(sorted(m for m in sys.modules if m.startswith('evo.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "evo.learn" not in out and "evo.ops.add_tap" in out
