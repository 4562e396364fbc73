"""DDK weight formulas against values worked out by hand (see the comments for the arithmetic)."""

from __future__ import annotations

import math

import pytest
import torch
from ddk.cache.errors import ConfigError
from ddk.cache.train.ddk_weights import discrepancy, fixed_weights, initial_weights, update_weights


def test_initial_weights_hand_computed():
    # ratios ppl_S / ppl_T = [10/5, 20/10, 30/10] = [2, 2, 3]
    # softmax: e^2 = 7.389056099, e^3 = 20.085536923, sum = 34.863649121
    #          -> [0.211941558, 0.211941558, 0.576116885]
    r0 = initial_weights([10.0, 20.0, 30.0], [5.0, 10.0, 10.0])
    assert r0.dtype == torch.float64
    assert r0.tolist() == pytest.approx([0.2119415576, 0.2119415576, 0.5761168848], abs=1e-9)


def test_update_weights_hand_computed():
    # r = [0.5, 0.3, 0.2], ratios = [2/2, 4/2, 1/2] = [1, 2, 0.5]
    # psi = [0.5 e, 0.3 e^2, 0.2 e^0.5] = [1.359140914, 2.216716830, 0.329744254], sum 3.905601998
    # r' = 0.5 * psi / sum + 0.5 / 3 = [0.340665568, 0.450453498, 0.208880934]
    r1 = update_weights([0.5, 0.3, 0.2], [2.0, 4.0, 1.0], [2.0, 2.0, 2.0], alpha=0.5)
    assert r1.tolist() == pytest.approx([0.3406655681, 0.4504534978, 0.2088809341], abs=1e-9)
    assert float(r1.sum()) == pytest.approx(1.0, abs=1e-12)


def test_update_alpha_extremes_and_floor():
    r, s, t = [0.25, 0.25, 0.5], [3.0, 1.0, 2.0], [1.0, 1.0, 1.0]
    # alpha = 0: pure uniform smoothing
    assert update_weights(r, s, t, alpha=0.0).tolist() == pytest.approx([1 / 3] * 3)
    # alpha = 1: psi normalised, psi = [0.25 e^3, 0.25 e, 0.5 e^2]
    psi = [0.25 * math.exp(3), 0.25 * math.exp(1), 0.5 * math.exp(2)]
    expect = [p / sum(psi) for p in psi]
    assert update_weights(r, s, t, alpha=1.0).tolist() == pytest.approx(expect, abs=1e-12)
    # any alpha: every weight >= (1 - alpha) / N
    w = update_weights([0.98, 0.01, 0.01], [100.0, 1.0, 1.0], t, alpha=0.3)
    assert (w >= 0.7 / 3 - 1e-12).all()


def test_update_is_stable_for_huge_ratios():
    # a random student vs a good teacher: ratios in the thousands would overflow exp() in float64
    w = update_weights([0.5, 0.5], [3000.0, 2000.0], [1.0, 1.0], alpha=0.5)
    assert torch.isfinite(w).all()
    assert w.tolist() == pytest.approx([0.75, 0.25], abs=1e-12)  # psi/sum -> [1, 0]


def test_update_accepts_weights_that_underflowed_to_zero():
    # a random student: ratios ~1e5 apart make softmax exactly one-hot in float64
    r0 = initial_weights([5e6, 4e6, 6e6], [20.0, 8.0, 25.0])  # ratios 2.5e5, 5e5, 2.4e5
    assert r0.tolist() == [0.0, 1.0, 0.0]
    # psi = [0, e^5e5 (the only non-zero), 0] -> r' = [0.5 / 3, 0.5 + 0.5 / 3, 0.5 / 3]
    r1 = update_weights(r0, [5e6, 4e6, 6e6], [20.0, 8.0, 25.0], alpha=0.5)
    assert r1.tolist() == pytest.approx([1 / 6, 2 / 3, 1 / 6], abs=1e-12)
    with pytest.raises(ConfigError, match="not all 0"):
        update_weights([0.0, 0.0], [1.0, 1.0], [1.0, 1.0])


def test_repeated_updates_move_weight_to_lagging_domain():
    r = initial_weights([4.0, 4.0], [2.0, 2.0])
    assert r.tolist() == pytest.approx([0.5, 0.5])
    history = []
    for _ in range(5):  # ratios [3, 2]: the first domain lags more and keeps gaining weight
        r = update_weights(r, [6.0, 4.0], [2.0, 2.0])
        history.append(float(r[0]))
    assert history == sorted(history) and history[0] > 0.6
    # fixed point of r = 0.5 * r e / (r e + 1 - r) + 0.25 is ~0.6748 (alpha caps the drift)
    assert 0.67 < history[-1] < 0.675


def test_fixed_mixtures():
    assert fixed_weights("uniform", [10, 30, 60]).tolist() == pytest.approx([1 / 3] * 3)
    assert fixed_weights("natural", [10, 30, 60]).tolist() == pytest.approx([0.1, 0.3, 0.6])


@pytest.mark.parametrize("call", [
    lambda: initial_weights([1.0, 2.0], [1.0]),
    lambda: initial_weights([], []),
    lambda: initial_weights([1.0, float("nan")], [1.0, 1.0]),
    lambda: discrepancy([1.0], [0.0]),
    lambda: update_weights([0.5, 0.5], [1.0, 1.0], [1.0, 1.0], alpha=1.5),
    lambda: update_weights([1.0], [1.0, 1.0], [1.0, 1.0]),
    lambda: fixed_weights("zipf", [1, 2]),
    lambda: fixed_weights("natural", [0, 0]),
])
def test_bad_inputs_raise_config_error(call):
    with pytest.raises(ConfigError):
        call()
