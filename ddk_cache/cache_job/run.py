"""`ddk cache-teacher` as a Python API: corpus -> packed sequences -> teacher -> store.

The job is restartable: shards already flagged done are skipped, so re-running the same
command after a crash (even SIGKILL) finishes the store, and re-running a finished job
does no teacher work. Several workers (`num_workers`, `worker_index`) split the shards
round-robin and write disjoint objects; whichever finishes last marks the store complete.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ddk.cache.cache_job.config import CacheJobConfig, apply_defaults, validate
from ddk.cache.corpus.packing import PackedDomain, pack_domain
from ddk.cache.corpus.sources import source_fingerprint
from ddk.cache.errors import ConfigError
from ddk.cache.store.encoding import Encoding, id_dtype_for_vocab
from ddk.cache.store.layout import FORMAT_VERSION, SPLITS, check_writable
from ddk.cache.store.writer import CacheWriter
from ddk.cache.teacher.backend import TeacherBackend, TeacherScores
from ddk.cache.teacher.identity import teacher_identity, tokenizer_fingerprint
from ddk.cache.teacher.loading import load_backend
from ddk.cache.teacher.model_dir import resolve_teacher_path, teacher_limits
from tqdm.auto import tqdm


@dataclass(frozen=True)
class CacheJobResult:
    """What one run did: shards and tokens it scored, and where the time went."""

    output: str
    complete: bool
    shards_written: int
    tokens_scored: int
    seconds: float
    teacher_seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_scored / self.seconds if self.seconds > 0 else 0.0


def _ddk_version() -> str:
    try:
        return version("ddk")
    except PackageNotFoundError:  # running from a source tree
        return "unknown"


def build_metadata(cfg: CacheJobConfig, teacher_path: Path, tokenizer: Any,
                   packed: list[PackedDomain], vocab_size: int) -> dict[str, Any]:
    """The store's root metadata; everything that must match for a resume is in here."""
    identity = teacher_identity(teacher_path)
    specs = {s.name: s for s in cfg.domains}
    return {
        "format_version": FORMAT_VERSION,
        "created_by": f"ddk {_ddk_version()}",
        "k": cfg.k,
        "seq_len": cfg.seq_len,
        "teacher": {**identity, "vocab_size": vocab_size, "backend": cfg.backend,
                    "dtype": cfg.dtype},
        "tokenizer": {"fingerprint": tokenizer_fingerprint(tokenizer),
                      "eos_token_id": int(tokenizer.eos_token_id), "size": len(tokenizer)},
        "encoding": Encoding(id_dtype=id_dtype_for_vocab(vocab_size),
                             logprob_step=cfg.logprob_step,
                             codec_profile=cfg.codec_profile).to_json(),
        "sequences_per_shard": cfg.sequences_per_shard,
        "split": {"val_sequences": cfg.val_sequences,
                  "max_train_sequences": cfg.max_train_sequences, "seed": cfg.seed},
        "domains": {
            p.name: {"source": specs[p.name].source, "text_field": specs[p.name].text_field,
                     "source_fingerprint": source_fingerprint(specs[p.name]),
                     "documents": p.num_documents,
                     "train_sequences": int(p.train.shape[0]),
                     "validation_sequences": int(p.validation.shape[0])}
            for p in packed
        },
    }


def my_shards(writer: CacheWriter, worker_index: int, num_workers: int
              ) -> list[tuple[str, str, int]]:
    """This worker's not-yet-done shards: a fixed round-robin over (domain, split, shard)."""
    todo = []
    position = 0
    for domain in writer.meta["domains"]:
        for split in SPLITS:
            flags = writer.done_flags(domain, split)
            for shard in range(writer.num_shards(domain, split)):
                if position % num_workers == worker_index and not flags[shard]:
                    todo.append((domain, split, shard))
                position += 1
    return todo


