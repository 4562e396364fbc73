"""Triton kernels for the sparse KL (+CE) loss: one program per row, online softmax in fp32.

Forward kernel, per row (see docs/kernels.md for the maths and the memory traffic):
  0. ignored row (label == ignore_index): write a zero gradient row, loss 0, return.
  1. gather the k cached logits into registers, then overwrite the k cached positions of
     the row with -inf ("sentinels"), so that
  2. pass 1 (online max + sum-exp over the row) sums only the NON-cached tokens: the tail
     log-sum-exp lse_t is exact, with no 1 - sum(q_i) cancellation when the student is
     confident; the full lse is lse_t combined with the k cached logits in registers.
     Only then are the teacher row and the label logit read, and the loss, the k cached
     gradients and the label's computed, so that little is live across the two sweeps
     (ptxas spilled such values: bench/gpu/aot_compile.py).
  3. pass 2 writes the gradient of every non-cached token (cached ones read -inf -> 0):
     g_j = exp(z_j/T - lse_t) * (c_kl * (M q_t - p_t) + c_ce * q_t)   (one exp per element)
  4. the k cached gradients and the label's are stored (ids read again).
  5. if the gradient goes to a separate buffer (or there is none) the k sentinels are
     restored from registers, bit-exact, so the caller's logits are unchanged on return.
Only triton.language APIs that have been stable for years are used (load/store/where/
max/sum/exp/log/debug_barrier), so the same code runs on triton 3.x and the interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Launch shape (docs/kernels.md, "Launch configuration"): one program per row sweeps it in
# blocks of at most MAX_BLOCK_V columns, ELEMENTS_PER_THREAD of them per thread. Chosen with
# bench/gpu/aot_compile.py so that no variant spills on sm_80/sm_90 and every one keeps
# registers in hand below its ceiling; Liger's 32768 x 32 warps (32 per thread) spilled on
# unaligned vocabularies.
MAX_BLOCK_V = 8192
ELEMENTS_PER_THREAD = 16
MIN_WARPS, MAX_WARPS = 4, 16
# The k cached entries of a row live in one BLOCK_K vector: one size for every k up to it,
# so k adds no compile variants (the vector is at most one element per thread).
MIN_BLOCK_K = 128


# Longer than the ~80-line norm on purpose: one fused kernel is one function. Its steps
# (0-5 of the module docstring, marked inside) share the registers holding the cached
# logits and the row statistics from the gather to the last store.
@triton.jit(do_not_specialize=["IDS_stride", "A_stride", "K", "ignore_index"])
def _sparse_kl_fwd_kernel(
    X_ptr,
    X_stride,
    G_ptr,
    G_stride,
    IDS_ptr,
    IDS_stride,
    A_ptr,
    A_stride,
    B_ptr,
    Y_ptr,
    SCALE_ptr,
    KL_ptr,
    CE_ptr,
    n_cols,
    K,
    ignore_index,
    inv_T,
    kl_coef,
    ce_weight,
    HAS_LABELS: tl.constexpr,
    HAS_CE: tl.constexpr,
    UNIT_T: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    RESTORE: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    X_ptr += row * X_stride
    G_ptr += row * G_stride
    NEG_INF = float("-inf")

    y = 0
    if HAS_LABELS:
        y = tl.load(Y_ptr + row).to(tl.int64)
        if y == ignore_index:
            tl.store(KL_ptr + row, 0.0)
            tl.store(CE_ptr + row, 0.0)
            if COMPUTE_GRAD:
                for i in range(0, n_cols, BLOCK_V):
                    offs = i + tl.arange(0, BLOCK_V)
                    tl.store(G_ptr + offs, 0.0, mask=offs < n_cols)
            return

    # 1. cached entries, kept in registers (raw, untempered)
    kofs = tl.arange(0, BLOCK_K)
    kmask = kofs < K
    ids = tl.load(IDS_ptr + row * IDS_stride + kofs, mask=kmask, other=0).to(tl.int64)
    zc_raw = tl.load(X_ptr + ids, mask=kmask, other=0.0)
    zc = tl.where(kmask, zc_raw.to(tl.float32), NEG_INF)
    tl.debug_barrier()  # every warp has read zc before any sentinel lands
    tl.store(X_ptr + ids, NEG_INF, mask=kmask)
    tl.debug_barrier()  # sentinels visible to every warp before pass 1

    # 2. pass 1: online max (raw) and sum-exp over the non-cached tokens (cached read -inf).
    # Differences to the max are taken on raw logits, then scaled by 1/T; (max, sum) are
    # kept apart so +-1e4 logits lose no precision in fp32.
    m = NEG_INF
    d = 0.0  # sum_j exp((x_j - m) / T) over non-cached j
    d1 = 0.0  # sum_j exp(x_j - m), only for CE at T != 1
    for i in range(0, n_cols, BLOCK_V):
        offs = i + tl.arange(0, BLOCK_V)
        x = tl.load(X_ptr + offs, mask=offs < n_cols, other=NEG_INF).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, 0))
        sh = tl.where(m_new == NEG_INF, 0.0, m_new)
        if UNIT_T:
            d = d * tl.exp(m - sh) + tl.sum(tl.exp(x - sh), 0)
        else:
            d = d * tl.exp((m - sh) * inv_T) + tl.sum(tl.exp((x - sh) * inv_T), 0)
            if HAS_CE:
                d1 = d1 * tl.exp(m - sh) + tl.sum(tl.exp(x - sh), 0)
        m = m_new

    # The teacher row and the label logit are read only now, so that nothing but the row
    # statistics is live across pass 1 (ptxas spilled such long-lived values). A cached
    # label's logit comes from registers (its slot holds a sentinel); any other is intact.
    a = tl.load(A_ptr + row * A_stride + kofs, mask=kmask, other=NEG_INF)
    b = tl.load(B_ptr + row)
    zy = 0.0
    n_hits = 0  # 1 if the label is one of the cached ids
    if HAS_CE:
        hit = kmask & (ids == y)
        n_hits = tl.sum(hit.to(tl.int32), 0)
        zy_mem = tl.load(X_ptr + y, mask=n_hits == 0, other=0.0).to(tl.float32)
        zy = tl.where(n_hits > 0, tl.sum(tl.where(hit, zc, 0.0), 0), zy_mem)

    has_tail = d > 0.0
    m_sh = tl.where(has_tail, m, 0.0)
    ld_sh = tl.where(has_tail, tl.log(d), 0.0)
    # full softmax normaliser: tail statistics combined with the k cached logits
    big = tl.maximum(m, tl.max(zc, 0))
    big_sh = tl.where(big == NEG_INF, 0.0, big)
    if UNIT_T:
        zc_rel = zc - big_sh
        tail_w = tl.exp(m - big_sh)
    else:
        zc_rel = (zc - big_sh) * inv_T
        tail_w = tl.exp((m - big_sh) * inv_T)
    lse_rel = tl.log(d * tail_w + tl.sum(tl.exp(zc_rel), 0))
    logq_c = zc_rel - lse_rel
    if UNIT_T:
        logq_t = (m - big_sh) + tl.log(d) - lse_rel
    else:
        logq_t = (m - big_sh) * inv_T + tl.log(d) - lse_rel

    # KL(teacher || student) on the k + 1 buckets; terms with zero teacher mass are 0
    p = tl.exp(a)
    kl_terms = tl.where(p > 0.0, p * (a - logq_c), 0.0)
    pt = tl.exp(b)
    kl = tl.sum(kl_terms, 0) + tl.where(pt > 0.0, pt * (b - logq_t), 0.0)
    tl.store(KL_ptr + row, kl)

    lse1_rel = lse_rel  # log sum exp(x - big) of the untempered logits (CE)
    if HAS_CE:
        if not UNIT_T:
            lse1_rel = tl.log(d1 * tl.exp(m - big_sh) + tl.sum(tl.exp(zc - big_sh), 0))
        tl.store(CE_ptr + row, (big_sh - zy) + lse1_rel)
    else:
        tl.store(CE_ptr + row, 0.0)

    if COMPUTE_GRAD:
        scale = tl.load(SCALE_ptr).to(tl.float32)
        ckl = scale * kl_coef
        cce = scale * ce_weight
        qt = tl.exp(logq_t)
        pt_eff = tl.where(has_tail, pt, 0.0)
        mass = tl.sum(p, 0) + pt_eff  # teacher mass M (1 up to rounding of the cached values)
        c_tail = ckl * (mass * qt - pt_eff)
        if HAS_CE and UNIT_T:
            c_tail += cce * qt
        # 4a. the k cached gradients and the label's, computed now (stored after pass 2,
        #     which writes 0 over the sentinels) so that only they stay live across pass 2
        qc = tl.exp(logq_c)
        gc = ckl * (mass * qc - p)
        gy = 0.0
        if HAS_CE:
            if UNIT_T:
                gc += cce * qc
            else:
                gc += cce * tl.exp(zc - big_sh - lse1_rel)
            gc -= tl.where(hit, cce, 0.0)
            # label outside the cached ids: its gradient is the tail formula minus c_ce
            if UNIT_T:
                gy = tl.exp(zy - m_sh - ld_sh) * c_tail - cce
            else:
                gy = tl.exp((zy - m_sh) * inv_T - ld_sh) * c_tail
                gy += cce * tl.exp(zy - big_sh - lse1_rel) - cce
        gc = gc.to(G_ptr.dtype.element_ty)
        # 3. pass 2: gradient of the non-cached tokens (cached ones read -inf -> 0)
        #    g_j = r_j * c_tail with r_j = q_j / q_t = exp((x_j - m) / T - log d)
        for i in range(0, n_cols, BLOCK_V):
            offs = i + tl.arange(0, BLOCK_V)
            msk = offs < n_cols
            x = tl.load(X_ptr + offs, mask=msk, other=NEG_INF).to(tl.float32)
            if UNIT_T:
                g = tl.exp(x - m_sh - ld_sh) * c_tail
            else:
                g = tl.exp((x - m_sh) * inv_T - ld_sh) * c_tail
                if HAS_CE:
                    g += cce * tl.exp(x - big_sh - lse1_rel)
            tl.store(G_ptr + offs, g.to(G_ptr.dtype.element_ty), mask=msk)
    tl.debug_barrier()  # every sweep done before the k cached slots are written
    ids = tl.load(IDS_ptr + row * IDS_stride + kofs, mask=kmask, other=0).to(tl.int64)
    if COMPUTE_GRAD:
        # 4b. store the cached ids' and the label's gradients
        tl.store(G_ptr + ids, gc, mask=kmask)
        if HAS_CE:
            tl.store(G_ptr + y, gy.to(G_ptr.dtype.element_ty), mask=n_hits == 0)

    # 5. put the original cached logits back when the gradient did not overwrite them
    if RESTORE:
        tl.store(X_ptr + ids, zc_raw, mask=kmask)


@triton.jit
def _scale_rows_kernel(G_ptr, G_stride, S_ptr, S_stride, n_cols, BLOCK_V: tl.constexpr):
    """G[row, :] *= S[row * S_stride] (S_stride = 0: one scalar for all rows)."""
    row = tl.program_id(0).to(tl.int64)
    G_ptr += row * G_stride
    s = tl.load(S_ptr + row * S_stride).to(tl.float32)
    for i in range(0, n_cols, BLOCK_V):
        offs = i + tl.arange(0, BLOCK_V)
        msk = offs < n_cols
        g = tl.load(G_ptr + offs, mask=msk, other=0.0).to(tl.float32)
        tl.store(G_ptr + offs, (g * s).to(G_ptr.dtype.element_ty), mask=msk)


def is_interpreted() -> bool:
    """True if this module was imported with TRITON_INTERPRET=1 (kernels run on CPU tensors)."""
    return type(_sparse_kl_fwd_kernel).__name__ == "InterpretedFunction"


def launch_config(n_cols: int) -> tuple[int, int]:
    """(BLOCK_V, num_warps) for rows of n_cols: ELEMENTS_PER_THREAD columns per thread."""
    block_v = min(MAX_BLOCK_V, triton.next_power_of_2(max(n_cols, 16)))
    warps = block_v // (32 * ELEMENTS_PER_THREAD)
    return block_v, min(MAX_WARPS, max(MIN_WARPS, warps))


def sparse_kl_forward_triton(
    logits: torch.Tensor,
    topk_ids: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    labels: torch.Tensor | None,
    row_scale: torch.Tensor,
    *,
    kl_weight: float,
    ce_weight: float,
    temperature: float,
    ignore_index: int,
    grad_out: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel; returns per-row fp32 (kl, ce). Same contract as the torch path.

    `logits` must have unit column stride and non-overlapping rows (the kernel writes
    sentinels into each row). grad_out is None (no gradient), `logits` itself (in place)
    or a separate [N, V] buffer with unit column stride.
    """
    n, v = logits.shape
    k = topk_ids.shape[1]
    kl_rows = torch.empty(n, dtype=torch.float32, device=logits.device)
    ce_rows = torch.empty(n, dtype=torch.float32, device=logits.device)
    if n == 0:
        return kl_rows, ce_rows
    has_labels = labels is not None
    has_ce = has_labels and ce_weight > 0
    compute_grad = grad_out is not None
    inplace = compute_grad and grad_out.data_ptr() == logits.data_ptr()
    g = grad_out if compute_grad else logits  # dummy pointer when no gradient
    block_v, num_warps = launch_config(v)
    _sparse_kl_fwd_kernel[(n,)](
        logits,
        logits.stride(0),
        g,
        g.stride(0),
        topk_ids,
        topk_ids.stride(0),
        a,
        a.stride(0),
        b,
        labels if has_labels else b,
        row_scale,
        kl_rows,
        ce_rows,
        v,
        k,
        ignore_index,
        1.0 / float(temperature),
        float(kl_weight) * float(temperature),
        float(ce_weight),
        HAS_LABELS=has_labels,
        HAS_CE=has_ce,
        UNIT_T=float(temperature) == 1.0,
        COMPUTE_GRAD=compute_grad,
        RESTORE=not inplace,
        BLOCK_V=block_v,
        BLOCK_K=max(MIN_BLOCK_K, triton.next_power_of_2(k)),
        num_warps=num_warps,
    )
    return kl_rows, ce_rows


def scale_rows_triton(grad: torch.Tensor, scale: torch.Tensor) -> None:
    """In place: grad *= scale, with scale a 0-d/1-element tensor or one value per row."""
    n, v = grad.shape
    if n == 0:
        return
    s = scale.reshape(-1).contiguous()
    s_stride = 0 if s.numel() == 1 else 1
    block_v, num_warps = launch_config(v)
    _scale_rows_kernel[(n,)](
        grad, grad.stride(0), s, s_stride, v, BLOCK_V=block_v, num_warps=num_warps
    )
