"""What defines one cache-teacher run: `CacheJobConfig`, its defaults and its checks.

Kept free of torch and transformers so the CLI can take its option defaults from here
without slowing `ddk --help`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from ddk.cache.corpus.demo_corpus import demo_domain_specs
from ddk.cache.corpus.sources import DomainSpec, validate_domains
from ddk.cache.errors import ConfigError
from ddk.cache.store.encoding import CODEC_PROFILES, DEFAULT_CODEC_PROFILE, DEFAULT_LOGPROB_STEP
from ddk.cache.teacher.loading import BACKENDS, TEACHER_DTYPES  # the CLI's choices too

#: counts are stored as uint8 (teacher/sampled.py MAX_DRAWS; not imported: it needs torch)
MAX_DRAWS = 255

#: budget used when no domains are given (the bundled demo corpus): a few CPU minutes.
DEMO_TRAIN_SEQUENCES = 24
DEMO_VAL_SEQUENCES = 8
DEMO_SEQ_LEN = 256
#: draws per position of the sampled target (chosen by measurement, docs/codecs.md)
DEFAULT_SAMPLES = 32
TARGETS = ("topk", "sampled")


@dataclass
class CacheJobConfig:
    """Everything that defines one cache-teacher run (CLI options map 1:1 onto fields)."""

    output: str = "ddk-cache"
    domains: list[DomainSpec] = field(default_factory=list)  # empty: bundled demo corpus
    teacher: str | None = None  # None: embedded default (SmolLM2-135M-Instruct)
    backend: str = "transformers"
    k: int = 64
    target: str = "topk"  # topk, or sampled (RS-KD: `samples` draws per position)
    samples: int | None = None  # None: DEFAULT_SAMPLES with target sampled
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
    if cfg.samples is None and cfg.target == "sampled":
        cfg.samples = DEFAULT_SAMPLES
    return cfg


#: integer fields -> (least value or None, what follows the range error); max_train_sequences
#: may also be None
_INT_FIELDS: dict[str, tuple[int | None, str]] = {
    "k": (1, ""),
    "samples": (1, " (or None: the default with --target sampled)"),
    "seq_len": (2, ""),
    "val_sequences": (1, ("; DDK needs validation sequences in every domain (it weights "
                          "domains by the student-teacher loss gap measured on them)")),
    "max_train_sequences": (1, " (or None: no cap)"),
    "batch_size": (1, ""),
    "sequences_per_shard": (1, ""),
    "num_workers": (1, ""),
    "worker_index": (0, ""),
    "seed": (None, ""),
}
_CHOICE_FIELDS = {"target": TARGETS, "backend": BACKENDS, "dtype": TEACHER_DTYPES, "codec_profile": CODEC_PROFILES}
_STRING_FIELDS = ("output", "device")  # non-empty; device existence is checked on loading
_BOOL_FIELDS = ("overwrite", "progress")
#: fields without a CLI option of their name: named as fields, the others as --options
_API_ONLY = ("domains", "progress", "engine_options")
_MAX_LOGPROB_STEP = 0.02

_TYPE_NAMES = {bool: "boolean", int: "integer", float: "float", str: "string", list: "list",
               tuple: "tuple", dict: "mapping"}


def describe(value: Any) -> str:
    """A value and its type as a config file writes them: `8.5 (float)`, `'64' (string)`."""
    if value is None:
        return "null"
    shown = ("true" if value else "false") if isinstance(value, bool) else repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{shown} ({_TYPE_NAMES.get(type(value), type(value).__name__)})"


def is_int(value: Any) -> bool:
    """An int that is not a bool (True is an int in Python, not in a config)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _int_problem(name: str, value: Any) -> str | None:
    least, why = _INT_FIELDS[name]
    if value is None and name in ("max_train_sequences", "samples"):
        return None
    if not is_int(value):
        return f"must be an integer, got {describe(value)}"
    if least is not None and value < least:
        return f"must be >= {least}, got {value}{why}"
    return None


def field_problem(name: str, value: Any) -> str | None:
    """What is wrong with `value` for CacheJobConfig field `name` on its own, or None.

    A phrase to follow the field's name (``must be an integer, got 8.5 (float)``), shared by
    `validate` and the CLI's config-file check. Checks types strictly (no bool for an int,
    no string for a number or a bool) and ranges; cross-field checks are in `validate`.
    """
    if name in _INT_FIELDS:
        return _int_problem(name, value)
    if name in _CHOICE_FIELDS:
        choices = _CHOICE_FIELDS[name]
        if not isinstance(value, str) or value not in choices:
            return f"must be one of {', '.join(choices)}, got {describe(value)}"
    elif name in _STRING_FIELDS:
        if not isinstance(value, str) or not value:
            return f"must be a non-empty string, got {describe(value)}"
    elif name in _BOOL_FIELDS:
        if not isinstance(value, bool):
            return f"must be true or false (a boolean), got {describe(value)}"
    elif name == "teacher":
        if value is not None and (not isinstance(value, str | os.PathLike) or not str(value)):
            return (f"must be a model directory path (None: the default teacher), "
                    f"got {describe(value)}")
    elif name == "logprob_step":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number, got {describe(value)}"
        if not 0 < value <= _MAX_LOGPROB_STEP:  # also refuses NaN
            return (f"must be in (0, {_MAX_LOGPROB_STEP}] nats (max error = step / 2), "
                    f"got {value}")
    elif name == "engine_options":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return f"must be a dict of vLLM engine arguments by name, got {describe(value)}"
    elif name == "domains":
        if not isinstance(value, list) or not all(isinstance(d, DomainSpec) for d in value):
            return f"must be a list of DomainSpec, got {describe(value)}"
        for spec in value:
            if not isinstance(spec.source, str) or not spec.source:
                return f"{spec.name!r}: source must be a non-empty string, got " \
                       f"{describe(spec.source)}"
            if not isinstance(spec.text_field, str):
                return f"{spec.name!r}: text_field must be a string, got " \
                       f"{describe(spec.text_field)}"
    return None


def option_name(field_name: str) -> str:
    """How messages name a field: its CLI option (`--seq-len`), or the field for API-only ones."""
    return field_name if field_name in _API_ONLY else "--" + field_name.replace("_", "-")


def validate(cfg: CacheJobConfig) -> None:
    """ConfigError (CorpusError for the domains) for any field of the wrong type or out of
    range, before any work. Takes the config after `apply_defaults` (seq_len and
    val_sequences set); fast and torch-free."""
    for f in fields(cfg):
        problem = field_problem(f.name, getattr(cfg, f.name))
        if problem is not None:
            raise ConfigError(f"{option_name(f.name)} {problem}")
    if cfg.target == "sampled":
        if cfg.samples is not None and cfg.samples > MAX_DRAWS:
            raise ConfigError(f"--samples must be <= {MAX_DRAWS} (counts are stored as "
                              f"uint8), got {cfg.samples}")
        if cfg.backend == "vllm":
            raise ConfigError("--target sampled draws from the teacher's full distribution, "
                              "which the vLLM backend does not return (only top log-probs); "
                              "use --backend transformers, or --target topk with vLLM")
    elif cfg.samples is not None:
        raise ConfigError(f"--samples {cfg.samples} applies to --target sampled only; "
                          "add --target sampled, or drop --samples")
    if cfg.worker_index >= cfg.num_workers:
        raise ConfigError(f"--worker-index must be in [0, {cfg.num_workers - 1}], "
                          f"got {cfg.worker_index}")
    validate_domains(cfg.domains)
