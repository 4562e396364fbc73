"""fused_linear_sparse_kl_loss: the sparse KL (+CE) loss on hidden @ lm_head.T, chunked by rows.

Never materialises the N x V logits: for each chunk of rows it computes the chunk's logits,
runs the same forward core as sparse_kl_loss with the gradient written in place into the
chunk buffer, and immediately turns that into the chunk's d/d(hidden) and the running
d/d(weight). Extra memory: one chunk of logits + the two gradients. d/d(weight) is
accumulated across chunks in the weight dtype with addmm (as Liger does): for bf16 that is
one bf16 rounding per chunk (~10 chunks at N=8192, V=151936). weight_grad_fp32=True
accumulates in fp32 instead (+V x H x 4 bytes and a transient per chunk; slower).
"""

from __future__ import annotations

import torch
from ddk.kernels.dispatch import forward_core, resolve_backend
from ddk.kernels.errors import SparseKLInputError
from ddk.kernels.inputs import LossOptions, PreparedTargets, prepare_targets
from ddk.kernels.reduction import combine_rows, reduce_rows
from ddk.kernels.sparse_kl import is_one

# Aim for about this many bytes of logits per chunk (64 MiB): still hundreds of rows at
# today's vocabularies (192 at V = 151936 in bf16), enough for efficient GEMMs, and small
# next to the N x V logits it replaces. The CPU path allocates about two chunk-sized fp32
# buffers on top of the chunk, so 256 MiB chunks cost ~270 MiB more per training step at
# V = 49152 than these (docs/benchmarks.md, fused LM head).
CHUNK_BYTES = 1 << 26


