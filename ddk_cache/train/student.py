"""Load a student (any local transformers causal LM) and check it fits a teacher cache.

A student trains on the teacher's token ids and top-k ids, so it must share the teacher's
tokenizer (fingerprint), have an output vocabulary at least the teacher's (padded heads are
fine) and accept the cache's sequence length. `check_student` turns each mismatch into one
ConfigError before any weights are loaded; the trainer, `ddk eval` and the online teacher all
load through `load_student`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from ddk.cache.errors import ConfigError
from ddk.cache.teacher.model_dir import (
    describe_error,
    load_tokenizer,
    model_load_errors,
    transformers_progress,
)

__all__ = ["check_student", "load_student"]


def check_student(model_config: Any, tokenizer: Any, reader: Any, name: str = "student") -> None:
    """One clear ConfigError if a model cannot be trained/evaluated against this cache.

    `tokenizer` None skips the tokenizer check (a caller that was given no tokenizer says so).
    """
    from ddk.cache.teacher.identity import tokenizer_fingerprint

    fp = None if tokenizer is None else tokenizer_fingerprint(tokenizer)
    if fp is not None and fp != reader.tokenizer_fingerprint:
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


def load_student(path: str | Path, reader: Any, *, name: str = "student",
                 progress: bool = True) -> tuple[Any, Any]:
    """Load a local transformers causal LM + tokenizer (float32), checked against the cache.

    A damaged directory (config.json that is not JSON, no or broken tokenizer files, a
    truncated .safetensors) is one ConfigError naming it. `progress` False loads without
    transformers' "Loading weights" bar.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    p = Path(path)
    if not (p.is_dir() and (p / "config.json").exists()):
        raise ConfigError(f"{name} {path} is not a local transformers model directory "
                          "(no config.json); pass a save_pretrained directory")
    try:
        config = AutoConfig.from_pretrained(p, local_files_only=True)
    except model_load_errors() as e:
        raise ConfigError(f"cannot load the {name}'s config from {path} ({describe_error(e)}); "
                          "repair its config.json or copy the model directory again") from e
    tokenizer = load_tokenizer(p, name=name, error=ConfigError)
    check_student(config, tokenizer, reader, name)
    try:
        with transformers_progress(progress):
            model = AutoModelForCausalLM.from_pretrained(p, local_files_only=True,
                                                         dtype=torch.float32)
    except model_load_errors() as e:
        raise ConfigError(f"cannot load the {name}'s weights from {path} "
                          f"({describe_error(e)}); repair the model directory or copy it "
                          "again") from e
    return model, tokenizer
