"""Where the teacher lives and what it can serve, read before any weights are loaded.

Also the guarded pieces of loading any local transformers model directory (the teacher's
here, a student's in ddk.cache.train.student): its tokenizer, what a damaged directory
raises, that error as one line, and transformers' progress bars switched off for a quiet
run. A broken directory becomes one named DDKError, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ddk.cache.errors import DDKError, TeacherError
from ddk.cache.teacher.default_model import ensure_default_teacher

__all__ = ["describe_error", "load_teacher_tokenizer", "load_tokenizer", "model_load_errors",
           "resolve_teacher_path", "teacher_limits", "transformers_progress"]

#: the files a saved tokenizer consists of (any one of them is something to load)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                   "vocab.txt", "spiece.model")


def resolve_teacher_path(teacher: str | None) -> Path:
    """A local model directory; None means the embedded default (converted on first use)."""
    if teacher is None:
        return ensure_default_teacher()
    path = Path(teacher).expanduser()
    if not (path / "config.json").is_file():
        raise TeacherError(f"teacher not found: {path} is not a local transformers model "
                           "directory (no config.json); the hub is not used")
    return path


def teacher_limits(path: Path) -> tuple[int, int | None]:
    """(vocab_size, max positions) from config.json, without loading the weights."""
    try:
        with open(path / "config.json", encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        raise TeacherError(f"the teacher's {path / 'config.json'} cannot be read "
                           f"({describe_error(e)}); repair it or copy the model directory "
                           "again") from e
    if not isinstance(cfg, dict):
        raise TeacherError(f"the teacher's {path / 'config.json'} is not a JSON object; "
                           "repair it or copy the model directory again")
    text_cfg = cfg.get("text_config", cfg)
    vocab = text_cfg.get("vocab_size")
    if vocab is None:
        raise TeacherError(f"{path}/config.json has no vocab_size")
    return int(vocab), text_cfg.get("max_position_embeddings")


def load_teacher_tokenizer(path: Path) -> Any:
    """The teacher's tokenizer from its directory; TeacherError if missing or broken."""
    tokenizer = load_tokenizer(path, name="teacher", error=TeacherError)
    if tokenizer.eos_token_id is None:
        raise TeacherError(f"the teacher's tokenizer in {path} has no EOS token, which the "
                           "cache needs between packed documents; set eos_token in its "
                           "tokenizer_config.json")
    return tokenizer


def load_tokenizer(path: Path, *, name: str, error: type[DDKError]) -> Any:
    """`AutoTokenizer.from_pretrained(path)` (local files only), any failure as one `error`.

    `name` says whose tokenizer it is in the message ("teacher", "student", ...).
    """
    from transformers import AutoTokenizer

    path = Path(path)
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise error(f"the {name} directory {path} has no tokenizer (no tokenizer.json or "
                    "tokenizer_config.json); save the tokenizer into it with "
                    "tokenizer.save_pretrained, or copy the complete model directory")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # tokenizers raises a bare Exception for a malformed tokenizer.json
        raise error(f"cannot load the {name}'s tokenizer from {path} ({describe_error(e)}); "
                    "repair its tokenizer files or copy the model directory again") from e


def model_load_errors() -> tuple[type[BaseException], ...]:
    """What `from_pretrained` raises for a damaged model directory: OSError (config.json
    that is not JSON, a missing weights file), ValueError, KeyError, and safetensors' own
    SafetensorError (not an OSError) for a truncated or corrupt .safetensors file."""
    from safetensors import SafetensorError

    return (OSError, ValueError, KeyError, SafetensorError)


def describe_error(e: BaseException) -> str:
    """`e` on one line: the first non-empty line of its message, after its type when that
    says more (safetensors' and KeyError's messages alone are cryptic)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[0].rstrip(".") if lines else ""
    if type(e).__name__ in ("SafetensorError", "KeyError") or not text:
        text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text


@contextlib.contextmanager
def transformers_progress(enabled: bool) -> Iterator[None]:
    """transformers' own progress bars ("Loading weights", "Writing model shards") off
    inside the block when not `enabled`; the previous setting is restored afterwards."""
    if enabled:
        yield
        return
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