def default_chunk_rows(n: int, v: int, dtype: torch.dtype) -> int:
    """Rows per chunk: ~CHUNK_BYTES of logits, a multiple of 64 rows, at most n."""
    rows = CHUNK_BYTES // (max(v, 1) * torch.finfo(dtype).bits // 8)
    rows = max(64, rows // 64 * 64)
    return max(1, min(n, rows))


class FusedLinearSparseKLFunction(torch.autograd.Function):
    """Forward computes loss, d/d(hidden) and d/d(weight) chunk by chunk; backward rescales."""

    @staticmethod
    def forward(
        ctx,
        hidden,
        weight,
        prep: PreparedTargets,
        opts: LossOptions,
        backend: str,
        chunk_rows: int,
        weight_grad_fp32: bool,
    ):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n = hidden.shape[0]
        hidden, weight = hidden.detach(), weight.detach()
        grad_h = torch.empty_like(hidden) if need_h else None
        acc_dtype = (
            torch.float32 if weight_grad_fp32 and weight.element_size() < 4 else weight.dtype
        )
        grad_w = (
            torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if need_w else None
        )
        kl_rows = torch.zeros(n, dtype=prep.a.dtype, device=hidden.device)
        ce_rows = torch.zeros_like(kl_rows)
        wt = weight.t()
        for s in range(0, n, chunk_rows):
            e = min(n, s + chunk_rows)
            h = hidden[s:e]
            logits = h @ wt  # [c, V], contiguous, ours: the gradient may overwrite it
            kl, ce = forward_core(
                backend,
                logits,
                prep.topk_ids[s:e],
                prep.a[s:e],
                prep.b[s:e],
                prep.labels[s:e] if prep.labels is not None else None,
                prep.active[s:e],
                prep.row_scale,
                kl_weight=opts.kl_weight,
                ce_weight=opts.ce_weight,
                temperature=opts.temperature,
                ignore_index=opts.ignore_index,
                grad_out=logits if (need_h or need_w) else None,
            )
            kl_rows[s:e] = kl
            ce_rows[s:e] = ce
            if need_h:
                torch.mm(logits, weight, out=grad_h[s:e])
            if need_w:
                if acc_dtype == logits.dtype:
                    grad_w.addmm_(logits.t(), h)
                else:
                    grad_w += (logits.t() @ h).to(acc_dtype)
            del logits
        if grad_w is not None and grad_w.dtype != weight.dtype:
            grad_w = grad_w.to(weight.dtype)
        ctx.grads = (grad_h, grad_w)
        ctx.consumed = False
        loss = reduce_rows(combine_rows(kl_rows, ce_rows, opts), prep, opts)
        kl_part, ce_part = reduce_rows(kl_rows, prep, opts), reduce_rows(ce_rows, prep, opts)
        ctx.mark_non_differentiable(kl_part, ce_part)
        return loss, kl_part, ce_part

    @staticmethod
    def backward(ctx, grad_loss, _grad_kl, _grad_ce):
        grad_h, grad_w = ctx.grads
        if ctx.consumed:
            raise RuntimeError(
                "fused_linear_sparse_kl_loss: backward ran twice on one forward; recompute the "
                "loss instead of using retain_graph=True."
            )
        if not is_one(grad_loss):
            s = float(grad_loss)
            for g in (grad_h, grad_w):
                if g is not None:
                    g.mul_(s)
            ctx.consumed = True
        return grad_h, grad_w, None, None, None, None, None


def _check_fused_args(
    hidden: torch.Tensor, lm_head_weight: torch.Tensor, reduction: str, chunk_rows: int | None
) -> None:
    """What only the fused variant checks (prepare_targets does the rest): hidden and weight
    shapes, dtype and device, reduction, chunk_rows."""
    if hidden.dim() != 2 or lm_head_weight.dim() != 2:
        raise SparseKLInputError(
            f"hidden must be [N, H] and lm_head_weight [V, H]; got {tuple(hidden.shape)} and "
            f"{tuple(lm_head_weight.shape)}"
        )
    if hidden.shape[1] != lm_head_weight.shape[1]:
        raise SparseKLInputError(
            f"hidden size mismatch: hidden is [N, {hidden.shape[1]}] but lm_head_weight is "
            f"[V, {lm_head_weight.shape[1]}]"
        )
    if hidden.dtype != lm_head_weight.dtype:
        raise SparseKLInputError(
            f"hidden ({hidden.dtype}) and lm_head_weight ({lm_head_weight.dtype}) must share a dtype"
        )
    if hidden.device != lm_head_weight.device:
        raise SparseKLInputError(
            f"hidden is on {hidden.device} but lm_head_weight is on {lm_head_weight.device}"
        )
    if not hidden.dtype.is_floating_point or hidden.dtype not in (
        torch.float32,
        torch.bfloat16,
        torch.float16,
        torch.float64,
    ):
        raise SparseKLInputError(
            f"hidden must be float32/bfloat16/float16/float64, got {hidden.dtype}"
        )
    if reduction == "none":
        raise SparseKLInputError(
            "fused_linear_sparse_kl_loss supports reduction='mean' or 'sum' only; use "
            "sparse_kl_loss on explicit logits for per-row losses"
        )
    if chunk_rows is not None and (not isinstance(chunk_rows, int) or chunk_rows < 1):
        raise SparseKLInputError(f"chunk_rows must be a positive int, got {chunk_rows!r}")


def fused_linear_sparse_kl_loss(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
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
    chunk_rows: int | None = None,
    weight_grad_fp32: bool = False,
    validate: bool = True,
    backend: str = "auto",
    return_components: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """sparse_kl_loss(hidden @ lm_head_weight.T, ...) without materialising the N x V logits.

    hidden [N, H] and lm_head_weight [V, H] share one float dtype and device; the logits
    of each chunk are computed in that dtype (as the model's LM head would). Options as in
    sparse_kl_loss except: reduction is "mean" or "sum" (per-row weights cannot be applied
    to d/d(weight) after the fact), chunk_rows (default ~64 MiB of logits per chunk) and
    weight_grad_fp32 (accumulate d/d(weight) across chunks in fp32 for 16-bit weights;
    default False: accumulate in the weight dtype, one rounding per chunk).
    No bias (LM heads of current models have none). Backward may run once per forward.
    return_components: also return (kl, ce) from the same pass, as sparse_kl_loss does.
    """
    _check_fused_args(hidden, lm_head_weight, reduction, chunk_rows)
    n, v = hidden.shape[0], lm_head_weight.shape[0]
    opts = LossOptions(kl_weight, ce_weight, temperature, ignore_index, tail, reduction)
    prep = prepare_targets(
        n,
        v,
        hidden.device,
        hidden.dtype,
        topk_ids,
        topk_logprobs,
        tail_logprob,
        labels,
        opts,
        validate=validate,
        logits_name="hidden",
    )
    be = resolve_backend(backend, hidden)
    rows = chunk_rows or default_chunk_rows(n, v, hidden.dtype)
    loss, kl, ce = FusedLinearSparseKLFunction.apply(
        hidden, lm_head_weight, prep, opts, be, rows, bool(weight_grad_fp32)
    )
    if return_components:
        return loss, kl, (ce if ce_weight > 0 else None)
    return loss
