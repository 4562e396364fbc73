"""The top-k extraction stores the bytes it always stored.

scores_from_logits reuses one scratch buffer for its logsumexp temporaries and scatters
into a view instead of a contiguous copy (the speed-up measured by bench/bench_cache_job.py).
The values must stay bitwise those of the straightforward torch code it replaced, kept
here verbatim as the reference: a cache resumed across ddk versions mixes the two.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ddk.cache.teacher.backend import TeacherScores
from ddk.cache.teacher.topk import ScratchBuffer, logsumexp_into, scores_from_logits


def reference_scores(logits: torch.Tensor, input_ids: torch.Tensor, k: int) -> TeacherScores:
    """The extraction before the scratch buffer (ddk 2026-11), unchanged."""
    logits = logits[:, :-1, :]
    if logits.dtype != torch.float32:
        logits = logits.float()
    targets = input_ids[:, 1:].to(logits.device, torch.int64)
    lse = torch.logsumexp(logits, dim=-1)
    target_logit = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)
    top_vals, top_ids = torch.topk(logits, k, dim=-1, largest=True, sorted=True)
    if k < logits.shape[-1]:
        logits = logits.contiguous() if not logits.is_contiguous() else logits
        logits.scatter_(-1, top_ids, float("-inf"))
        tail = torch.logsumexp(logits, dim=-1) - lse
    else:
        tail = torch.full_like(lse, float("-inf"))
    return TeacherScores(
        topk_ids=top_ids.to(torch.int32).cpu().numpy(),
        topk_logprobs=(top_vals - lse.unsqueeze(-1)).cpu().numpy().astype(np.float32),
        tail_logmass=tail.cpu().numpy().astype(np.float32),
        target_logprob=(target_logit - lse).cpu().numpy().astype(np.float32),
    )


def logits_like_a_teacher(b: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    """Peaked rows (a few large logits over a wide spread), some ties, -inf entries, and a
    row that is -inf except one entry (logsumexp's inf-max branch is not taken by it)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, length, vocab, generator=g) * 3
    x[..., :5] += 12 * torch.rand(b, length, 5, generator=g)
    x[0, 1, 7:20] = x[0, 1, 6]  # ties across the top-k boundary
    x[1, 2, vocab // 2:] = float("-inf")
    x[1, 3, :] = float("-inf")
    x[1, 3, 4] = 0.5
    return x


FIELDS = ("topk_ids", "topk_logprobs", "tail_logmass", "target_logprob")


@pytest.mark.parametrize("k,dtype", [(8, torch.float32), (64, torch.float32),
                                     (64, torch.bfloat16), (300, torch.float32)])
def test_extraction_is_bitwise_the_reference(k, dtype):
    b, length, vocab = 3, 17, 300
    logits = logits_like_a_teacher(b, length, vocab, seed=k).to(dtype)
    ids = torch.randint(0, vocab, (b, length), generator=torch.Generator().manual_seed(1))
    want = reference_scores(logits.clone(), ids, k)
    scratch = ScratchBuffer()
    for _ in range(2):  # the second batch reuses the first one's buffer
        got = scores_from_logits(logits.clone(), ids, k, scratch)
        for f in FIELDS:
            np.testing.assert_array_equal(getattr(got, f), getattr(want, f), err_msg=f)
    assert np.isneginf(got.tail_logmass).all() == (k == vocab)


def test_scratch_buffer_grows_and_is_reused():
    scratch = ScratchBuffer()
    small = scratch.get(torch.Size([2, 3, 5]), torch.device("cpu"))
    big = scratch.get(torch.Size([4, 3, 5]), torch.device("cpu"))
    again = scratch.get(torch.Size([1, 3, 5]), torch.device("cpu"))
    assert small.shape == (2, 3, 5) and big.shape == (4, 3, 5) and again.shape == (1, 3, 5)
    assert again.data_ptr() == big.data_ptr()  # a smaller batch takes the same memory


def test_logsumexp_into_matches_torch_on_inf_rows():
    x = torch.tensor([[0.0, 1.0, -2.0], [float("-inf")] * 3, [float("inf"), 0.0, 1.0],
                      [3.0, float("-inf"), float("-inf")]])
    got = logsumexp_into(x, torch.empty_like(x))
    torch.testing.assert_close(got, torch.logsumexp(x, -1), rtol=0, atol=0, equal_nan=True)
