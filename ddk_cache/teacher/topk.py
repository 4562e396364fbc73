"""Turn teacher logits into the cached quantities (top-k, tail log-mass, target log-prob).

All backends that see full logits go through `scores_from_logits`, so the maths of what
is stored lives in one place.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from ddk.cache.teacher.backend import TeacherScores
from ddk.cache.teacher.sampled import SampleSpec, sampled_from_logits


class ScratchBuffer:
    """A reusable fp32 buffer for the extraction's full-size [B, T, V] temporary.

    On CPU a fresh allocation that large is fresh pages from the kernel every batch, and
    faulting them in cost about as much as the exp written into them (bench_cache_job.py).
    Kept only on CPU: CUDA's caching allocator already reuses the memory, and a buffer held
    between batches would add to the peak of the next forward pass.
    """

    def __init__(self) -> None:
        self._buf: torch.Tensor | None = None

    def get(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        n = math.prod(shape)
        if device.type != "cpu":
            return torch.empty(shape, dtype=torch.float32, device=device)
        if self._buf is None or self._buf.numel() < n:
            self._buf = None  # the old one is freed before the larger one is allocated
            self._buf = torch.empty(n, dtype=torch.float32)
        return self._buf[:n].view(shape)


def logsumexp_into(x: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """torch.logsumexp(x, -1), bitwise: the same amax, sub, exp and sum, with the
    full-size temporary written into `scratch` (x's shape, fp32) instead of a new tensor.

    Bitwise equality with torch.logsumexp is what keeps the stored bytes those of earlier
    ddk versions; tests/cache/teacher/test_topk_extraction.py checks it on this torch.
    """
    m = torch.amax(x, dim=-1, keepdim=True)
    m.masked_fill_(m.abs() == float("inf"), 0)
    torch.sub(x, m, out=scratch).exp_()
    return scratch.sum(-1).log_().add_(m.squeeze(-1))


def scores_from_logits(logits: torch.Tensor, input_ids: torch.Tensor, k: int,
                       scratch: ScratchBuffer | None = None) -> TeacherScores:
    """Top-k log-probs, tail log-mass and next-token log-prob from [B, L, V] logits.

    Only positions 0..L-2 are scored (see teacher/backend.py). Everything is computed in fp32:
    the tail log-mass is logsumexp over the non-top-k logits minus the full logsumexp,
    which stays exact when the top-k hold almost all the mass (no 1 - sum(p) cancellation).
    The logits tensor is consumed: the top-k entries are overwritten with -inf in place.
    A backend scoring many batches passes one `scratch` for all of them.
    """
    logits = logits[:, :-1, :]  # a view: no copy of the [B, L - 1, V] block
    if logits.dtype != torch.float32:
        logits = logits.float()
    targets = input_ids[:, 1:].to(logits.device, torch.int64)
    buf = (scratch or ScratchBuffer()).get(logits.shape, logits.device)
    lse = logsumexp_into(logits, buf)  # [B, T]
    target_logit = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)
    top_vals, top_ids = torch.topk(logits, k, dim=-1, largest=True, sorted=True)
    if k < logits.shape[-1]:
        logits.scatter_(-1, top_ids, float("-inf"))
        tail = logsumexp_into(logits, buf) - lse
    else:
        tail = torch.full_like(lse, float("-inf"))
    return TeacherScores(
        topk_ids=top_ids.to(torch.int32).cpu().numpy(),
        topk_logprobs=(top_vals - lse.unsqueeze(-1)).cpu().numpy().astype(np.float32),
        tail_logmass=tail.cpu().numpy().astype(np.float32),
        target_logprob=(target_logit - lse).cpu().numpy().astype(np.float32),
    )


def sampled_scores_from_logits(logits: torch.Tensor, input_ids: torch.Tensor,
                               sample: SampleSpec) -> TeacherScores:
    """The sampled target (teacher/sampled.py) and the exact next-token log-prob from
    [B, L, V] logits; positions 0..L-2 as in `scores_from_logits`."""
    logits = logits[:, :-1, :].float()
    targets = input_ids[:, 1:].to(logits.device, torch.int64)
    lse = torch.logsumexp(logits, dim=-1)
    target_logit = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)
    sample_ids, sample_counts = sampled_from_logits(logits, sample)
    return TeacherScores(topk_ids=None, topk_logprobs=None, tail_logmass=None,
                         target_logprob=(target_logit - lse).cpu().numpy().astype(np.float32),
                         sample_ids=sample_ids, sample_counts=sample_counts)


def tail_from_topk_logprobs(topk_logprobs: np.ndarray) -> np.ndarray:
    """log(1 - sum exp(topk)) from normalised top-k log-probs alone (engines that return no logits).

    Computed in float64 as log(-expm1(logsumexp(topk))); its accuracy is limited by the
    rounding of the given log-probs when the tail mass is tiny (documented in docs/).
    """
    lp = topk_logprobs.astype(np.float64)
    m = lp.max(axis=-1, keepdims=True)
    lse = (m + np.log(np.exp(lp - m).sum(axis=-1, keepdims=True)))[..., 0]
    lse = np.minimum(lse, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(-np.expm1(lse)).astype(np.float32)
