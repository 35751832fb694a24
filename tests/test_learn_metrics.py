"""Continual-learning metrics and compute accounting, against values computed by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from evo.errors import ConfigError, DataError
from evo.learn.cost import Cost, CostMeter, forward_flops, train_flops
from evo.learn.metrics import (
    AccuracyMatrix,
    average_incremental_accuracy,
    bwt,
    final_accuracy,
    forgetting,
)

NAN = float("nan")
# Increment 0 improves once increment 1 is learned (0.90 → 0.95), then both drop after increment 2.
R = [[0.90, NAN, NAN], [0.95, 0.80, NAN], [0.60, 0.60, 0.95]]


def test_forgetting_uses_the_best_earlier_accuracy_not_the_diagonal() -> None:
    # Chaudhry et al. 2018: j=0: max(0.90, 0.95) − 0.60 = 0.35; j=1: 0.80 − 0.60 = 0.20
    assert forgetting(R) == pytest.approx((0.35 + 0.20) / 2)


def test_bwt_compares_with_the_accuracy_just_after_learning() -> None:
    # Lopez-Paz & Ranzato 2017: j=0: 0.60 − 0.90; j=1: 0.60 − 0.80
    assert bwt(R) == pytest.approx((-0.30 - 0.20) / 2)


def test_final_and_average_incremental_accuracy() -> None:
    assert final_accuracy(R) == pytest.approx((0.60 + 0.60 + 0.95) / 3)
    assert average_incremental_accuracy([0.90, 0.85, 0.72]) == pytest.approx((0.90 + 0.85 + 0.72) / 3)


def test_one_increment_has_no_forgetting_or_bwt() -> None:
    assert math.isnan(forgetting([[0.7]])) and math.isnan(bwt([[0.7]]))
    assert final_accuracy([[0.7]]) == pytest.approx(0.7)


def test_accuracy_matrix_builds_rows_and_serialises_to_json() -> None:
    m = AccuracyMatrix()
    for i, row in enumerate(R):
        m.append(row[: i + 1], seen_accuracy=[0.90, 0.85, 0.72][i])
    np.testing.assert_array_equal(np.isnan(m.matrix), np.isnan(np.array(R)))
    d = json.loads(json.dumps(m.to_dict(), allow_nan=False))
    assert d["forgetting"] == pytest.approx(0.275) and d["bwt"] == pytest.approx(-0.25)
    assert d["average_incremental_accuracy"] == pytest.approx(2.47 / 3)
    assert AccuracyMatrix.from_dict(d).to_dict() == d


def test_seen_accuracy_defaults_to_the_row_mean() -> None:
    m = AccuracyMatrix().append([0.8]).append([0.6, 1.0])
    assert m.average_incremental_accuracy() == pytest.approx((0.8 + 0.8) / 2)
    single = json.loads(json.dumps(AccuracyMatrix().append([0.5]).to_dict(), allow_nan=False))
    assert single["forgetting"] is None and single["bwt"] is None


def test_bad_input_is_refused() -> None:
    with pytest.raises(DataError, match="row 1 must hold 2"):
        AccuracyMatrix().append([0.5]).append([0.5])
    with pytest.raises(DataError, match="percentages"):
        AccuracyMatrix().append([85.0])
    with pytest.raises(DataError, match="square"):
        forgetting([[0.5, 0.5]])
    with pytest.raises(DataError, match="below the diagonal"):
        bwt([[0.5, NAN], [NAN, 0.5]])
    with pytest.raises(DataError, match="empty"):
        AccuracyMatrix().final_accuracy()
    with pytest.raises(DataError, match="non-empty"):
        average_incremental_accuracy([])


# -- compute accounting (evo/learn/cost.py; kept here because the brief assigns no cost test file) --


def _tiny_convnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1, groups=2),
        nn.Flatten(),
        nn.Linear(6 * 5 * 5, 7),
    )


def test_linear_forward_flops_are_two_multiply_adds_per_weight_and_sample() -> None:
    assert forward_flops(nn.Linear(100, 10), torch.randn(8, 100)) == 2 * 8 * 100 * 10


def test_convnet_flops_match_hand_computation() -> None:
    b, hw = 2, 5 * 5
    conv1 = 2 * b * hw * 4 * 3 * 9  # 2 · batch · out pixels · c_out · c_in · k²
    conv2 = 2 * b * hw * 6 * (4 // 2) * 9  # grouped: c_in per group (torch's own backward formula overcounts)
    fc = 2 * b * 150 * 7
    fwd = conv1 + conv2 + fc
    x = torch.randn(b, 3, 5, 5)
    assert forward_flops(_tiny_convnet(), x) == fwd
    # backward: grad-weight for every layer, grad-input for all but the first (the input needs none)
    step = train_flops(_tiny_convnet(), x)
    assert step == fwd + (conv1 + 2 * conv2 + 2 * fc)
    assert 2.5 * fwd < step <= 3 * fwd


def test_meta_pricing_leaves_the_module_untouched() -> None:
    net = _tiny_convnet().append(nn.BatchNorm1d(7))
    before = {k: v.clone() for k, v in net.state_dict().items()}

    def loss(out: torch.Tensor) -> torch.Tensor:  # targets must live on the output's (meta) device
        return nn.functional.cross_entropy(out, torch.zeros(len(out), dtype=torch.long, device=out.device))

    assert train_flops(net, torch.randn(4, 3, 5, 5), loss_fn=loss) > 0
    for k, v in net.state_dict().items():
        assert v.device.type == "cpu" and torch.equal(v, before[k]), k
    assert all(p.grad is None for p in net.parameters())


def test_cost_meter_and_cost_arithmetic() -> None:
    with CostMeter(device="cpu") as meter:
        sum(range(10_000))
        meter.add_flops(3 * 1000)
    meter.add_flops(np.int64(5))
    cost = meter.cost
    assert cost.flops == 3005 and cost.seconds > 0 and cost.peak_mem_bytes > 0
    total = cost + Cost(flops=1, seconds=1.0, peak_mem_bytes=1)
    assert total.flops == 3006 and total.seconds == pytest.approx(cost.seconds + 1.0)
    assert total.peak_mem_bytes == cost.peak_mem_bytes
    assert Cost.from_dict(json.loads(json.dumps(total.to_dict()))) == total
    with pytest.raises(ConfigError, match="non-negative"):
        meter.add_flops(-1)
    with pytest.raises(ConfigError, match="not started"):
        meter.stop()
