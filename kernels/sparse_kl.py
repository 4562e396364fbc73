"""sparse_kl_loss: KL(teacher top-k + tail bucket || student) (+ CE) on [N, V] logits.

The autograd Function computes the loss and the gradient in one forward sweep (the
gradient is needed anyway and the logits are hot); backward only rescales the stored
gradient by grad_output, as Liger-Kernel's cross-entropy does.
"""

from __future__ import annotations

import torch
from ddk.kernels.dispatch import forward_core, resolve_backend, rows_ok_for_kernel, scale_grad_
from ddk.kernels.inputs import LossOptions, PreparedTargets, prepare_targets
from ddk.kernels.reduction import combine_rows, reduce_rows
from ddk.kernels.validate import check_logits

_REUSE_MSG = (
    "sparse_kl_loss: backward ran twice on one forward; the stored gradient was already "
    "consumed. Recompute the loss instead of using retain_graph=True."
)


def _bump_version(t: torch.Tensor) -> None:
    """Tell autograd `t` was modified in place (Triton writes are invisible to it)."""
    bump = getattr(torch.autograd.graph, "increment_version", None)
    if bump is not None:
        bump(t)


def is_one(grad_output: torch.Tensor) -> bool:
    """True if grad_output is the scalar 1 (the common loss.backward() case): skip a pass."""
    return grad_output.numel() == 1 and bool(grad_output.reshape(()) == 1)


class SparseKLFunction(torch.autograd.Function):
    """Forward computes loss + d(loss)/d(logits); backward rescales it by grad_output."""

    @staticmethod
    def forward(ctx, logits, prep: PreparedTargets, opts: LossOptions, backend: str, inplace: bool):
        needs_grad = ctx.needs_input_grad[0]
        work = logits.detach()
        if not rows_ok_for_kernel(work):
            work = work.contiguous()
        grad = None
        if needs_grad:
            grad = work if inplace else torch.empty_like(work)
        kl, ce = forward_core(
            backend,
            work,
            prep.topk_ids,
            prep.a,
            prep.b,
            prep.labels,
            prep.active,
            prep.row_scale,
            kl_weight=opts.kl_weight,
            ce_weight=opts.ce_weight,
            temperature=opts.temperature,
            ignore_index=opts.ignore_index,
            grad_out=grad,
        )
        if grad is not None and grad.data_ptr() == logits.data_ptr() and backend == "triton":
            _bump_version(logits)
        ctx.grad = grad
        ctx.backend = backend
        ctx.consumed = False
        loss = reduce_rows(combine_rows(kl, ce, opts), prep, opts)
        kl_part, ce_part = reduce_rows(kl, prep, opts), reduce_rows(ce, prep, opts)
        ctx.mark_non_differentiable(kl_part, ce_part)
        return loss, kl_part, ce_part

    @staticmethod
    def backward(ctx, grad_loss, _grad_kl, _grad_ce):
        grad = ctx.grad
        if grad is None:
            return None, None, None, None, None
        if ctx.consumed:
            raise RuntimeError(_REUSE_MSG)
        if not is_one(grad_loss):
            scale_grad_(ctx.backend, grad, grad_loss)
            ctx.consumed = True
        return grad, None, None, None, None


def sparse_kl_loss(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    tail_logprob: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    *,
    kl_weight: float = 1.0,
    ce_weight: float = 0.0,
    temperature: float = 1.0,
    ignore_index: int = -100,
    tail: str = "bucket",
    reduction: str = "mean",
    inplace_grad: bool = False,
    validate: bool = True,
    backend: str = "auto",
    return_components: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """kl_weight * T^2 * KL(teacher || student) + ce_weight * CE, per row, then reduced.

    Args:
        student_logits: [N, V] float32/bfloat16/float16 (float64 runs the PyTorch path).
        topk_ids: [N, k] int32/int64 cached teacher token ids, distinct within a row, < V.
        topk_logprobs: [N, k] teacher log-probs at temperature 1 (float16/float32).
        tail_logprob: [N] log(1 - sum exp(topk_logprobs)); computed from them if None.
        labels: [N] next-token ids for the CE term; rows equal to ignore_index contribute
            nothing to either term. None: every row counts (no CE allowed).
        kl_weight, ce_weight: weights of the two terms (>= 0).
        temperature: T > 0; the student is softmax(z / T), the KL is scaled by T^2 (docs).
        tail: "bucket" (default: k cached tokens + one tail bucket, teacher unscaled) or
            "renorm" (teacher top-k renormalised to 1, no tail bucket), or "none" (the
            entries are the whole target, weights summing to 1 with -inf on padding: a
            sampled teacher target; tail_logprob is ignored and temperature must be 1).
            Padding entries need distinct ids too (the sampled cache stores such ids).
        reduction: "mean" over non-ignored rows (0 when there are none), "sum" or "none"
            (per-row [N], ignored rows 0).
        inplace_grad: write the gradient into student_logits' buffer (saves N x V memory,
            like Liger). The logits are garbage after the call: use only when nothing else
            reads them (autograd is told on both paths, so a saved copy raises instead).
        validate: check ids / labels / log-prob values (one device sync); shapes, dtypes
            and options are always checked.
        backend: "auto" (Triton on CUDA, chunked PyTorch elsewhere), "triton" or "torch".
        return_components: also return the two terms for logging, from the same pass.

    Returns:
        fp32 (float64 for float64 logits) scalar, or [N] for reduction="none".
        With return_components: (loss, kl, ce), where kl is KL(teacher_T || student_T)
        without weight or T^2 and ce the cross-entropy, reduced like the loss and detached;
        ce is None when ce_weight == 0 (it is not computed then).
        Backward may run once per forward (the stored gradient is rescaled in place).

    Raises:
        SparseKLInputError: a shape, dtype, option or value is invalid (message says which).
    """
    n, v = check_logits(student_logits)
    opts = LossOptions(kl_weight, ce_weight, temperature, ignore_index, tail, reduction)
    prep = prepare_targets(
        n,
        v,
        student_logits.device,
        student_logits.dtype,
        topk_ids,
        topk_logprobs,
        tail_logprob,
        labels,
        opts,
        validate=validate,
    )
    be = resolve_backend(backend, student_logits)
    loss, kl, ce = SparseKLFunction.apply(student_logits, prep, opts, be, bool(inplace_grad))
    if return_components:
        return loss, kl, (ce if ce_weight > 0 else None)
    return loss
