"""widen (Net2WiderNet over tied channel groups): exact function preservation on every zoo model, purity,
symmetry-breaking noise, train-mode exactness, refusals, and the error messages people see."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from torch import nn

import evo.ops as ops
import evo.zoo as zoo
from evo.errors import ConfigError, EvoError, InvalidSiteError
from evo.graph.archgraph import ArchGraph
from evo.graph.trace import from_module

ATOL = RTOL = 1e-5


def _randomize_bn(graph: ArchGraph, seed: int = 0) -> ArchGraph:
    """A copy with random BN affine params and running statistics (default 0/1 would hide replication bugs)."""
    gen = torch.Generator().manual_seed(seed)
    out = graph.copy()
    for n in out.nodes():
        if out.op(n) in ("batchnorm2d", "batchnorm1d"):
            c = out.attrs(n)["num_features"]
            out.set_params(n, weight=0.5 + torch.rand(c, generator=gen), bias=0.2 * torch.randn(c, generator=gen),
                           running_mean=0.2 * torch.randn(c, generator=gen),
                           running_var=0.5 + torch.rand(c, generator=gen))
    return out


def _snapshot(graph: ArchGraph) -> tuple[dict, dict]:
    tensors = {k: t.clone() for k, t in graph.state_dict().items()}
    structure = {n: (graph.op(n), json.dumps(graph.attrs(n), sort_keys=True), graph.node(n)["shape"])
                 for n in graph.nodes()}
    return tensors, structure


def _assert_unchanged(graph: ArchGraph, snap: tuple[dict, dict]) -> None:
    tensors, structure = snap
    now = graph.state_dict()
    assert set(now) == set(tensors)
    for k, t in tensors.items():
        assert torch.equal(now[k], t), f"parent tensor {k} changed"
    assert structure == _snapshot(graph)[1], "parent structure changed"


def _logits(graph: ArchGraph, x: torch.Tensor, train: bool = False) -> torch.Tensor:
    net = graph.to_module().train(train)
    with torch.no_grad():
        return net(x)


def _widths(graph: ArchGraph) -> dict[str, int]:
    return {n: graph.shape(n)[0] for n in graph.nodes() if graph.shape(n)}


@functools.cache
def _parent(name: str) -> ArchGraph:
    """Zoo model with random BN statistics, loaded once per session (tests check it is never changed)."""
    if name == "small_cnn":
        graph = zoo.load("small_cnn")
    elif name == "efficientnet_lite0":
        graph = zoo.load(name, pretrained=True, input_size=64)
    else:
        graph = zoo.load(name, input_size=64)
    return _randomize_bn(graph)


# (model, how many sites to run: None = all)
MODELS = [("small_cnn", None), ("mobilenet_v3_small", None), ("resnet18", 6), ("mobilenet_v2", 4),
          pytest.param("efficientnet_lite0", 4, marks=pytest.mark.skipif(
              "efficientnet_lite0" not in zoo.list_models(), reason="efficientnet_lite0 not registered yet"))]
EXPECTED_SITES = {"small_cnn": 6, "resnet18": 12, "mobilenet_v2": 25, "mobilenet_v3_small": 27,
                  "efficientnet_lite0": 24}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Intra-op threads on a shared 2-core box oversubscribe badly (100x slower forwards); one is plenty here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small() -> ArchGraph:
    return _randomize_bn(zoo.load("small_cnn"), seed=1)


@pytest.mark.parametrize(("name", "limit"), MODELS)
def test_every_site_preserves_function(name: str, limit: int | None) -> None:
    parent = _parent(name)
    snap = _snapshot(parent)
    sites = ops.sites(parent, "widen")
    assert len(sites) == EXPECTED_SITES[name]
    assert json.loads(json.dumps(sites)) == sites
    if limit is not None and len(sites) > limit:  # evenly spread sample, first and last included
        sites = [sites[i] for i in sorted(set(torch.linspace(0, len(sites) - 1, limit).round().long().tolist()))]
    x = torch.randn(3, *parent.input_shape, generator=torch.Generator().manual_seed(0))
    y = _logits(parent, x)
    before = _widths(parent)
    worst = 0.0
    for i, site in enumerate(sites):
        noise = 0.5 if i % 2 else 0.0  # half the sites with symmetry-breaking splits
        child = ops.apply(parent, "widen", site=site, factor=1.5, noise=noise, seed=i)
        yc = _logits(child, x)
        torch.testing.assert_close(yc, y, atol=ATOL, rtol=RTOL, msg=lambda m, s=site: f"{name} {s}: {m}")
        worst = max(worst, (yc - y).abs().max().item())
        grown = {n for n, w in _widths(child).items() if w > before[n]}
        assert site["group"] in grown
        assert child.shape(site["group"])[0] == -(-before[site["group"]] * 3 // 2)
        assert child.num_params() > parent.num_params()
        assert child.meta["history"][-1] == {"op": "widen", "site": site,
                                             "params": {"factor": 1.5, "new_width": None, "noise": noise, "seed": i,
                                                        "init": "copy"}}
    for site in sites if name == "small_cnn" else (sites[0], sites[-1]):  # delta re-applies and counts FLOPs
        child = ops.apply(parent, "widen", site=site, factor=1.5)
        assert ops.delta(parent, "widen", site, factor=1.5).params == child.num_params() - parent.num_params()
    _assert_unchanged(parent, snap)
    print(f"{name}: {len(sites)} sites, max |child - parent| = {worst:.2e}")


def test_residual_group_grows_every_member() -> None:
    parent = _parent("resnet18")
    assert {"group": "conv1"} in ops.sites(parent, "widen")
    child = ops.apply(parent, "widen", site={"group": "layer1_1_conv2"}, new_width=80)  # any member names it
    assert child.meta["history"][-1]["site"] == {"group": "conv1"}
    for n in ("conv1", "layer1_0_conv2", "layer1_1_conv2"):
        assert child.attrs(n)["out_channels"] == 80, n
    for n in ("bn1", "layer1_0_bn2", "layer1_1_bn2"):
        assert child.attrs(n)["num_features"] == 80
        assert child.params(n)["running_var"].shape == (80,)
    for n in ("layer1_0_conv1", "layer1_1_conv1", "layer2_0_conv1", "layer2_0_downsample_0"):
        assert child.attrs(n)["in_channels"] == 80, n
    for n in ("layer1_0_conv1", "layer1_1_conv1", "layer1_0_bn1"):  # inner block widths untouched
        assert child.shape(n)[0] == 64
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(_logits(child, x), _logits(parent, x), atol=ATOL, rtol=RTOL)


TRAIN_EXACT_SITES = ({"group": "down_0"}, {"group": "left"}, {"group": "stem_0"})  # dropout's width stays


def test_train_mode_exact_for_same_batch(small: ArchGraph) -> None:
    x = torch.randn(8, 3, 32, 32)
    for site in TRAIN_EXACT_SITES:
        child = ops.apply(small, "widen", site=site, factor=2.0, noise=0.3, seed=3)
        pnet, cnet = small.to_module().train(), child.to_module().train()
        torch.manual_seed(0)  # same dropout mask (the dropout's width is unchanged at these sites)
        yp = pnet(x)
        torch.manual_seed(0)
        yc = cnet(x)
        torch.testing.assert_close(yc, yp, atol=ATOL, rtol=RTOL)
        # BN batch statistics of the copies replicate the originals (units matched by their random BN weight)
        for bn in ("down_1", "mix_bn", "stem_1"):
            src = [(small.params(bn)["weight"] == w).nonzero().item() for w in child.params(bn)["weight"]]
            for k in ("running_mean", "running_var"):
                torch.testing.assert_close(cnet.state_dict()[f"{bn}.{k}"], pnet.state_dict()[f"{bn}.{k}"][src])


def test_noise_breaks_symmetry_but_stays_exact(small: ArchGraph) -> None:
    site = {"group": "res_a_0"}
    x = torch.randn(4, 3, 32, 32)
    y = _logits(small, x)
    plain = ops.apply(small, "widen", site=site, factor=1.5)
    noisy = {s: ops.apply(small, "widen", site=site, factor=1.5, noise=1.0, seed=s) for s in (0, 1)}
    again = ops.apply(small, "widen", site=site, factor=1.5, noise=1.0, seed=0)
    for child in (plain, *noisy.values()):
        torch.testing.assert_close(_logits(child, x), y, atol=ATOL, rtol=RTOL)
    w = {k: c.params("res_b_0")["weight"] for k, c in (("plain", plain), ("n0", noisy[0]), ("n1", noisy[1]))}
    assert not torch.equal(w["plain"], w["n0"])
    assert not torch.equal(w["n0"], w["n1"])  # different seeds, different children
    assert torch.equal(again.params("res_b_0")["weight"], w["n0"])  # same seed, same child
    # equal split: the copies of a unit carry equal shares of its column
    g = plain.params("res_a_0")["weight"]
    src = [next(i for i in range(16) if torch.equal(g[j], g[i])) for j in range(16, 24)]
    for j, i in zip(range(16, 24), src, strict=True):
        torch.testing.assert_close(w["plain"][:, j], w["plain"][:, i])
        torch.testing.assert_close(w["plain"][:, j] * 2, small.params("res_b_0")["weight"][:, i])


@pytest.mark.parametrize(("name", "limit"), MODELS)
def test_fresh_units_preserve_function_at_every_site(name: str, limit: int | None) -> None:
    """init=fresh: random new producer rows, zero consumer columns; the logits are the parent's, in eval and
    in train mode (batch statistics of the new units only feed zero columns)."""
    parent = _parent(name)
    snap = _snapshot(parent)
    sites = ops.sites(parent, "widen")
    if limit is not None and len(sites) > limit:
        sites = [sites[i] for i in sorted(set(torch.linspace(0, len(sites) - 1, limit).round().long().tolist()))]
    x = torch.randn(3, *parent.input_shape, generator=torch.Generator().manual_seed(0))
    y, y_train = _logits(parent, x), _seeded_train_logits(parent, x)
    assert name != "small_cnn" or all(s in sites for s in TRAIN_EXACT_SITES)
    for i, site in enumerate(sites):
        child = ops.apply(parent, "widen", site=site, factor=1.5, seed=i, init="fresh")
        torch.testing.assert_close(_logits(child, x), y, atol=ATOL, rtol=RTOL, msg=lambda m, s=site: f"{name} {s}: {m}")
        if name == "small_cnn" and site in TRAIN_EXACT_SITES:  # the dropout's width is unchanged: one seed, one mask
            torch.testing.assert_close(_seeded_train_logits(child, x), y_train, atol=ATOL, rtol=RTOL)
    _assert_unchanged(parent, snap)


def _seeded_train_logits(graph: ArchGraph, x: torch.Tensor) -> torch.Tensor:
    net = graph.to_module().train()
    torch.manual_seed(0)  # the same dropout mask for parent and child
    with torch.no_grad():
        return net(x)


def test_fresh_units_are_new_features_not_copies(small: ArchGraph) -> None:
    """The new rows are drawn (not a copy of any old row) at the layer's scale; the old rows and columns
    are the parent's exactly; the consumers' new columns are zero; the seed decides the draw."""
    site = {"group": "res_a_0"}
    child = ops.apply(small, "widen", site=site, factor=1.5, seed=0, init="fresh")
    old_w, new_w = small.params("res_a_0")["weight"], child.params("res_a_0")["weight"]
    assert new_w.shape[0] == 24 and torch.equal(new_w[:16], old_w)
    for j in range(16, 24):
        assert not any(torch.allclose(new_w[j], old_w[i]) for i in range(16))
    assert 0.5 < float(new_w[16:].std() / old_w.std()) < 2.0
    cons_old, cons_new = small.params("res_b_0")["weight"], child.params("res_b_0")["weight"]
    assert torch.equal(cons_new[:, :16], cons_old) and not cons_new[:, 16:].any()
    again = ops.apply(small, "widen", site=site, factor=1.5, seed=0, init="fresh").params("res_a_0")["weight"]
    other = ops.apply(small, "widen", site=site, factor=1.5, seed=1, init="fresh").params("res_a_0")["weight"]
    assert torch.equal(again, new_w) and not torch.equal(other[16:], new_w[16:])


def test_fresh_units_learn_from_the_first_step(small: ArchGraph) -> None:
    """The new units' outgoing columns start at zero, so the first SGD step cannot move their incoming
    rows (their gradient is exactly 0) but moves the columns; the second step then moves the rows."""
    child = ops.apply(small, "widen", site={"group": "res_a_0"}, factor=2.0, seed=0, init="fresh")
    net = child.to_module().train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    names = dict(net.named_parameters())
    rows0 = names["res_a_0.weight"].detach()[16:].clone()
    assert not names["res_b_0.weight"].detach()[:, 16:].any()  # copy's split columns would be nonzero

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    step()
    assert torch.equal(names["res_a_0.weight"].detach()[16:], rows0)
    assert names["res_b_0.weight"].detach()[:, 16:].abs().sum() > 0
    step()
    assert not torch.equal(names["res_a_0.weight"].detach()[16:], rows0)


def test_fresh_units_after_a_zero_branch_get_he_scaled_rows(small: ArchGraph) -> None:
    """A zero-initialised branch tied into the group has no scale of its own to draw at: its fresh rows
    are He-normal by fan-in, not dead, and the function stays exact."""
    branched = ops.apply(small, "add_branch", site={"src": "stem_2", "dst": "stem_2"}, kind="skip")
    zero = "stem_2_br_zero_conv"
    assert not branched.params(zero)["weight"].any()
    child = ops.apply(branched, "widen", site={"group": zero}, factor=2.0, seed=3, init="fresh")
    w, old = child.params(zero)["weight"], branched.attrs(zero)["out_channels"]
    assert not w[:old].any()
    assert 0.5 < float(w[old:].std()) / math.sqrt(2.0 / math.prod(w.shape[1:])) < 1.5
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_logits(child, x), _logits(branched, x), atol=ATOL, rtol=RTOL)


def test_different_seeds_pick_different_units(small: ArchGraph) -> None:
    a = ops.apply(small, "widen", site={"group": "down_0"}, factor=1.5, seed=0).params("down_0")["weight"]
    b = ops.apply(small, "widen", site={"group": "down_0"}, factor=1.5, seed=1).params("down_0")["weight"]
    assert torch.equal(a[:32], b[:32]) and not torch.equal(a[32:], b[32:])


def test_widen_twice_and_new_width(small: ArchGraph) -> None:
    x = torch.randn(2, 3, 32, 32)
    y = _logits(small, x)
    once = ops.apply(small, "widen", site={"group": "stem_0"}, new_width=17)
    assert once.attrs("stem_0")["out_channels"] == 17 and once.attrs("down_0")["in_channels"] == 17
    twice = ops.apply(once, "widen", site={"group": "stem_0"}, factor=2.0, noise=0.2, seed=5)
    thrice = ops.apply(twice, "widen", site={"group": "left"}, factor=1.5)
    assert twice.attrs("res_a_0")["in_channels"] == 34
    assert thrice.attrs("mix_bn")["num_features"] == 40 and thrice.attrs("fc1")["in_features"] == 40
    for g in (once, twice, thrice):
        torch.testing.assert_close(_logits(g, x), y, atol=ATOL, rtol=RTOL)
    assert [h["op"] for h in thrice.meta["history"]] == ["widen"] * 3


def test_grow_sets_the_shapes_infer_shapes_would(small: ArchGraph) -> None:
    op = ops.get_op("widen")
    for site in ops.sites(small, "widen"):
        child = small.copy()
        op.grow(child, site, **op.check_params({"factor": 1.3, "noise": 0.1}))
        shapes = {n: child.node(n)["shape"] for n in child.nodes()}
        assert shapes == {n: child.node(n)["shape"] for n in child.infer_shapes().nodes()}


# ---- hand-built graphs: refusals, cat ties, flatten blocks -----------------------------------------------


class _Refusals(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.b = nn.Conv2d(8, 6, 1)
        self.mult = nn.Conv2d(6, 12, 3, padding=1, groups=6)  # depthwise with channel multiplier 2
        self.c = nn.Conv2d(12, 4, 1)
        self.gate = nn.Conv2d(12, 4, 1)
        self.gate1 = nn.Conv2d(12, 1, 1)
        self.l = nn.Conv2d(4, 2, 1)
        self.r = nn.Conv2d(4, 2, 1)
        self.p = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = self.mult(self.b(self.grouped(self.a(x))))
        g = self.gate(x)
        y = self.c(x) * g.mean(1, keepdim=True) * self.gate1(x)  # spatial gates broadcast over channels
        y = torch.cat([self.l(y), self.r(y)], 1) + self.p(y)  # concat tied to a producer
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def test_refused_groups_are_not_sites_and_say_why() -> None:
    graph = from_module(_Refusals(), (3, 8, 8))
    assert ops.sites(graph, "widen") == [{"group": "c"}]  # multiplied by broadcast (1, H, W) gates: fine
    x = torch.randn(2, 3, 8, 8)
    child = ops.apply(graph, "widen", site={"group": "c"}, factor=2.0, noise=0.5)
    torch.testing.assert_close(_logits(child, x), _logits(graph, x), atol=ATOL, rtol=RTOL)
    for node in ("grouped", "mult"):  # grouped convs start no group of their own
        with pytest.raises(InvalidSiteError, match="'conv2d' does not start a channel group|does not start"):
            ops.apply(graph, "widen", site={"group": node})
    why = {"a": "groups=2", "b": "groups=6",
           "gate": "mean 'mean' reduces over the channel dimension", "gate1": "broadcasts it across channels",
           "l": "concatenation", "r": "concatenation", "p": "concatenation", "fc": "graph output"}
    for node, text in why.items():
        with pytest.raises(InvalidSiteError, match="cannot be widened exactly") as e:
            ops.apply(graph, "widen", site={"group": node})
        assert text in str(e.value), (node, str(e.value))


class _Ties(nn.Module):
    """cat(a, b) + cat(c, d) ties a~c and b~d; flatten of C×H×W into BN1d and a linear (blocks of H*W)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 5, 1)
        self.c, self.d = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.e = nn.Conv2d(8, 4, 1)
        self.pool = nn.MaxPool2d(2)
        self.bn1d = nn.BatchNorm1d(4 * 4 * 4)
        self.fc1 = nn.Linear(4 * 4 * 4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1) + torch.cat([self.c(x), self.d(x)], 1)
        y = self.dw(torch.relu(self.bn(y)))
        z = self.pool(self.e(y))
        return self.head(torch.relu(self.fc1(self.bn1d(torch.flatten(z, 1)))))


