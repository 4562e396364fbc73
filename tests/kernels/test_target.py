"""Teacher target preparation: tail from top-k, tempering of the coarsened teacher, renorm."""

from __future__ import annotations

from decimal import Decimal, getcontext

import torch
from ddk.kernels.target import log1mexp, prepare_teacher_target, tail_from_topk


def test_log1mexp_accurate_at_both_ends():
    getcontext().prec = 60
    xs = [-1e-20, -1e-8, -0.3, -0.7, -5.0, -50.0]
    want = [float((1 - Decimal(v).exp()).ln()) for v in xs]  # 60-digit reference
    got = log1mexp(torch.tensor(xs, dtype=torch.float64)).tolist()
    for g, w in zip(got, want):
        assert abs(g - w) <= 1e-14 * abs(w)
    assert log1mexp(torch.tensor([0.0])).item() == float("-inf")


def test_tail_from_topk_matches_exact_tail():
    g = torch.Generator().manual_seed(0)
    lp = torch.log_softmax(torch.randn(6, 40, generator=g, dtype=torch.float64) * 2, -1)
    vals, ids = lp.topk(5, -1)
    exact = torch.logsumexp(lp.scatter(1, ids, float("-inf")), -1)
    assert torch.allclose(tail_from_topk(vals), exact, rtol=1e-12, atol=1e-12)
    full = torch.log_softmax(torch.tensor([[0.0, 1.0, -float("inf")]], dtype=torch.float64), -1)
    assert tail_from_topk(full[:, :2]).item() == float("-inf")  # top-k hold all the mass


def _teacher(seed=0):
    g = torch.Generator().manual_seed(seed)
    lp = torch.log_softmax(torch.randn(4, 30, generator=g, dtype=torch.float64) * 2, -1)
    vals, ids = lp.topk(5, -1)
    tail = torch.logsumexp(lp.scatter(1, ids, float("-inf")), -1)
    return vals, tail


def test_bucket_t1_keeps_teacher_unscaled():
    vals, tail = _teacher()
    a, b = prepare_teacher_target(
        vals, tail, vocab_size=30, temperature=1.0, tail="bucket", active=None, dtype=torch.float64
    )
    assert torch.equal(a, vals) and torch.equal(b, tail)


def test_bucket_tempered_is_a_distribution_with_exact_cached_ratios():
    vals, tail = _teacher()
    T = 2.0
    a, b = prepare_teacher_target(
        vals, tail, vocab_size=30, temperature=T, tail="bucket", active=None, dtype=torch.float64
    )
    total = torch.exp(a).sum(-1) + torch.exp(b)
    assert torch.allclose(total, torch.ones_like(total), atol=1e-12)
    # ratios among cached tokens are exactly those of the tempered teacher
    assert torch.allclose(a[:, 0] - a[:, 1], (vals[:, 0] - vals[:, 1]) / T, atol=1e-12)
    # and the tail is treated as one outcome: log p_t - log p_0 = (b - a_0) / T
    assert torch.allclose(b - a[:, 0], (tail - vals[:, 0]) / T, atol=1e-12)


def test_renorm_drops_tail_and_sums_to_one():
    vals, tail = _teacher()
    a, b = prepare_teacher_target(
        vals, tail, vocab_size=30, temperature=1.0, tail="renorm", active=None, dtype=torch.float64
    )
    assert torch.allclose(torch.exp(a).sum(-1), torch.ones(4, dtype=torch.float64), atol=1e-12)
    assert bool((b == float("-inf")).all())


def test_inactive_rows_are_neutralised():
    vals, tail = _teacher()
    vals[1] = float("nan")
    active = torch.tensor([True, False, True, True])
    a, b = prepare_teacher_target(
        vals,
        tail,
        vocab_size=30,
        temperature=2.0,
        tail="bucket",
        active=active,
        dtype=torch.float32,
    )
    assert bool((a[1] == float("-inf")).all()) and b[1] == float("-inf")
    assert torch.isfinite(a[0]).all()
