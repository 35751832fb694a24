"""RidgeHead: incremental == joint in any order, matches a batch reference, refuses bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import Ridge
from torch import nn

from evo.errors import ConfigError, DataError
from evo.learn.head import RandomProjection, RidgeHead

N, D, C = 60, 6, 5


def _data(seed: int = 0, n: int = N, d: int = D, c: int = C) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    x = rng.normal(size=(n, d)) + np.eye(c, d)[y] * 3.0
    return x.astype(np.float32), y.astype(np.int64)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("projection", [None, RandomProjection(D, 32, seed=3)])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_incremental_equals_joint_in_any_class_order_and_split(projection, data) -> None:
    x, y = _data()
    class_order = data.draw(st.permutations(range(C)), label="class order")
    cuts = sorted(data.draw(st.lists(st.integers(1, N - 1), max_size=4, unique=True), label="cuts"))
    # class-incremental stream: samples sorted by the drawn class order, then split at the cuts
    rank = np.argsort(class_order)
    idx = np.argsort(rank[y], kind="stable")
    inc = RidgeHead(ridge=0.5, projection=projection)
    for part in np.split(idx, cuts):
        inc.partial_fit(x[part], y[part])  # the class count grows as labels arrive
    joint = RidgeHead(ridge=0.5, projection=projection).fit(x, y)
    (wi, bi), (wj, bj) = inc.solve(), joint.solve()
    assert inc.n_classes_ == joint.n_classes_ == C
    assert _rel(wi, wj) < 1e-6 and _rel(bi, bj) < 1e-6
    assert _rel(inc.decision_function(x), joint.decision_function(x)) < 1e-6


def test_matches_sklearn_ridge_with_unregularised_intercept() -> None:
    x, y = _data(1)
    head = RidgeHead(ridge=3.0).fit(x, y)
    ref = Ridge(alpha=3.0, fit_intercept=True).fit(x.astype(np.float64), np.eye(C)[y])
    w, b = head.solve()
    np.testing.assert_allclose(w.numpy(), ref.coef_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b.numpy(), ref.intercept_, rtol=1e-8, atol=1e-10)


def test_learns_and_writes_into_a_linear_head() -> None:
    x, y = _data(2, n=200)
    head = RidgeHead(ridge=1.0).fit(torch.from_numpy(x), torch.from_numpy(y))
    assert (head.predict(x).numpy() == y).mean() > 0.8
    linear = head.write_to(nn.Linear(D, C))
    with torch.no_grad():
        logits = linear(torch.from_numpy(x))
    torch.testing.assert_close(logits.double(), head.decision_function(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match=r"\(5, 6\)"):
        head.write_to(nn.Linear(D, C + 1))


def test_classes_can_grow_with_zero_columns() -> None:
    x, y = _data()
    head = RidgeHead().partial_fit(x[y < 2], y[y < 2], n_classes=2)
    assert head.n_classes_ == 2
    head.add_classes(4)
    w, b = head.solve()
    assert w.shape == (4, D) and torch.all(w[2:] == 0) and torch.all(b[2:] == 0)
    head.partial_fit(x[y >= 2], y[y >= 2])
    assert head.n_classes_ == C
    with pytest.raises(ConfigError, match="only grow"):
        head.partial_fit(x, y, n_classes=3)


def test_projection_is_seeded_and_round_trips() -> None:
    p = RandomProjection(4, 8, seed=7, activation="relu")
    q = RandomProjection.from_dict(json.loads(json.dumps(p.to_dict())))
    assert torch.equal(p.weight, q.weight)
    assert not torch.equal(p.weight, RandomProjection(4, 8, seed=8).weight)
    assert torch.all(p(torch.randn(3, 4)) >= 0)
    with pytest.raises(ConfigError, match="activation"):
        RandomProjection(4, 8, activation="gelu")


def test_state_dict_round_trip_gives_same_solution() -> None:
    x, y = _data()
    head = RidgeHead(ridge=0.1, projection=RandomProjection(D, 16, seed=1)).fit(x, y)
    state = head.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    clone = RidgeHead.from_dict(json.loads(json.dumps(head.to_dict()))).load_state_dict(state)
    torch.testing.assert_close(clone.decision_function(x), head.decision_function(x), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="projection"):
        RidgeHead(projection=RandomProjection(D, 16, seed=2)).load_state_dict(state)


def test_select_ridge_picks_from_grid_by_gcv() -> None:
    x, y = _data(3, n=120)
    head = RidgeHead().fit(x, y)
    grid = [1e-3, 1e-1, 10.0, 1e5]
    best = head.select_ridge(grid)
    scores = [head.gcv_score(r) for r in grid]
    assert best == grid[int(np.argmin(scores))] and head.ridge == best
    assert scores[-1] > min(scores)  # a huge λ underfits


def test_gcv_matches_brute_force_residuals() -> None:
    x, y = _data(4)
    head = RidgeHead(ridge=2.0).fit(x, y)
    logits = head.decision_function(x).numpy()
    rss = ((np.eye(C)[y] - logits) ** 2).sum()
    phi = np.hstack([x.astype(np.float64), np.ones((N, 1))])
    reg = np.diag([2.0] * D + [0.0])
    df = np.trace(phi @ np.linalg.solve(phi.T @ phi + reg, phi.T))
    assert head.gcv_score(2.0) == pytest.approx(N * rss / (N - df) ** 2, rel=1e-9)


def test_the_walks_choice_is_solved_once_and_only_while_the_statistics_stay() -> None:
    """The GCV walk already solved at the λ it returns: solving there again costs nothing and gives the
    same bits as a fresh factorisation; new data, a moved head or an unwalked λ pay the solve again."""
    from evo.learn.cost import ridge_solve_flops

    x, y = _data(5, n=200)
    head = RidgeHead().fit(x[:150], y[:150])
    lam, _ = head.gcv_walk()
    assert head.solve_flops(lam) == 0 and head.solve_flops(lam * 1.01) == ridge_solve_flops(D + 1, C)
    w, b = head.solve(lam)
    fresh = RidgeHead().fit(x[:150], y[:150])
    w2, b2 = fresh.solve(lam)
    assert torch.equal(w, w2) and torch.equal(b, b2)
    head.partial_fit(x[150:], y[150:])  # in place: the cached solution no longer describes the data
    assert head.solve_flops(lam) == ridge_solve_flops(D + 1, C)
    full = RidgeHead().fit(x, y)
    assert torch.allclose(head.solve(lam)[0], full.solve(lam)[0], rtol=0, atol=1e-12)
    head.gcv(lam)
    head.to("cpu")
    assert head.solve_flops(lam) > 0


def test_kept_solutions_never_outlive_their_statistics_in_copies_pickles_or_inference_mode() -> None:
    """A copy's tensors restart their version count, so a copied cache could match again after as many
    updates: copies and pickles drop it. Inference tensors keep no version: nothing is kept for them."""
    import copy
    import pickle

    x, y = _data(6, n=200)
    head = RidgeHead().fit(x[:100], y[:100])
    head.partial_fit(x[100:120], y[100:120])
    lam, _ = head.gcv_walk()
    for twin in (copy.deepcopy(head), pickle.loads(pickle.dumps(head))):
        twin.partial_fit(x[120:], y[120:])
        twin.partial_fit(x[:1], y[:1])
        twin.partial_fit(x[:1], y[:1], sign=-1)
        assert twin.solve_flops(lam) > 0
        truth = RidgeHead().fit(x, y).solve(lam)[0]
        assert torch.allclose(twin.solve(lam)[0], truth, rtol=0, atol=1e-10)
    with torch.inference_mode():
        frozen = RidgeHead().fit(x, y)
        lam, _ = frozen.gcv_walk()
        assert frozen.solve_flops(lam) > 0 and frozen.predict(x).shape == (200,)
    assert frozen.predict(x).shape == (200,)


def test_the_walk_never_evaluates_more_than_its_cap_even_when_it_restarts() -> None:
    """A previous λ that scores inf sends the walk back to its default start; that evaluation counts
    against the cap, which pricing charges in full."""
    rng = np.random.default_rng(0)
    n, d, c = 60, 200, 3
    y = rng.integers(0, c, n)
    x = torch.from_numpy(30.0 * (rng.normal(0, 1, (c, d))[y] + 3.0 * rng.normal(0, 1, (n, d)))).float()
    head = RidgeHead().fit(x, torch.from_numpy(y))
    assert head.gcv_score(1e-7) == float("inf")
    one = head.gcv(1.0)[1]
    for cap in (3, 4, 6):
        _, flops = head.gcv_walk(1e-7, max_evals=cap)
        assert flops <= cap * one


def test_gcv_does_not_mistake_rounding_for_a_perfect_fit_when_features_outnumber_samples() -> None:
    """With fewer samples than features a tiny λ interpolates, and RSS from G and B is then a
    difference of numbers of size n that cancel to rounding noise near 0. That λ scores inf, so the
    walk (even from a tiny previous λ) settles where the score means something. (On Lite0's taps the
    rounding minimum cost 12 points: BENCHMARKS.md, "GCV when features outnumber samples".)"""
    rng = np.random.default_rng(0)
    n, d, c = 150, 400, 4
    centres = rng.normal(0, 1, (c, d))
    y = rng.integers(0, c, 2 * n)
    x = torch.from_numpy(30.0 * (centres[y] + 3.0 * rng.normal(0, 1, (2 * n, d)))).float()  # large scale, like CNN taps
    head = RidgeHead().fit(x[:n], torch.from_numpy(y[:n]))
    assert head.gcv_score(1e-6) == float("inf")
    lam, _ = head.gcv_walk(1e-6)
    assert np.isfinite(head.gcv_score(lam)) and lam > 1e-3 and lam == head.gcv_walk(None)[0]
    # plenty of samples: the guard leaves small λ alone
    big = RidgeHead().fit(torch.from_numpy(rng.normal(0, 1, (3000, 20))).float(),
                          torch.from_numpy(rng.integers(0, c, 3000)))
    assert np.isfinite(big.gcv_score(1e-6))


def test_gcv_refuses_a_lambda_that_leaves_under_one_residual_degree_of_freedom() -> None:
    """Fewer samples than features (a few dozen images per class on 1,280 pooled features): at a small λ
    the fit interpolates, n − df falls below 1, and the score follows the features' float rounding
    (measured on the main job: two candidates whose features agreed to 1e-7 walked to λ = 270 and 0.27).
    Such a λ scores inf, and a walk from it settles where a default start does."""
    rng = np.random.default_rng(0)
    n, d, c, k = 192, 1280, 6, 96
    y = rng.integers(0, c, n)
    z = rng.normal(0, 1, (c, k))[y] + 1.5 * rng.normal(0, 1, (n, k))
    x = np.maximum(z @ rng.normal(0, 1, (k, d)) / np.sqrt(k) + 0.05 * rng.normal(0, 1, (n, d)), 0)  # ReLU features
    head = RidgeHead().fit(torch.from_numpy(x).float(), torch.from_numpy(y))
    svals = np.linalg.svd(x - x.mean(0), compute_uv=False)
    for lam in (0.1, 100.0):
        df = 1 + float((svals**2 / (svals**2 + lam)).sum())  # the intercept is not penalised
        assert (n - df < 1) is (lam == 0.1)
    assert head.gcv_score(0.1) == float("inf")
    assert np.isfinite(head.gcv_score(100.0))
    assert head.gcv_walk(0.1)[0] == head.gcv_walk(None)[0]


@pytest.mark.parametrize(
    ("features", "labels", "error", "match"),
    [
        (np.full((3, D), np.nan), np.zeros(3, dtype=int), DataError, "NaN"),
        (np.full((3, D), np.inf), np.zeros(3, dtype=int), DataError, "inf"),
        (np.zeros((3, D)), np.array([0, -2, 1]), DataError, "label -2"),
        (np.zeros((3, D)), np.array([0, 9, 1]), DataError, "label 9"),
        (np.zeros((0, D)), np.zeros(0, dtype=int), DataError, "empty"),
        (np.zeros((3, D)), np.array([0.0, 1.0, 1.0]), DataError, "integers"),
        (np.zeros((3, D)), np.zeros(2, dtype=int), DataError, "one entry per sample"),
        (np.zeros((3, D + 1)), np.zeros(3, dtype=int), ConfigError, f"expects {D} .* got {D + 1}"),
    ],
)
def test_bad_input_is_refused_with_a_named_reason(features, labels, error, match) -> None:
    x, y = _data()
    head = RidgeHead().fit(x, y)
    with pytest.raises(error, match=match):
        head.partial_fit(features, labels, n_classes=C)
    assert head.n_samples_ == N  # nothing half-written


def test_bad_config_and_unfitted_use() -> None:
    with pytest.raises(ConfigError, match="ridge"):
        RidgeHead(ridge=-1.0)
    with pytest.raises(ConfigError, match="not fitted"):
        RidgeHead().solve()
    with pytest.raises(ConfigError, match="expects 4"):
        RidgeHead(projection=RandomProjection(4, 8)).fit(np.zeros((2, 5)), np.zeros(2, dtype=int))


def test_partial_fit_takes_a_batch_back_out_exactly():
    """sign=-1 removes a batch added earlier: the statistics equal those of the data without it."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 6)), rng.integers(0, 3, 30)
    full = RidgeHead().partial_fit(x[:20], y[:20], 3).partial_fit(x[20:], y[20:], 3)
    full.partial_fit(x[5:9], y[5:9], 3, sign=-1)
    keep = np.r_[0:5, 9:30]
    ref = RidgeHead().partial_fit(x[keep], y[keep], 3)
    assert torch.allclose(full.gram_, ref.gram_, atol=1e-12) and torch.allclose(full.xty_, ref.xty_, atol=1e-12)
    assert full.n_samples_ == ref.n_samples_ == 26
    with pytest.raises(ConfigError, match="sign"):
        full.partial_fit(x[:1], y[:1], 3, sign=2)