def test_concat_ties_depthwise_and_flatten_blocks() -> None:
    graph = _randomize_bn(from_module(_Ties(), (3, 8, 8)), seed=2)
    assert ops.sites(graph, "widen") == [{"group": "a"}, {"group": "b"}, {"group": "e"}, {"group": "fc1"}]
    x = torch.randn(5, 3, 8, 8)
    y, yt = _logits(graph, x), _logits(graph, x, train=True)
    for site in ops.sites(graph, "widen"):
        for params in ({"noise": 0.0}, {"noise": 0.7}, {"init": "fresh"}):
            child = ops.apply(graph, "widen", site=site, factor=2.0, **params)
            torch.testing.assert_close(_logits(child, x), y, atol=ATOL, rtol=RTOL)
            torch.testing.assert_close(_logits(child, x, train=True), yt, atol=ATOL, rtol=RTOL)
    # after the flatten each new unit of e is a block of 16 features: every column of those blocks is zero
    fresh = ops.apply(graph, "widen", site={"group": "e"}, new_width=5, init="fresh")
    cols = fresh.params("fc1")["weight"]
    old_e = graph.attrs("e")["out_channels"]
    assert not cols[:, old_e * 16:].any() and torch.equal(cols[:, :old_e * 16], graph.params("fc1")["weight"])
    b = ops.apply(graph, "widen", site={"group": "d"}, new_width=7)  # d canonicalises to b
    assert [b.attrs(n)["out_channels"] for n in "abcd"] == [3, 7, 3, 7]
    assert b.attrs("dw")["groups"] == b.attrs("dw")["in_channels"] == 10 and b.attrs("bn")["num_features"] == 10
    e = ops.apply(graph, "widen", site={"group": "e"}, new_width=5)
    assert e.attrs("bn1d")["num_features"] == e.attrs("fc1")["in_features"] == 5 * 16


