"""Per-domain validation perplexity of a student (any causal LM) on a teacher cache.

Used by the trainer every re-weighting interval (DDK needs ppl_S / ppl_T per domain) and by
`ddk eval`. The first `max_sequences` validation sequences of each domain are scored; the
teacher's loss on exactly those sequences comes from the cache, so the ratio compares like with
like. Under DDP each rank scores a strided share and the (loss sum, token count) pairs are
all-reduced, so every rank gets the same perplexities (and hence the same domain weights).

Also here: opening a cache for training/eval with its checks, and loading a student with the
student-vs-cache compatibility checks (tokenizer fingerprint, vocab size, max positions).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from ddk.cache.errors import ConfigError, IncompleteCacheError

__all__ = [
    "DomainPerplexity",
    "check_student",
    "evaluate_domains",
    "evaluate_model",
    "load_student",
    "open_cache",
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


def open_cache(path: str | Path) -> Any:
    """Open a complete cache and check it has train and validation data for every domain."""
    from ddk.cache.store.reader import CacheReader

    reader = CacheReader.open(str(path))  # IncompleteCacheError / StoreError on its own
    if not reader.domains:
        raise IncompleteCacheError(f"cache {path} has no domains; rebuild it with "
                                   "`ddk cache-teacher` on a corpus with at least one domain")
    for d in reader.domains:
        for split in ("train", "validation"):
            try:
                reader.array(d, split, "input_ids")
            except KeyError as e:
                raise IncompleteCacheError(
                    f"cache {path} lists domain {d!r} but its {split} data is missing from the "
                    "store; re-run `ddk cache-teacher` to rebuild it") from e
            if reader.num_sequences(d, split) <= 0:
                raise IncompleteCacheError(
                    f"domain {d!r} in cache {path} has no {split} sequences; DDK needs both "
                    "splits for every domain: add text to it or drop it and rebuild the cache")
        try:
            reader.teacher_loss(d)  # IncompleteCacheError if the teacher val loss is missing
        except KeyError as e:
            raise IncompleteCacheError(f"cache {path} has no teacher validation data for {d!r}; "
                                       "re-run `ddk cache-teacher` to rebuild it") from e
    return reader


def check_student(model_config: Any, tokenizer: Any, reader: Any, name: str = "student") -> None:
    """One clear ConfigError if a model cannot be trained/evaluated against this cache."""
    from ddk.cache.teacher.identity import tokenizer_fingerprint

    fp = tokenizer_fingerprint(tokenizer)
    if fp != reader.tokenizer_fingerprint:
        raise ConfigError(
            f"the {name}'s tokenizer differs from the one the cache was built with "
            f"(fingerprint {fp[:12]} vs {reader.tokenizer_fingerprint[:12]}): token ids would "
            "mean different text. Use a model that shares the teacher's tokenizer/vocabulary")
    vocab = int(getattr(model_config, "vocab_size", 0) or 0)
    if vocab < reader.vocab_size:
        raise ConfigError(
            f"the {name}'s output vocabulary ({vocab}) is smaller than the teacher's "
            f"({reader.vocab_size}): teacher top-k ids could fall outside it. A student vocab "
            "equal to or padded larger than the teacher's is required")
    max_pos = getattr(model_config, "max_position_embeddings", None)
    if max_pos is not None and reader.seq_len > int(max_pos):
        raise ConfigError(
            f"the cache's sequences have {reader.seq_len} tokens but the {name} supports at "
            f"most {max_pos} positions; rebuild the cache with --seq-len <= {max_pos}")


def load_student(path: str | Path, reader: Any, *, name: str = "student") -> tuple[Any, Any]:
    """Load a local transformers causal LM + tokenizer (float32), checked against the cache."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if not (p.is_dir() and (p / "config.json").exists()):
        raise ConfigError(f"{name} {path} is not a local transformers model directory "
                          "(no config.json); pass a save_pretrained directory")
    try:
        config = AutoConfig.from_pretrained(p, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(p, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"cannot load the {name}'s config/tokenizer from {path}: {e}") from e
    check_student(config, tokenizer, reader, name)
    try:
        model = AutoModelForCausalLM.from_pretrained(p, local_files_only=True,
                                                     dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"cannot load the {name} model from {path}: {e}") from e
    return model, tokenizer


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
        mine = validation_indices(reader, d, max_sequences, first)[rank::world]
        for start in range(0, len(mine), batch_size):
            ids = reader.read(d, "validation", mine[start:start + batch_size]).input_ids
            ids = ids.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=autocast_dtype,
                                enabled=autocast_dtype is not None):
                logits = model(input_ids=ids, use_cache=False).logits
            ce = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten(),
                                 reduction="sum")
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
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if bf16 and dev.type != "cuda":
        raise ConfigError("--bf16 needs a CUDA device; drop it on CPU")
    use_bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported() if bf16 is None else bf16
    model, _ = load_student(model_path, reader, name="model")
    model.to(dev)
    return evaluate_domains(model, reader, max_sequences=max_sequences, batch_size=batch_size,
                            device=dev, autocast_dtype=torch.bfloat16 if use_bf16 else None)
