"""Chunked pure-PyTorch forward + gradient of the sparse KL (+CE) loss (CPU path).

Works on any device and dtype (float64 too, for gradcheck). Rows are processed in chunks
of about CHUNK_ELEMENTS logits, so the extra memory is a few chunk-sized fp32 buffers,
never N x V. The gradient is computed in the same sweep and written into `grad_out`
(which may be the logits buffer itself: in-place mode). Maths: docs/kernels.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# ~64 MiB of fp32 per chunk buffer: large enough to amortise op overhead on CPU.
CHUNK_ELEMENTS = 1 << 24


def compute_dtype(logits_dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (tests, gradcheck); everything else is computed in float32."""
    return torch.float64 if logits_dtype == torch.float64 else torch.float32


@dataclass
class _StudentBuckets:
    """One chunk's student softmax q = softmax(x / T) seen as the k cached ids + one tail bucket."""

    zc: torch.Tensor  # [c, k] raw logits of the cached ids
    ex: torch.Tensor  # [c, V] exp((x_j - m) / T) on non-cached ids, 0 on cached ids
    d: torch.Tensor  # [c] sum of ex (0: every id is cached, no tail)
    big_sh: torch.Tensor  # [c] raw row max over all ids (0 where -inf)
    lse_rel: torch.Tensor  # [c] log sum_j exp((x_j - big) / T)
    logq_c: torch.Tensor  # [c, k] log q of the cached ids
    logq_t: torch.Tensor  # [c] log q_t, the student's tail bucket


@dataclass
class _StudentCE:
    """What the CE term of one chunk leaves for its gradient."""

    lab: torch.Tensor  # [c] labels (0 on inactive rows)
    lse1_rel: torch.Tensor  # [c] log sum_j exp(x_j - big), the untempered normaliser
    x1: torch.Tensor | None  # [c, V] exp(x - big), untempered numerators; None at T == 1


def _student_buckets(x: torch.Tensor, ids: torch.Tensor, T: float) -> _StudentBuckets:
    """log q of the cached ids and of the tail bucket, for raw logits x [c, V]."""
    ninf = float("-inf")
    inv_t = 1.0 / T
    zc = torch.gather(x, 1, ids)  # [c, k] raw cached logits
    # Non-cached logits only: the tail sum is computed directly (no 1 - sum q cancellation).
    # Differences to the row max are taken on raw logits before scaling by 1/T, and the
    # (max, log-sum) pair is kept apart, so +-1e4 logits lose no precision in fp32.
    tail_x = x.scatter(1, ids, ninf)
    m = tail_x.amax(-1)  # raw tail max (-inf if every id is cached)
    m_sh = torch.where(torch.isfinite(m), m, 0.0)
    ex = tail_x.sub_(m_sh.unsqueeze(-1))
    if T != 1.0:
        ex.mul_(inv_t)
    ex = ex.exp_()  # exp((x_j - m) / T) on non-cached ids, 0 on cached ids
    d = ex.sum(-1)
    big = torch.maximum(m, zc.amax(-1))
    big_sh = torch.where(torch.isfinite(big), big, 0.0)
    zc_rel = (zc - big_sh.unsqueeze(-1)) * inv_t
    lse_rel = torch.log(d * torch.exp((m - big_sh) * inv_t) + torch.exp(zc_rel).sum(-1))
    logq_c = zc_rel - lse_rel.unsqueeze(-1)
    logq_t = (m - big_sh) * inv_t + torch.log(d) - lse_rel
    return _StudentBuckets(zc, ex, d, big_sh, lse_rel, logq_c, logq_t)


def _student_ce(
    x: torch.Tensor, lab: torch.Tensor, st: _StudentBuckets, T: float
) -> tuple[torch.Tensor, _StudentCE]:
    """Per-row CE = logsumexp(x) - x[label] on the untempered logits (active rows or not)."""
    zy = torch.gather(x, 1, lab.unsqueeze(-1)).squeeze(-1)
    x1 = None
    if T == 1.0:
        lse1_rel = st.lse_rel
    else:
        x1 = torch.exp(x - st.big_sh.unsqueeze(-1))  # untempered softmax numerators
        lse1_rel = torch.log(x1.sum(-1))
    return (st.big_sh - zy) + lse1_rel, _StudentCE(lab, lse1_rel, x1)


