"""The sampled teacher target (RS-KD): N draws from the teacher's full distribution per position.

Sparse logit sampling (Anshumann et al., ACL 2025) stores, instead of the top-k, a few
tokens drawn from the teacher's distribution at temperature 1 with their counts. The
target q_i = count_i / N has E[q] = p_teacher exactly, and the KL(q || student) gradient
with respect to the student's logits is softmax(z) - q, so its expectation is the
full-vocabulary KD gradient: the target is unbiased where top-k + tail is not.

Storage per position: `width` = N slots of (id, count); the distinct drawn ids come first,
in descending count order (ties: ascending id), then padding slots of count 0 whose ids are
the smallest ids not drawn there. Padding ids are distinct from each other and from the
drawn ids, so every row is a valid sparse-KL target as stored (docs/cache-format.md).

The draws come from a generator seeded by (seed, domain, split, sequence index), so a
killed-and-resumed job, or another worker, draws exactly the same tokens.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class SampleSpec:
    """What to draw for a batch: `draws` per position, one generator seed per sequence."""

    draws: int
    seeds: tuple[int, ...]

    def rows(self, start: int, stop: int) -> SampleSpec:
        """The spec of sequences start..stop-1 of this batch (backends that sub-batch)."""
        return SampleSpec(self.draws, self.seeds[start:stop])


def sequence_seed(seed: int, domain: str, split: str, sequence: int) -> int:
    """A 63-bit generator seed for one cached sequence, stable across runs and machines."""
    digest = hashlib.blake2b(f"ddk-sampled/{seed}/{domain}/{split}/{sequence}".encode(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def draw_counts(logprobs: torch.Tensor, draws: int, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [T, draws] int64, counts [T, draws] int64) from `draws` draws per row of
    normalised log-probs [T, V] (with replacement), laid out as the module doc says."""
    t, v = logprobs.shape
    drawn = torch.multinomial(logprobs.exp(), draws, replacement=True, generator=generator)
    drawn = torch.sort(drawn, dim=-1).values
    first = torch.ones_like(drawn, dtype=torch.bool)
    first[:, 1:] = drawn[:, 1:] != drawn[:, :-1]
    group = torch.cumsum(first, dim=-1) - 1  # slot of each draw's distinct id
    counts = torch.zeros_like(drawn).scatter_add_(1, group, torch.ones_like(drawn))
    ids = torch.zeros_like(drawn).scatter_(1, group, drawn)
    distinct = first.sum(-1, keepdim=True)  # [T, 1]
    slot = torch.arange(draws, device=drawn.device).expand(t, draws)
    real = slot < distinct
    # descending count, ties by ascending id; padding (count 0) last
    key = torch.where(real, (draws - counts) * v + ids, draws * v + slot)
    order = torch.argsort(key, dim=-1)
    ids, counts = torch.gather(ids, 1, order), torch.gather(counts, 1, order)
    # padding ids: the smallest ids not drawn (2 * draws candidates always hold enough)
    cand = torch.arange(min(2 * draws, v), device=drawn.device)
    taken = ((cand.view(1, -1, 1) == ids.unsqueeze(1)) & real.unsqueeze(1)).any(-1)
    free = cand.expand(t, -1).gather(1, torch.argsort(taken.to(torch.int8), dim=-1,
                                                      stable=True))
    filler = torch.gather(free, 1, (slot - distinct).clamp(min=0))
    return torch.where(real, ids, filler), torch.where(real, counts, 0)


def sampled_from_logits(logits: torch.Tensor, sample: SampleSpec
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(sample_ids [B, T, N] int32, sample_counts [B, T, N] uint8) from scored logits
    [B, T, V] (positions already aligned, see teacher/backend.py), one generator per row."""
    if len(sample.seeds) != logits.shape[0]:
        raise ValueError(f"{len(sample.seeds)} seeds for {logits.shape[0]} sequences")
    ids, counts = [], []
    for row, seed in enumerate(sample.seeds):
        gen = torch.Generator(device=logits.device).manual_seed(seed)
        lp = torch.log_softmax(logits[row].float(), dim=-1)
        i, c = draw_counts(lp, sample.draws, gen)
        ids.append(i.to(torch.int32).cpu())
        counts.append(c.to(torch.uint8).cpu())
    return torch.stack(ids).numpy(), torch.stack(counts).numpy()


def sampled_target(sample_ids: np.ndarray | torch.Tensor, sample_counts: np.ndarray |
                   torch.Tensor, draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids int64, log-weights float32) of the stored sample: log(count / draws), -inf on
    padding. This is the sparse target the KL losses take (tail="none")."""
    ids = torch.as_tensor(np.asarray(sample_ids)).long()
    counts = np.asarray(sample_counts).astype(np.float32)
    with np.errstate(divide="ignore"):  # log(0) = -inf on padding
        logw = np.log(counts / np.float32(draws))
    return ids, torch.from_numpy(logw)
