"""add_tap: a block output pooled into the head's input through zero columns; logits unchanged."""

from __future__ import annotations

import pytest
import torch
from ophelpers import MODELS, assert_exact, assert_unchanged, logits, parent, snapshot

import evo.ops
import evo.zoo
from evo.errors import ConfigError, InvalidSiteError
from evo.graph.taps import is_tapped, tap_graph
from evo.learn.features import auto_taps


@pytest.mark.parametrize("name", list(MODELS))
def test_every_site_keeps_logits_and_widens_the_head(name):
    g, x, y = parent(name)
    before = snapshot(g)
    sites = evo.ops.sites(g, "add_tap")
    assert sites
    for site in sites:
        child = evo.ops.apply(g, "add_tap", site=site, grid=2)
        assert_exact(child, x, y, site)
        c, h, _ = g.shape(site["node"])
        width = c * min(2, h) ** 2
        assert child.attrs(child.head)["in_features"] == g.attrs(g.head)["in_features"] + width
        assert child.num_params() - g.num_params() == width * g.attrs(g.head)["out_features"]
        assert is_tapped(child) and site not in evo.ops.sites(child, "add_tap")
    assert_unchanged(g, before)


def test_taps_stack_into_one_concat_and_later_blocks_stay_sites():
    g, x, y = parent("efficientnet_lite0")
    sites = evo.ops.sites(g, "add_tap")
    child = evo.ops.apply(g, "add_tap", site=sites[5], grid=4)
    # a tap branches around the blocks after it; they remain block outputs of the backbone
    assert len(evo.ops.sites(child, "add_tap")) == len(sites) - 1
    grand = evo.ops.apply(child, "add_tap", site=evo.ops.sites(child, "add_tap")[-1], grid=1)
    cats = [n for n in grand.nodes() if grand.op(n) == "cat" and n in grand.inputs_of(grand.head)]
    assert len(cats) == 1 and len(grand.inputs_of(cats[0])) == 3
    assert_exact(grand, x, y, "two taps")


def test_grows_a_graph_already_tapped_for_the_closed_form_head():
    g = evo.zoo.load("efficientnet_lite0", pretrained=True, input_size=64)
    tapped = tap_graph(g, auto_taps(g))
    torch.manual_seed(0)
    tapped.set_params(tapped.head, weight=torch.randn_like(tapped.params(tapped.head)["weight"]))
    x = torch.randn(3, 3, 64, 64)
    sites = evo.ops.sites(tapped, "add_tap")
    assert {"node": "add"} in sites and all(s["node"] not in ("add_1", "add_5") for s in sites)  # taps already read
    child = evo.ops.apply(tapped, "add_tap", site={"node": "add"}, grid=4)
    assert_exact(child, x, logits(tapped, x), "add_tap on a tapped graph")


def test_bad_params_and_sites_are_refused():
    g, _, _ = parent("small_cnn")
    site = evo.ops.sites(g, "add_tap")[0]
    for grid in (0, 9, 1.5, True):
        with pytest.raises(ConfigError, match="grid"):
            evo.ops.apply(g, "add_tap", site=site, grid=grid)
    with pytest.raises(InvalidSiteError, match="add_tap does not apply"):
        evo.ops.apply(g, "add_tap", site={"node": g.head})
    with pytest.raises(ConfigError, match="no parameter"):
        evo.ops.apply(g, "add_tap", site=site, width=3)
