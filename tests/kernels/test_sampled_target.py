"""The sampled teacher target (tail="none"): float64 oracle, fused head, and unbiasedness.

A sampled target holds N draws from the teacher per position as distinct ids with weights
count / N (padding entries: weight 0, distinct filler ids). Its KL gradient with respect
to the student logits is softmax(z) - q, so over independent draws its mean is the
full-vocabulary KD gradient softmax(z) - p: the statistical test below checks exactly that,
with a bound from the Monte-Carlo spread, and checks that biased targets fail it.
"""

from __future__ import annotations

import math

import pytest
import torch
from ddk.cache.teacher.sampled import draw_counts, sampled_target
from ddk.kernels import SparseKLInputError, fused_linear_sparse_kl_loss, sparse_kl_loss

pytestmark = pytest.mark.filterwarnings(
    "ignore:invalid value encountered:RuntimeWarning", "ignore:divide by zero:RuntimeWarning"
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _teacher(n: int, v: int, seed: int = 0, scale: float = 1.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(n, v, generator=g, dtype=torch.float64) * scale, -1)


def _sampled_case(n=9, v=40, draws=8, seed=0, ignore_rows=()):
    """Student logits, a sampled target drawn from a random teacher, labels."""
    g = torch.Generator().manual_seed(seed + 1)
    ids, counts = draw_counts(_teacher(n, v, seed).float(), draws, g)
    ids, logw = sampled_target(ids, counts, draws)
    z = torch.randn(n, v, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, v, (n,), generator=g)
    for r in ignore_rows:
        labels[r] = -100
    return {"logits": z.float().to(DEVICE), "ids": ids.to(DEVICE), "lp": logw.to(DEVICE),
            "tail": torch.full((n,), float("-inf"), device=DEVICE), "labels": labels.to(DEVICE)}


def _kl_grad_rows(z: torch.Tensor, ids: torch.Tensor, logw: torch.Tensor,
                  backend: str = "torch", tail: str = "none") -> torch.Tensor:
    """d(sum_rows KL(target || softmax z))/dz through the real loss, [N, V]."""
    z = z.clone().requires_grad_()
    tail_lp = None if tail != "none" else torch.full(z.shape[:1], float("-inf"),
                                                      dtype=logw.dtype, device=z.device)
    sparse_kl_loss(z, ids, logw, tail_lp, reduction="sum", tail=tail, backend=backend).backward()
    return z.grad


@pytest.mark.parametrize("opts", [{}, {"kl_weight": 0.6, "ce_weight": 1.0}],
                         ids=["kl", "kl+ce"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_sampled_target_matches_float64_oracle(backend, opts, oracle, relerr):
    case = _sampled_case(ignore_rows=(2, 5))
    assert torch.isinf(case["lp"]).any(), "the case must hold padding entries"
    ref_loss, ref_grad = oracle(case, tail="none", **opts)
    z = case["logits"].clone().requires_grad_()
    loss = sparse_kl_loss(z, case["ids"], case["lp"], case["tail"], case["labels"],
                          tail="none", backend=backend, **opts)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    assert relerr(loss, ref_loss) < 1e-5
    assert relerr(z.grad, ref_grad) < 1e-5


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fused_head_takes_the_sampled_target(backend, relerr):
    case = _sampled_case(n=10, v=37, ignore_rows=(3,))
    g = torch.Generator().manual_seed(7)
    hid = (torch.randn(10, 16, generator=g) * 0.5).to(DEVICE).requires_grad_()
    w = (torch.randn(37, 16, generator=g) * 0.5).to(DEVICE).requires_grad_()
    args = (case["ids"], case["lp"], case["tail"], case["labels"])
    fused = fused_linear_sparse_kl_loss(hid, w, *args, ce_weight=1.0, tail="none",
                                        backend=backend, chunk_rows=3)
    fused.backward()
    h2, w2 = hid.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    plain = sparse_kl_loss(h2 @ w2.T, *args, ce_weight=1.0, tail="none", backend="torch")
    plain.backward()
    assert relerr(fused, plain) < 1e-5
    assert relerr(hid.grad, h2.grad) < 1e-5 and relerr(w.grad, w2.grad) < 1e-5


def test_none_mode_refuses_temperature_and_partial_mass():
    case = _sampled_case()
    args = (case["logits"], case["ids"], case["lp"], case["tail"], case["labels"])
    with pytest.raises(SparseKLInputError, match="temperature must be 1.0"):
        sparse_kl_loss(*args, tail="none", temperature=2.0)
    with pytest.raises(SparseKLInputError, match="whole target"):
        sparse_kl_loss(case["logits"], case["ids"], case["lp"] + math.log(0.5), case["tail"],
                       case["labels"], tail="none")


# -- unbiasedness -----------------------------------------------------------------------
N_ROWS, VOCAB, DRAWS, REPEATS = 6, 40, 8, 2000


def _mean_gradient_statistic(target_grads: torch.Tensor, full: torch.Tensor) -> float:
    """sum over entries of ((mean_r g_r - g_full) / (std_r g_r / sqrt R))^2, divided by the
    number of entries: about 1 for an unbiased estimate (chi-square / dof), large for a
    biased one. Entries whose gradient does not vary (ids never drawn: their gradient is the
    student's probability, up to float rounding of the target's mass) are left out."""
    r = target_grads.shape[0]
    mean = target_grads.mean(0)
    se = target_grads.std(0) / math.sqrt(r)
    used = se > 1e-9
    t = (mean - full)[used] / se[used]
    return float((t ** 2).mean()), int(used.sum())


def _full_kd_gradient(z: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    return torch.softmax(z, -1) - logp.exp()


def _draws_as_rows(logp: torch.Tensor, transform=None) -> tuple[torch.Tensor, torch.Tensor]:
    """REPEATS independent sampled targets of every row, stacked: [REPEATS * N_ROWS, DRAWS]."""
    g = torch.Generator().manual_seed(123)
    rows = logp.float().repeat(REPEATS, 1)
    ids, counts = draw_counts(rows if transform is None else transform(rows), DRAWS, g)
    return sampled_target(ids, counts, DRAWS)


def test_sampled_gradient_is_unbiased_and_biased_targets_fail():
    logp = _teacher(N_ROWS, VOCAB)
    z = (torch.randn(N_ROWS, VOCAB, generator=torch.Generator().manual_seed(5)) * 2).double()
    full = _full_kd_gradient(z, logp)
    zs = z.repeat(REPEATS, 1)

    def statistic(ids: torch.Tensor, logw: torch.Tensor) -> tuple[float, int]:
        grads = _kl_grad_rows(zs, ids, logw.double()).view(REPEATS, N_ROWS, VOCAB)
        return _mean_gradient_statistic(grads, full)

    # unbiased: chi-square / dof is 1 +- sqrt(2 / dof); 1 + 6 sqrt(2 / dof) is a 6-sigma bound
    stat, dof = statistic(*_draws_as_rows(logp))
    bound = 1 + 6 * math.sqrt(2 / dof)
    assert dof > 100 and stat < bound, (stat, bound)

    # biased 1: draws from a flattened teacher (T = 2) weighted by counts, no importance weights
    stat_flat, _ = statistic(*_draws_as_rows(logp, lambda lp: torch.log_softmax(lp / 2, -1)))
    assert stat_flat > 10 * bound, stat_flat

    # biased 2: the sample without its singletons (ids drawn once), renormalised
    ids, logw = _draws_as_rows(logp)
    kept = torch.where(logw > math.log(1.5 / DRAWS), logw, float("-inf"))
    kept = torch.where(torch.isinf(kept).all(-1, keepdim=True), logw, kept)
    stat_denoised, _ = statistic(ids, torch.log_softmax(kept, -1))
    assert stat_denoised > 10 * bound, stat_denoised


def test_topk_target_gradient_is_biased_under_the_same_test():
    """The same statistic on a deterministic top-8 + tail target: no spread over draws, so
    the bias shows as a plain error that does not shrink; measured against the sampled one."""
    logp = _teacher(N_ROWS, VOCAB)
    z = (torch.randn(N_ROWS, VOCAB, generator=torch.Generator().manual_seed(5)) * 2).double()
    full = _full_kd_gradient(z, logp)
    vals, ids = logp.topk(DRAWS, -1)
    tail = torch.logsumexp(logp.scatter(1, ids, float("-inf")), -1)
    zz = z.clone().requires_grad_()
    sparse_kl_loss(zz, ids, vals, tail, reduction="sum", backend="torch").backward()
    topk_err = float((zz.grad - full).norm() / full.norm())
    ids_s, logw = _draws_as_rows(logp)
    grads = _kl_grad_rows(z.repeat(REPEATS, 1), ids_s, logw.double()).view(REPEATS, N_ROWS,
                                                                           VOCAB)
    sampled_mean_err = float((grads.mean(0) - full).norm() / full.norm())
    assert sampled_mean_err < topk_err / 5, (sampled_mean_err, topk_err)
