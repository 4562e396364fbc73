"""Fingerprints that identify a teacher and a tokenizer in the store metadata.

A store refuses to be resumed or trained against a different teacher or vocabulary, so
these must change whenever the model or vocabulary changes, and stay stable otherwise
(across processes, machines, and transformers versions).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

#: config keys that describe the environment that wrote the file, not the model.
_VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "torch_dtype", "dtype",
                         "architectures", "_attn_implementation_autoset", "use_cache"}
_SAMPLE_BYTES = 1 << 20


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def config_hash(config_dict: dict[str, Any]) -> str:
    """sha256 of a model config with environment-only keys removed."""
    return _sha256_json({k: v for k, v in config_dict.items() if k not in _VOLATILE_CONFIG_KEYS})


def weights_fingerprint(model_dir: Path) -> str:
    """sha256 over each weight file's name, size, and its first/middle/last MiB.

    A fingerprint, not a checksum: cheap on a 30 GB teacher, and it changes whenever a
    file is replaced (safetensors headers, which hold every tensor's name and offsets,
    are inside the first MiB).
    """
    h = hashlib.sha256()
    files = sorted(p for p in model_dir.iterdir()
                   if p.suffix in {".safetensors", ".bin", ".pt", ".gguf"} and p.is_file())
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.name}:{size}".encode())
        with open(p, "rb") as f:
            for offset in sorted({0, max(0, size // 2 - _SAMPLE_BYTES // 2),
                                  max(0, size - _SAMPLE_BYTES)}):
                f.seek(offset)
                h.update(f.read(_SAMPLE_BYTES))
    return h.hexdigest()


def teacher_identity(model_dir: str | Path) -> dict[str, Any]:
    """Name, config hash and weights fingerprint of a local transformers model directory."""
    model_dir = Path(model_dir)
    with open(model_dir / "config.json", encoding="utf-8") as f:
        cfg = json.load(f)
    return {
        "name": model_dir.name,
        "path": str(model_dir.resolve()),
        "model_type": cfg.get("model_type"),
        "config_hash": config_hash(cfg),
        "weights_fingerprint": weights_fingerprint(model_dir),
    }


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the vocabulary (token -> id) and the EOS id: equal iff ids mean the same text."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return _sha256_json({"vocab": vocab, "eos": tokenizer.eos_token_id})