def _chunk_grad(
    st: _StudentBuckets,
    ce: _StudentCE | None,
    p: torch.Tensor,
    pt: torch.Tensor,
    act: torch.Tensor,
    scale: torch.Tensor,
    ids: torch.Tensor,
    *,
    kl_weight: float,
    ce_weight: float,
    T: float,
) -> torch.Tensor:
    """d(loss)/d(x) of one chunk [c, V], built in st.ex's buffer; 0 on inactive rows."""
    sc = torch.where(act, scale, 0.0)
    ckl = sc * (kl_weight * T)  # d(T^2 KL)/dz = T * d KL/d(z/T)
    cce = sc * ce_weight if ce is not None else torch.zeros_like(sc)
    has_tail = st.d > 0
    qt = torch.exp(st.logq_t)
    pt_eff = torch.where(has_tail, pt, 0.0)
    mass = p.sum(-1) + pt_eff  # teacher mass M (1 up to the rounding of the cached values)
    c_tail = ckl * (mass * qt - pt_eff)
    if ce is None or T == 1.0:  # at T = 1 the CE softmax is q_j = r_j * q_t
        c_tail = c_tail + cce * qt
    # r_j = q_j / q_t = ex_j / d on non-cached ids (0 on cached ids)
    g = st.ex.mul_(torch.where(has_tail, c_tail / st.d, 0.0).unsqueeze(-1))
    if ce is not None and T != 1.0:
        g.add_(ce.x1.mul_((cce / ce.x1.sum(-1)).unsqueeze(-1)))
    qc = torch.exp(st.logq_c)
    gc = ckl.unsqueeze(-1) * (mass.unsqueeze(-1) * qc - p)
    if ce is not None:
        if T == 1.0:
            q1c = qc
        else:
            q1c = torch.exp(st.zc - st.big_sh.unsqueeze(-1) - ce.lse1_rel.unsqueeze(-1))
        gc = gc + cce.unsqueeze(-1) * q1c
    g.scatter_(1, ids, gc)
    if ce is not None:
        g.scatter_add_(1, ce.lab.unsqueeze(-1), -cce.unsqueeze(-1))
    g.masked_fill_(~act.unsqueeze(-1), 0.0)  # also clears NaN from junk in ignored rows
    return g


def sparse_kl_forward_torch(
    logits: torch.Tensor,
    topk_ids: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    labels: torch.Tensor | None,
    active: torch.Tensor,
    row_scale: torch.Tensor,
    *,
    kl_weight: float,
    ce_weight: float,
    temperature: float,
    grad_out: torch.Tensor | None,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (kl, ce) in the compute dtype; if grad_out is given, write d(loss)/d(logits) there.

    The gradient is that of sum_rows row_scale * (kl_weight * T^2 * kl + ce_weight * ce),
    zero on inactive rows. `a`, `b` are the prepared teacher (target.prepare_teacher_target).
    grad_out may alias `logits`: each chunk is read completely before it is overwritten.
    """
    n, v = logits.shape
    cd = compute_dtype(logits.dtype)
    T = float(temperature)
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_ELEMENTS // max(v, 1))
    kl_rows = torch.zeros(n, dtype=cd, device=logits.device)
    ce_rows = torch.zeros(n, dtype=cd, device=logits.device)
    has_ce = ce_weight > 0 and labels is not None
    scale = row_scale.to(cd)
    for s in range(0, n, chunk_rows):
        e = min(n, s + chunk_rows)
        act = active[s:e]
        x = logits[s:e].to(cd)  # raw logits (no copy when already cd)
        ids = torch.where(act.unsqueeze(-1), topk_ids[s:e].long(), 0)
        st = _student_buckets(x, ids, T)
        ac, bc = a[s:e], b[s:e]
        p, pt = torch.exp(ac), torch.exp(bc)
        kl = torch.where(p > 0, p * (ac - st.logq_c), 0.0).sum(-1)
        kl = kl + torch.where(pt > 0, pt * (bc - st.logq_t), 0.0)
        kl_rows[s:e] = torch.where(act, kl, 0.0)
        ce = None
        if has_ce:
            lab = torch.where(act, labels[s:e].long(), 0)
            ce_row, ce = _student_ce(x, lab, st, T)
            ce_rows[s:e] = torch.where(act, ce_row, 0.0)
        if grad_out is not None:
            g = _chunk_grad(
                st, ce, p, pt, act, scale, ids, kl_weight=kl_weight, ce_weight=ce_weight, T=T
            )
            grad_out[s:e].copy_(g)
    return kl_rows, ce_rows
