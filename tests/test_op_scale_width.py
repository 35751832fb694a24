"""scale_width (every channel group after a block widened by one factor): exact, leaves the part before its
site alone, and refuses bad sites and parameters with errors that say what to do. Exactness on every zoo
model and family is the shared contract's (tests/test_ops_contract.py)."""

from __future__ import annotations

import pytest
import torch

import evo.ops as ops
import evo.zoo as zoo
from evo.errors import ConfigError, InvalidSiteError


def _widths(graph) -> dict[str, int]:
    return {n: graph.attrs(n)["out_channels"] for n in graph.nodes() if graph.op(n) == "conv2d"}


def test_every_group_after_the_site_grows_and_nothing_before_it_changes() -> None:
    g = zoo.load("small_cnn", width=4)
    assert ops.sites(g, "scale_width")[0] == {"after": "input"}
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = g.to_module().eval()(x)
    whole = ops.apply(g, "scale_width", site={"after": "input"}, factor=2.0, noise=0.1)
    assert all(w == 2 * _widths(g)[n] for n, w in _widths(whole).items())
    assert whole.attrs("fc1")["out_features"] == 2 * g.attrs("fc1")["out_features"]
    # after the stem: the residual trunk (stem, res_b) is tied across the site, so it keeps its width
    trunk = ops.apply(g, "scale_width", site={"after": "stem_2"}, factor=2.0)
    assert [trunk.attrs(n)["out_channels"] for n in ("stem_0", "res_b_0", "res_a_0")] == [4, 4, 8]
    top = ops.apply(g, "scale_width", site={"after": "relu"}, factor=2.0, noise=0.1)
    for n in ("stem_0", "res_a_0", "res_b_0"):  # before the site: untouched, tensors shared with the parent
        assert top.attrs(n) == g.attrs(n) and all(top.params(n)[k] is g.params(n)[k] for k in g.params(n))
    assert top.attrs("down_0")["out_channels"] == 2 * g.attrs("down_0")["out_channels"]
    for child in (whole, top):
        with torch.no_grad():
            assert torch.allclose(child.to_module().eval()(x), ref, atol=1e-5, rtol=1e-5)
    assert len(whole.meta["history"]) == 1 and whole.meta["history"][0]["op"] == "scale_width"


def test_fresh_units_in_every_group_keep_the_function_and_are_not_copies() -> None:
    """init=fresh reaches every widened group: the logits are the parent's, every producer's new rows are
    drawn (no copy of an old row), and every consumer's new columns are zero."""
    g = zoo.load("small_cnn", width=4)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = g.to_module().eval()(x)
    child = ops.apply(g, "scale_width", site={"after": "input"}, factor=2.0, init="fresh")
    with torch.no_grad():
        assert torch.allclose(child.to_module().eval()(x), ref, atol=1e-5, rtol=1e-5)
    for n, w in _widths(g).items():
        before, after = g.params(n)["weight"], child.params(n)["weight"]
        c_in = before.shape[1]
        assert after.shape[0] == 2 * w and torch.equal(after[:w, :c_in], before), n  # old rows, old columns kept
        assert not after[:w, c_in:].any(), n  # old units read nothing from new ones yet
        assert not any(torch.allclose(after[j, :c_in], before[i]) for j in range(w, 2 * w) for i in range(w)), n
    before, after = g.params("classifier")["weight"], child.params("classifier")["weight"]
    assert after.shape[1] == 2 * before.shape[1] and not after[:, before.shape[1]:].any()
    with pytest.raises(ConfigError, match="scale_width init must be one of"):
        ops.apply(g, "scale_width", site={"after": "input"}, init="random")


def test_bad_sites_and_parameters_are_refused_with_the_fix() -> None:
    g = zoo.load("small_cnn", width=4)
    with pytest.raises(InvalidSiteError, match=r"\{'after': <input or block output>\}"):
        ops.apply(g, "scale_width", site={"group": "stem_0"})
    with pytest.raises(InvalidSiteError, match="list valid sites"):
        ops.apply(g, "scale_width", site={"after": "classifier"})
    with pytest.raises(ConfigError, match="scale_width factor must be a number > 1"):
        ops.apply(g, "scale_width", site={"after": "input"}, factor=1.0)
    with pytest.raises(ConfigError, match="no parameter"):
        ops.apply(g, "scale_width", site={"after": "input"}, new_width=8)
