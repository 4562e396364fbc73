"""Shared by the trainer / evaluate / CLI tests: a small real teacher cache, built once per session.

Not a test module: tests/ is on pytest's pythonpath, so tests import it as
`support.train_cache` (the `train_cache` fixture in tests/conftest.py does).
The cache is built through the real `run_cache_job` API from the session's tiny teacher and a
three-domain JSONL corpus whose domains differ in how predictable they are, so DDK has
different discrepancies to react to.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

CACHE_SEQ_LEN = 32
CACHE_K = 8


def write_corpus(root: Path, docs_per_domain: int | None = None) -> dict[str, Path]:
    """Three JSONL domains (layout of tests/conftest.py's write_domain): of different sizes
    (100, 40, 40 documents), or `docs_per_domain` each (bench/gpu/check.py's trainer stage)."""
    n = docs_per_domain
    docs = {
        "code": [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(n or 100)],
        "prose": [f"Chapter {i}. The quick brown fox jumps over the lazy dog {i} times."
                  for i in range(n or 40)],
        "math": [f"What is {i} plus {2 * i}? Answer: {3 * i}" for i in range(n or 40)],
    }
    out = {}
    for name, texts in docs.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "docs.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
        out[name] = d
    return out


def build_cache(root: Path, teacher_dir: Path, *, val_sequences: int = 6,
                max_train_sequences: int | None = None, name: str = "cache",
                **job: Any) -> Path:
    """Build (or reuse, if already complete) a cache under `root`; returns its path."""
    from ddk.cache.cache_job.config import CacheJobConfig
    from ddk.cache.cache_job.run import run_cache_job
    from ddk.cache.corpus.sources import DomainSpec
    from ddk.cache.errors import StoreError
    from ddk.cache.store.reader import CacheReader

    out = root / name
    try:
        CacheReader.open(str(out))
        return out
    except StoreError:
        shutil.rmtree(out, ignore_errors=True)
    corpus = write_corpus(root / f"{name}-corpus")
    cfg = CacheJobConfig(
        output=str(out), teacher=str(teacher_dir),
        domains=[DomainSpec(n, str(p)) for n, p in corpus.items()],
        k=CACHE_K, seq_len=CACHE_SEQ_LEN, val_sequences=val_sequences,
        max_train_sequences=max_train_sequences, batch_size=16, sequences_per_shard=8,
        device="cpu", progress=False, **job)
    result = run_cache_job(cfg)
    assert result.complete
    return out