@pytest.mark.parametrize("d", [5, 512, 513, 1025, 1600])
def test_the_gram_from_its_upper_block_triangle_is_the_full_product_at_the_flops_charged(d) -> None:
    """Heads wider than a block add ΦᵀΦ from its upper block triangle (about half the FLOPs): the same
    matrix to rounding, exactly symmetric, charged by `gram_flops` as torch's counter counts it (the
    products are written in place), and a wide head's incremental statistics, a batch taken back out
    included, still equal the joint ones."""
    from torch.utils.flop_counter import FlopCounterMode

    from evo.learn.cost import gram_blocks, gram_flops
    from evo.learn.head import add_gram

    phi = torch.randn(40, d, dtype=torch.float64, generator=torch.Generator().manual_seed(d))
    g = torch.zeros(d, d, dtype=torch.float64)
    with FlopCounterMode(display=False) as counter:
        add_gram(g, phi)
    full = phi.T @ phi
    assert _rel(g, full) < 1e-14 and torch.equal(g, g.T)
    assert counter.get_total_flops() == gram_flops(40, d, 0)
    assert (len(gram_blocks(d)) > 1) == (d > 512)  # narrow heads keep the one product
    assert (gram_flops(40, d, 0) < 0.7 * 2 * 40 * d * d) == (d >= 1600)
    counts = [gram_flops(1, w, 0) for w in range(1, 1600)]
    assert all(a < b for a, b in zip(counts, counts[1:], strict=False))  # prices read a width as a bound
    x, y = _data(d, n=40, d=d)
    inc = RidgeHead().partial_fit(x[:25], y[:25], C).partial_fit(x[25:], y[25:], C)
    joint = RidgeHead().fit(x, y, C)
    assert _rel(inc.gram_, joint.gram_) < 1e-13 and torch.equal(inc.gram_, inc.gram_.T)
    inc.partial_fit(x[:5], y[:5], C, sign=-1)  # taken back out, in place
    assert _rel(inc.gram_, RidgeHead().fit(x[5:], y[5:], C).gram_) < 1e-13 and torch.equal(inc.gram_, inc.gram_.T)
