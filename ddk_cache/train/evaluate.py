"""Per-domain validation perplexity of a student (any causal LM) on a teacher cache.

Used by the trainer every re-weighting interval (DDK needs ppl_S / ppl_T per domain) and by
`ddk eval`. The first `max_sequences` validation sequences of each domain are scored; the
teacher's loss on exactly those sequences comes from the cache, so the ratio compares like with
like. Under DDP each rank scores a strided share and the (loss sum, token count) pairs are
all-reduced, so every rank gets the same perplexities (and hence the same domain weights).

`evaluate_model` is `ddk eval`: it opens the cache (training_cache.py), loads the model with
the student-vs-cache checks (student.py) and resolves device and bf16 as the trainer does
(device.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from ddk.cache.device import resolve_device
from ddk.cache.errors import ConfigError
from ddk.cache.train.device import resolve_autocast
from ddk.cache.train.student import load_student
from ddk.cache.train.training_cache import open_cache

__all__ = [
    "DomainPerplexity",
    "evaluate_domains",
    "evaluate_model",
    "validation_indices",
]


@dataclass
class DomainPerplexity:
    """Student and teacher perplexity on one domain's validation sequences."""

    domain: str
    sequences: int
    tokens: int            # scored positions (sequences * (L - 1))
    student_loss: float    # mean CE per token, nats
    student_ppl: float
    teacher_loss: float
    teacher_ppl: float
    ratio: float           # student_ppl / teacher_ppl

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validation_indices(reader: Any, domain: str, max_sequences: int, first: int = 0) -> list[int]:
    """The validation sequences used for perplexity: `max_sequences` of the domain from `first`.

    Training measures its domain gaps on the first ones (first = 0); an experiment that keeps
    a held-out test set scores the sequences after them, which DDK never saw.
    """
    n = reader.num_sequences(domain, "validation")
    if first >= n:
        raise ConfigError(f"domain {domain} has {n} validation sequences, none from index "
                          f"{first}; cache more with --val-sequences")
    return list(range(first, min(first + int(max_sequences), n)))


@torch.no_grad()
def _loss_sums(model: torch.nn.Module, reader: Any, domains: list[str], max_sequences: int,
               first: int, batch_size: int, device: torch.device,
               autocast_dtype: torch.dtype | None, rank: int, world: int) -> torch.Tensor:
    """[N, 2] float64: (sum of CE, number of scored tokens) per domain, for this rank's share."""
    sums = torch.zeros(len(domains), 2, dtype=torch.float64)
    for di, d in enumerate(domains):
        every = validation_indices(reader, d, max_sequences, first)
        mine = every[rank::world]
        # every rank runs the same number of forwards (the largest share's), so a sharded
        # model (FSDP, ZeRO-3), whose forward is a collective, never waits on a rank that is
        # done; a rank past its share scores the domain's first batch and does not count it
        forwards = math.ceil(math.ceil(len(every) / world) / batch_size)
        for b in range(forwards):
            part = mine[b * batch_size:(b + 1) * batch_size]
            ids = reader.read(d, "validation", part or every[:batch_size]).input_ids
            ids = ids.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=autocast_dtype,
                                enabled=autocast_dtype is not None):
                logits = model(input_ids=ids, use_cache=False).logits
            if part:
                ce = F.cross_entropy(logits[:, :-1].float().flatten(0, 1),
                                     ids[:, 1:].flatten(), reduction="sum")
                sums[di, 0] += float(ce)
                sums[di, 1] += ids[:, 1:].numel()
    return sums


def evaluate_domains(model: torch.nn.Module, reader: Any, *, max_sequences: int = 500,
                     batch_size: int = 8, device: torch.device | str | None = None,
                     autocast_dtype: torch.dtype | None = None,
                     process_group: Any = None, first: int = 0) -> list[DomainPerplexity]:
    """Per-domain student vs teacher perplexity; all-reduced when torch.distributed is up.

    Scores `max_sequences` validation sequences per domain starting at index `first`.
    """
    if max_sequences < 1:
        raise ConfigError(f"validation sequences must be >= 1, got {max_sequences}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    world = torch.distributed.get_world_size() if distributed else 1
    domains = list(reader.domains)
    was_training = model.training
    model.eval()
    try:
        sums = _loss_sums(model, reader, domains, max_sequences, first, batch_size, device,
                          autocast_dtype, rank, world)
    finally:
        model.train(was_training)
    if distributed:
        red = sums.to(device)
        torch.distributed.all_reduce(red, group=process_group)
        sums = red.cpu()
    out = []
    for di, d in enumerate(domains):
        idx = validation_indices(reader, d, max_sequences, first)
        loss = float(sums[di, 0] / sums[di, 1])
        t_loss = float(reader.teacher_loss(d, idx))
        s_ppl, t_ppl = math.exp(min(loss, 700.0)), math.exp(t_loss)
        out.append(DomainPerplexity(d, len(idx), int(sums[di, 1]), loss, s_ppl, t_loss, t_ppl,
                                    s_ppl / t_ppl))
    return out


def evaluate_model(model_path: str | Path, cache_path: str | Path, *, max_sequences: int = 500,
                   batch_size: int = 8, device: str | None = None,
                   bf16: bool | None = None) -> list[DomainPerplexity]:
    """`ddk eval`: load any local causal LM, check it against the cache, score every domain."""
    reader = open_cache(cache_path)
    dev = resolve_device(device)
    amp = resolve_autocast(bf16, dev)
    model, _ = load_student(model_path, reader, name="model")
    model.to(dev)
    return evaluate_domains(model, reader, max_sequences=max_sequences, batch_size=batch_size,
                            device=dev, autocast_dtype=amp)
