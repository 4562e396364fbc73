"""What defines one cache-teacher run: `CacheJobConfig`, its defaults and its checks.

Kept free of torch and transformers so the CLI can take its option defaults from here
without slowing `ddk --help`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ddk.cache.corpus.demo_corpus import demo_domain_specs
from ddk.cache.corpus.sources import DomainSpec, validate_domains
from ddk.cache.errors import ConfigError
from ddk.cache.store.encoding import CODEC_PROFILES, DEFAULT_CODEC_PROFILE, DEFAULT_LOGPROB_STEP
from ddk.cache.teacher.loading import BACKENDS  # also the CLI's --backend choices

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


def apply_defaults(cfg: CacheJobConfig) -> CacheJobConfig:
    """Fill the fields left None (and the domains, when none are given) in place.

    Without domains the job runs on the bundled demo corpus with the small DEMO_* budget,
    so a first run takes minutes on a CPU; otherwise seq_len 512 and 500 validation
    sequences per domain (the DDK paper's), with no cap on train sequences.
    """
    demo = not cfg.domains
    if demo:
        cfg.domains = demo_domain_specs()
    if cfg.seq_len is None:
        cfg.seq_len = DEMO_SEQ_LEN if demo else 512
    if cfg.val_sequences is None:
        cfg.val_sequences = DEMO_VAL_SEQUENCES if demo else 500
    if cfg.max_train_sequences is None and demo:
        cfg.max_train_sequences = DEMO_TRAIN_SEQUENCES
    return cfg


def validate(cfg: CacheJobConfig) -> None:
    """ConfigError (CorpusError for the domains) for any field out of range, before any work."""
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
