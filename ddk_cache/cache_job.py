"""`ddk cache-teacher` as a Python API: corpus -> packed sequences -> teacher -> store.

The job is restartable: shards already flagged done are skipped, so re-running the same
command after a crash (even SIGKILL) finishes the store, and re-running a finished job
does no teacher work. Several workers (`num_workers`, `worker_index`) split the shards
round-robin and write disjoint objects; whichever finishes last marks the store complete.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddk.cache.corpus import DomainSpec, source_fingerprint, validate_domains
from ddk.cache.encoding import (
    CODEC_PROFILES,
    DEFAULT_CODEC_PROFILE,
    DEFAULT_LOGPROB_STEP,
    Encoding,
    id_dtype_for_vocab,
)
from ddk.cache.errors import ConfigError, TeacherError
from ddk.cache.packing import PackedDomain, pack_domain
from ddk.cache.store import FORMAT_VERSION, SPLITS, CacheWriter, check_writable
from ddk.cache.teacher.base import TeacherBackend, TeacherScores
from ddk.cache.teacher.identity import teacher_identity, tokenizer_fingerprint

BACKENDS = ("transformers", "vllm")

#: budget used when no domains are given (the bundled demo corpus): a few CPU minutes.
DEMO_TRAIN_SEQUENCES = 24
DEMO_VAL_SEQUENCES = 8
DEMO_SEQ_LEN = 256


@dataclass
class CacheJobConfig:
    """Everything that defines one cache-teacher run (CLI options map 1:1 onto fields)."""

    output: str = "ddk-cache"
    domains: list[DomainSpec] = field(default_factory=list)  # empty: bundled demo corpus
    teacher: str | None = None  # None: embedded default (SmolLM2-135M-Instruct)
    backend: str = "transformers"
    k: int = 64
    seq_len: int | None = None  # None: 512, or 256 for the demo corpus
    val_sequences: int | None = None  # None: 500 (paper), or 8 for the demo corpus
    max_train_sequences: int | None = None  # None: all, or 24 for the demo corpus
    batch_size: int = 8
    sequences_per_shard: int = 16
    dtype: str = "fp32"
    device: str = "auto"
    seed: int = 0
    num_workers: int = 1
    worker_index: int = 0
    overwrite: bool = False
    logprob_step: float = DEFAULT_LOGPROB_STEP
    codec_profile: str = DEFAULT_CODEC_PROFILE
    progress: bool = True
    engine_options: dict[str, Any] = field(default_factory=dict)  # vLLM engine arguments


@dataclass(frozen=True)
class CacheJobResult:
    output: str
    complete: bool
    shards_written: int
    tokens_scored: int
    seconds: float
    teacher_seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_scored / self.seconds if self.seconds > 0 else 0.0


def _apply_defaults(cfg: CacheJobConfig) -> CacheJobConfig:
    demo = not cfg.domains
    if demo:
        from ddk.cache.demo_corpus import demo_domain_specs

        cfg.domains = demo_domain_specs()
    if cfg.seq_len is None:
        cfg.seq_len = DEMO_SEQ_LEN if demo else 512
    if cfg.val_sequences is None:
        cfg.val_sequences = DEMO_VAL_SEQUENCES if demo else 500
    if cfg.max_train_sequences is None and demo:
        cfg.max_train_sequences = DEMO_TRAIN_SEQUENCES
    return cfg


def _validate(cfg: CacheJobConfig) -> None:
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"unknown backend {cfg.backend!r}; use one of {', '.join(BACKENDS)}")
    if cfg.k < 1:
        raise ConfigError(f"--k must be >= 1, got {cfg.k}")
    if cfg.seq_len is None or cfg.seq_len < 2:
        raise ConfigError(f"--seq-len must be >= 2, got {cfg.seq_len}")
    for name in ("batch_size", "sequences_per_shard", "num_workers"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 <= cfg.worker_index < cfg.num_workers:
        raise ConfigError(f"--worker-index must be in [0, {cfg.num_workers - 1}], "
                          f"got {cfg.worker_index}")
    if cfg.codec_profile not in CODEC_PROFILES:
        raise ConfigError(f"unknown codec profile {cfg.codec_profile!r}; use one of "
                          f"{', '.join(CODEC_PROFILES)}")
    if not 0 < cfg.logprob_step <= 0.02:
        raise ConfigError("--logprob-step must be in (0, 0.02] nats (max error = step / 2)")
    validate_domains(cfg.domains)


def resolve_teacher_path(teacher: str | None) -> Path:
    """A local model directory; None means the embedded default (converted on first use)."""
    if teacher is None:
        from ddk.cache.default_teacher import ensure_default_teacher

        return ensure_default_teacher()
    path = Path(teacher).expanduser()
    if not (path / "config.json").is_file():
        raise TeacherError(f"teacher not found: {path} is not a local transformers model "
                           "directory (no config.json); the hub is not used")
    return path


def _teacher_limits(path: Path) -> tuple[int, int | None]:
    """(vocab_size, max positions) from config.json, without loading the weights."""
    with open(path / "config.json", encoding="utf-8") as f:
        cfg = json.load(f)
    text_cfg = cfg.get("text_config", cfg)
    vocab = text_cfg.get("vocab_size")
    if vocab is None:
        raise TeacherError(f"{path}/config.json has no vocab_size")
    return int(vocab), text_cfg.get("max_position_embeddings")


def build_metadata(cfg: CacheJobConfig, teacher_path: Path, tokenizer: Any,
                   packed: list[PackedDomain], vocab_size: int) -> dict[str, Any]:
    """The store's root metadata; everything that must match for a resume is in here."""
    from importlib.metadata import PackageNotFoundError, version


    try:
        ddk_version = version("ddk")
    except PackageNotFoundError:  # running from a source tree
        ddk_version = "unknown"
    identity = teacher_identity(teacher_path)
    specs = {s.name: s for s in cfg.domains}
    return {
        "format_version": FORMAT_VERSION,
        "created_by": f"ddk {ddk_version}",
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


def load_backend(cfg: CacheJobConfig, teacher_path: Path) -> TeacherBackend:
    if cfg.backend == "vllm":
        from ddk.cache.teacher.vllm_backend import VLLMTeacher

        return VLLMTeacher(str(teacher_path), dtype=cfg.dtype, seed=cfg.seed,
                           max_logprobs=cfg.k, batch_size=cfg.batch_size, **cfg.engine_options)
    from ddk.cache.teacher.transformers_backend import TransformersTeacher

    return TransformersTeacher(teacher_path, dtype=cfg.dtype, device=cfg.device)


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


def run_cache_job(cfg: CacheJobConfig) -> CacheJobResult:
    """Build (or finish) the teacher cache described by `cfg`; see the module docstring."""
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    cfg = _apply_defaults(cfg)
    _validate(cfg)
    check_writable(cfg.output)
    teacher_path = resolve_teacher_path(cfg.teacher)
    vocab_size, max_positions = _teacher_limits(teacher_path)
    if cfg.k > vocab_size:
        raise ConfigError(f"--k {cfg.k} exceeds the teacher's vocabulary ({vocab_size})")
    if max_positions is not None and cfg.seq_len > int(max_positions):
        raise ConfigError(f"--seq-len {cfg.seq_len} exceeds the teacher's maximum sequence "
                          f"length ({max_positions}); lower --seq-len")
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

    by_name = {p.name: p for p in packed}
    backend = load_backend(cfg, teacher_path)
    if backend.vocab_size < cfg.k:
        raise ConfigError(f"--k {cfg.k} exceeds the teacher's vocabulary ({backend.vocab_size})")
    tokens = sum(stop - start for start, stop in (writer.shard_range(d, s, i)
                                                  for d, s, i in todo)) * cfg.seq_len
    # transformers: fixed batches (memory bound); vLLM batches internally, so give it shards.
    step = cfg.batch_size if backend.backend_name == "transformers" else cfg.sequences_per_shard
    teacher_seconds = 0.0
    bar = _progress_bar(tokens, cfg.progress, f"teacher top-{cfg.k} ({cfg.backend})")
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
        backend.close()
    complete = writer.finalize()
    return CacheJobResult(cfg.output, complete, len(todo), tokens,
                          time.perf_counter() - t0, teacher_seconds)


def _progress_bar(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="tok", unit_scale=True, desc=desc, disable=not enabled,
                dynamic_ncols=True)
