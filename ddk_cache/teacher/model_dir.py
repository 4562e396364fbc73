"""Where the teacher lives and what it can serve, read before any weights are loaded."""

from __future__ import annotations

import json
from pathlib import Path

from ddk.cache.errors import TeacherError
from ddk.cache.teacher.default_model import ensure_default_teacher


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
    with open(path / "config.json", encoding="utf-8") as f:
        cfg = json.load(f)
    text_cfg = cfg.get("text_config", cfg)
    vocab = text_cfg.get("vocab_size")
    if vocab is None:
        raise TeacherError(f"{path}/config.json has no vocab_size")
    return int(vocab), text_cfg.get("max_position_embeddings")