def _teacher_vocab(cfg: CacheJobConfig, teacher_path: Path) -> int:
    """The teacher's vocabulary size, once k and seq_len are checked against its config
    (before any weights are loaded)."""
    vocab_size, max_positions = teacher_limits(teacher_path)
    if cfg.k > vocab_size:
        raise ConfigError(f"--k {cfg.k} exceeds the teacher's vocabulary ({vocab_size})")
    if max_positions is not None and cfg.seq_len > int(max_positions):
        raise ConfigError(f"--seq-len {cfg.seq_len} exceeds the teacher's maximum sequence "
                          f"length ({max_positions}); lower --seq-len")
    return vocab_size


def _score_shards(cfg: CacheJobConfig, writer: CacheWriter, todo: list[tuple[str, str, int]],
                  packed: list[PackedDomain], backend: TeacherBackend, tokens: int) -> float:
    """Score and write every shard in `todo`; returns the seconds spent in the teacher."""
    by_name = {p.name: p for p in packed}
    # transformers: fixed batches (memory bound); vLLM batches internally, so give it shards.
    step = cfg.batch_size if backend.backend_name == "transformers" else cfg.sequences_per_shard
    teacher_seconds = 0.0
    bar = tqdm(total=tokens, unit="tok", unit_scale=True, disable=not cfg.progress,
               desc=f"teacher top-{cfg.k} ({cfg.backend})", dynamic_ncols=True)
    try:
        for domain, split, shard in todo:
            start, stop = writer.shard_range(domain, split, shard)
            seqs = getattr(by_name[domain], split)[start:stop]
            parts = []
            for b in range(0, len(seqs), step):
                t = time.perf_counter()
                parts.append(backend.score(seqs[b:b + step], cfg.k))
                teacher_seconds += time.perf_counter() - t
                bar.update(len(seqs[b:b + step]) * cfg.seq_len)
            writer.write_shard(domain, split, shard, seqs, TeacherScores.concat(parts))
            bar.set_postfix_str(f"{domain}/{split} shard {shard}")
    finally:
        bar.close()
    return teacher_seconds


def run_cache_job(cfg: CacheJobConfig) -> CacheJobResult:
    """Build (or finish) the teacher cache described by `cfg`; see the module docstring."""
    # transformers (and with it torch) is imported only once a job runs
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    cfg = apply_defaults(cfg)
    validate(cfg)
    check_writable(cfg.output)
    teacher_path = resolve_teacher_path(cfg.teacher)
    vocab_size = _teacher_vocab(cfg, teacher_path)
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    packed = [pack_domain(spec, tokenizer, cfg.seq_len, val_sequences=cfg.val_sequences,
                          max_train_sequences=cfg.max_train_sequences, seed=cfg.seed,
                          progress=cfg.progress)
              for spec in cfg.domains]
    meta = build_metadata(cfg, teacher_path, tokenizer, packed, vocab_size)
    writer = CacheWriter.open(cfg.output, meta, overwrite=cfg.overwrite)
    todo = my_shards(writer, cfg.worker_index, cfg.num_workers)
    if not todo:
        complete = bool(writer.meta.get("complete")) or writer.finalize()
        return CacheJobResult(cfg.output, complete, 0, 0, time.perf_counter() - t0, 0.0)

    backend = load_backend(cfg.backend, teacher_path, dtype=cfg.dtype, device=cfg.device,
                           seed=cfg.seed, k=cfg.k, batch_size=cfg.batch_size,
                           engine_options=cfg.engine_options)
    try:
        if backend.vocab_size < cfg.k:
            raise ConfigError(f"--k {cfg.k} exceeds the teacher's vocabulary "
                              f"({backend.vocab_size})")
        tokens = sum(stop - start for start, stop in (writer.shard_range(d, s, i)
                                                      for d, s, i in todo)) * cfg.seq_len
        teacher_seconds = _score_shards(cfg, writer, todo, packed, backend, tokens)
    finally:
        backend.close()
    complete = writer.finalize()
    return CacheJobResult(cfg.output, complete, len(todo), tokens,
                          time.perf_counter() - t0, teacher_seconds)