# ---- parameter and site errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(("params", "text"), [
    ({"factor": 1.0}, "factor must be a number > 1"),
    ({"factor": 0.5}, "factor must be a number > 1"),
    ({"factor": "2"}, "factor must be a number > 1"),
    ({"factor": float("nan")}, "factor must be a number > 1"),
    ({"new_width": 16}, "larger than the group's current width 16"),
    ({"new_width": 4}, "larger than the group's current width 16"),
    ({"new_width": 20.5}, "new_width must be an integer"),
    ({"factor": 2.0, "new_width": 20}, "not both"),
    ({"noise": -0.1}, "noise must be a number >= 0"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"init": "zero"}, "init must be one of ['copy', 'fresh']"),
    ({"width": 20}, "has no parameter(s) ['width']"),
])
def test_bad_params(small: ArchGraph, params: dict, text: str) -> None:
    with pytest.raises(ConfigError) as e:
        ops.apply(small, "widen", site={"group": "stem_0"}, **params)
    assert text in str(e.value) and isinstance(e.value, EvoError)


@pytest.mark.parametrize(("site", "text"), [
    ({"group": "nope"}, "not in the graph"),
    ({"group": "stem_1"}, "does not start a channel group"),
    ({"group": "classifier"}, "reaches the graph output"),
    ({"node": "stem_0"}, "a widen site is {'group'"),
    ({"group": "stem_0", "extra": 1}, "a widen site is {'group'"),
    ("stem_0", "a widen site is {'group'"),
])
def test_bad_sites(small: ArchGraph, site, text: str) -> None:
    with pytest.raises(InvalidSiteError) as e:
        ops.apply(small, "widen", site=site)
    assert text in str(e.value) and "evo.ops.sites(graph, 'widen')" in str(e.value)
