"""Naive, fully differentiable PyTorch formula of the sparse KL (+CE) loss.

This is the oracle the tests compare every backend against (run in float64), and the
"torch eager" / "torch.compile" baseline of the benchmark. It materialises several
[N, V] tensors and lets autograd derive the gradient, so it is neither fast nor lean:
use ddk.kernels.sparse_kl_loss for training. It takes *prepared* teacher log-probs
(a, b) from ddk.kernels.target.prepare_teacher_target so the teacher maths lives in one
place.
"""

from __future__ import annotations

import torch


def sparse_kl_rows_reference(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (kl, ce) in the dtype of `a`; rows with label == ignore_index give 0.

    kl = sum_i p_i (a_i - log q_i) + p_t (b - log q_t), q = softmax(z / T) over the full
    vocabulary, q_t = sum of q over the non-cached ids; terms with p = 0 are 0.
    ce = logsumexp(z) - z[label] (untempered). The T^2 factor is applied by the caller.
    """
    z = student_logits.to(a.dtype)
    n, v = z.shape
    ids = topk_ids.long()
    if labels is not None:
        active = labels != ignore_index
    else:
        active = torch.ones(n, dtype=torch.bool, device=z.device)
    ids = torch.where(active.unsqueeze(-1), ids, torch.zeros_like(ids))
    logq = torch.log_softmax(z / temperature, dim=-1)
    logq_c = torch.gather(logq, 1, ids)
    p = torch.exp(a)
    kl = torch.where(p > 0, p * (a - logq_c), torch.zeros_like(a)).sum(-1)
    if ids.shape[1] < v:
        cached = torch.zeros_like(z, dtype=torch.bool).scatter(1, ids, True)
        logq_t = torch.logsumexp(logq.masked_fill(cached, float("-inf")), dim=-1)
        pt = torch.exp(b)
        kl = kl + torch.where(pt > 0, pt * (b - logq_t), torch.zeros_like(b))
    kl = torch.where(active, kl, torch.zeros_like(kl))
    if labels is not None:
        lab = torch.where(active, labels.long(), torch.zeros_like(labels, dtype=torch.long))
        ce = torch.logsumexp(z, dim=-1) - torch.gather(z, 1, lab.unsqueeze(-1)).squeeze(-1)
        ce = torch.where(active, ce, torch.zeros_like(ce))
    else:
        ce = torch.zeros_like(kl)
    return kl, ce


def sparse_kl_loss_reference(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    kl_weight: float = 1.0,
    ce_weight: float = 0.0,
    temperature: float = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """The full loss: kl_weight * T^2 * kl + ce_weight * ce, reduced like sparse_kl_loss."""
    kl, ce = sparse_kl_rows_reference(
        student_logits, topk_ids, a, b, labels, temperature=temperature, ignore_index=ignore_index
    )
    rows = kl_weight * temperature**2 * kl + ce_weight * ce
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    if labels is None:
        return rows.sum() / max(rows.shape[0], 1)
    n_active = (labels != ignore_index).sum().clamp(min=1).to(rows.dtype)
    return rows.sum() / n_active
