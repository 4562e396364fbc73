"""Loss options, and the validation + preparation of the loss inputs shared by both losses.

prepare_targets checks the options and the teacher/label tensors against the logits' [N, V]
and turns them into PreparedTargets: the prepared teacher target (target.py), the active
rows and the reduction scale, ready for any backend. Used by sparse_kl_loss and
fused_linear_sparse_kl_loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from ddk.kernels.target import prepare_teacher_target
from ddk.kernels.torch_impl import compute_dtype
from ddk.kernels.validate import check_options, check_targets, check_values


@dataclass(frozen=True)
class LossOptions:
    """The scalar options of the loss (one place, passed through autograd Functions)."""

    kl_weight: float = 1.0
    ce_weight: float = 0.0
    temperature: float = 1.0
    ignore_index: int = -100
    tail: str = "bucket"
    reduction: str = "mean"


@dataclass
class PreparedTargets:
    """Teacher and labels ready for a backend: a [N, k], b [N] log-probs, active rows, row scale."""

    topk_ids: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    labels: torch.Tensor | None
    active: torch.Tensor
    row_scale: torch.Tensor  # 0-d: 1 / n_active for "mean", 1 otherwise
    n_active: torch.Tensor  # 0-d int64


def prepare_targets(
    n: int,
    v: int,
    device: torch.device,
    logits_dtype: torch.dtype,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    tail_logprob: torch.Tensor | None,
    labels: torch.Tensor | None,
    opts: LossOptions,
    *,
    validate: bool,
    logits_name: str = "student_logits",
) -> PreparedTargets:
    """Validate everything (values only if `validate`) and build the prepared teacher target."""
    check_options(
        kl_weight=opts.kl_weight,
        ce_weight=opts.ce_weight,
        temperature=opts.temperature,
        tail=opts.tail,
        reduction=opts.reduction,
        has_labels=labels is not None,
    )
    check_targets(
        n, v, device, topk_ids, topk_logprobs, tail_logprob, labels, logits_name=logits_name
    )
    if labels is not None:
        active = labels != opts.ignore_index
    else:
        active = torch.ones(n, dtype=torch.bool, device=device)
    if validate:
        check_values(
            topk_ids,
            topk_logprobs,
            tail_logprob,
            labels,
            active,
            vocab_size=v,
            ignore_index=opts.ignore_index,
            tail=opts.tail,
        )
    cd = compute_dtype(logits_dtype)
    a, b = prepare_teacher_target(
        topk_logprobs,
        tail_logprob,
        vocab_size=v,
        temperature=float(opts.temperature),
        tail=opts.tail,
        active=active,
        dtype=cd,
    )
    n_active = active.sum()
    if opts.reduction == "mean":
        row_scale = 1.0 / n_active.clamp(min=1).to(cd)
    else:
        row_scale = torch.ones((), dtype=cd, device=device)
    return PreparedTargets(topk_ids, a, b, labels, active, row_scale, n_active)
