"""bench/bench_targets.py's core on a tiny random teacher and student (vocab ~320).

Checks what the bench's table claims: a sampled target's gradient error is variance (the
error of the mean over R draws falls about as 1/sqrt(R)), a top-k target's is bias (the
same for every R, and only the quantisation's at k = V); bytes grow with k and N; and the
bench's gradient is the sparse-KL gradient it says it is.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

KS = (8, 64)
NS = (8, 64)
R = 8
#: two tiny models, six stores and ~40 gradient passes: 5-10 s idle, more on a shared CPU
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bt(repo_script):
    """bench/bench_targets.py as a module."""
    return repo_script("bench/bench_targets.py")


@pytest.fixture(scope="module")
def fw(bt, tiny_teacher_dir, tiny_student_dir):
    seqs = np.random.default_rng(0).integers(3, 300, size=(6, 32))
    return bt.run_models(tiny_teacher_dir, tiny_student_dir, seqs, batch_size=4)


@pytest.fixture(scope="module")
def rows(bt, fw, tmp_path_factory):
    ks = KS + (fw.vocab_size,)
    out = bt.run_targets(fw, tmp_path_factory.mktemp("targets"), ks=ks, ns=NS, repeats=R,
                         sequences_per_shard=4)
    return {r.target: r for r in out}


def test_sampled_error_is_variance_that_averages_out(rows):
    for n in NS:
        r = rows[f"sampled N={n}"]
        over = r.rel_mean_over_r
        assert sorted(over) == [1, 2, 4, 8]
        assert over[1] == pytest.approx(r.rel_mean)
        assert all(over[a] > over[b] for a, b in zip([1, 2, 4], [2, 4, 8]))
        # unbiased: the error of the mean of R draws ~ error of one / sqrt(R); the pooled
        # squared error is exactly (1 - sum p^2) / (N R) / sum ||g_full||^2 in expectation
        assert 0.6 / math.sqrt(R) < over[R] / over[1] < 1.4 / math.sqrt(R), over
        pooled = r.pooled_over_r
        assert all(0.7 < pooled[x] ** 2 * x / pooled[1] ** 2 < 1.3 for x in pooled), pooled


def test_topk_error_is_bias_that_stays(rows, fw):
    for k in KS:
        for tail in ("bucket", "renorm"):
            r = rows[f"top-{k} {tail}"]
            assert r.rel_mean_over_r == {1: r.rel_mean} and list(r.pooled_over_r) == [1]
    assert rows["top-64 bucket"].rel_mean < rows["top-8 bucket"].rel_mean
    # k = V: the whole distribution, only the 5/256-nat log-prob quantisation is left
    full = rows[f"top-{fw.vocab_size} bucket"]
    assert full.rel_mean < 0.01 and full.cos_p5 > 0.9999 and full.head_rel < 0.01
    # more draws, less variance (about 1/sqrt(N)); distinct ids at most N
    assert rows["sampled N=64"].rel_mean < 0.5 * rows["sampled N=8"].rel_mean
    for n in NS:
        r = rows[f"sampled N={n}"]
        assert 1 <= r.distinct_mean < n and r.distinct_p95 <= n


def test_bytes(rows, fw):
    for k in KS:
        assert rows[f"top-{k} bucket"].bytes == rows[f"top-{k} renorm"].bytes
    b = {t: r.per_token for t, r in rows.items()}
    assert b["top-8 bucket"] < b["top-64 bucket"] < b[f"top-{fw.vocab_size} bucket"]
    assert b["sampled N=8"] < b["sampled N=64"]
    for n in NS:  # N draws store fewer distinct ids than top-N stores ids
        assert b[f"sampled N={n}"] < b[f"top-{n} bucket"], b
    for r in rows.values():
        assert set(r.bytes) >= {"input_ids"} and 0 < r.per_token_no_input < r.per_token
        assert r.tokens == fw.input_ids.size


def test_gradient_is_the_sampled_kl_gradient(bt, fw):
    """The bench's sampled gradient is softmax(z) - count / N (KL(q || student) at T = 1)."""
    from ddk.cache.teacher.sampled import sampled_target

    ids, counts = bt.draw(fw, slice(0, 1), 16, seed=3)
    sid, logw = sampled_target(ids[0], counts[0], 16)
    z = fw.student_logits[0]
    g = bt.loss_grad(z, sid, logw, None, "none")
    q = torch.zeros_like(z).scatter_add_(1, sid, torch.as_tensor(counts[0]).float() / 16)
    torch.testing.assert_close(g, torch.softmax(z, -1) - q, atol=1e-6, rtol=0)
    rel, cos = bt.errors(torch.softmax(z, -1) - torch.softmax(fw.teacher_logits[0, :-1], -1),
                         bt.full_grad(z, fw.teacher_logits[0, :-1]))
    assert np.all(rel < 1e-5) and np.all(cos > 1 - 1e-6)


def test_report_renders(bt, rows):
    table = bt.table(list(rows.values()), R)
    assert table.count("\n") == len(rows) + 1 and f"R={R}" in table
    assert "R=8" in bt.r_table(list(rows.values()))
    assert all("goal" in line for line in bt.verdict(list(rows.values())))
