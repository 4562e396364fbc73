"""The teacher side of the loss target: cached top-k log-probs (+ tail) -> coarsened target.

A sampled target (ids drawn from the teacher with weights count / N) comes in as the
same [N, k] log-probs with tail="none": the entries are the whole target.

Every backend (Triton, chunked PyTorch, the float64 oracle) receives the same prepared
target: `a` [N, k] = log p_i of the k cached tokens and `b` [N] = log p_tail of the tail
bucket, already tempered and (for tail="renorm") renormalised. The tensors are tiny
(N x k), so this is plain PyTorch. See docs/kernels.md for the maths.
"""

from __future__ import annotations

import math

import torch


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate at both ends (Maechler 2012); x >= 0 gives -inf."""
    x = x.clamp(max=0.0)
    small = x > -math.log(2.0)
    out = torch.where(small, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
    return torch.where(x == 0, torch.full_like(x, float("-inf")), out)


def tail_from_topk(topk_logprobs: torch.Tensor) -> torch.Tensor:
    """log(1 - sum_i exp(topk_logprobs[:, i])) per row; -inf when the top-k hold all the mass."""
    return log1mexp(torch.logsumexp(topk_logprobs, dim=-1))


def prepare_teacher_target(
    topk_logprobs: torch.Tensor,
    tail_logprob: torch.Tensor | None,
    *,
    vocab_size: int,
    temperature: float,
    tail: str,
    active: torch.Tensor | None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (a [N, k], b [N]): log-probs of the coarsened, tempered teacher, contiguous `dtype`.

    - tail="bucket", T == 1: a = topk_logprobs and b = tail_logprob unchanged (no renormalisation).
      b defaults to log(1 - sum exp(a)). If k == V the tail bucket is empty and dropped (b = -inf).
    - tail="bucket", T != 1: the (k + 1)-outcome distribution is tempered as a whole:
      a_i = a_i / T - Z, b = b / T - Z, Z = logsumexp([a / T, b / T]) (tail treated as one outcome).
    - tail="renorm": a = log_softmax(a / T), b = -inf (no tail bucket).
    - tail="none": a as given, b = -inf: the entries are the whole target (a sampled
      teacher target: log(count / N), -inf on padding; T is 1, validate.check_options).
    Rows that are not `active` (ignored labels) get a = b = -inf so that garbage there
    (NaN, padding) can never leak into the loss or the gradient.
    """
    n, k = topk_logprobs.shape
    a = topk_logprobs.to(dtype)
    if tail == "renorm":
        a = torch.log_softmax(a / temperature, dim=-1)
        b = torch.full((n,), float("-inf"), dtype=dtype, device=a.device)
    elif tail == "none":
        b = torch.full((n,), float("-inf"), dtype=dtype, device=a.device)
    else:
        if k >= vocab_size:
            b = torch.full((n,), float("-inf"), dtype=dtype, device=a.device)
        elif tail_logprob is None:
            b = tail_from_topk(a)
        else:
            b = tail_logprob.to(dtype)
        if temperature != 1.0:
            a = a / temperature
            b = b / temperature
            z = torch.logsumexp(torch.cat([a, b.unsqueeze(-1)], dim=-1), dim=-1)
            a = a - z.unsqueeze(-1)
            b = b - z
    if active is not None:
        a = a.masked_fill(~active.unsqueeze(-1), float("-inf"))
        b = b.masked_fill(~active, float("-inf"))
    return a.contiguous(), b.contiguous()
