"""The teacher cache on disk: a Zarr v3 store, written shard by shard and read by sequence.

Layout (specified in docs/cache-format.md, readable with plain zarr):

    /                               root group; attrs["ddk"] = metadata (format, teacher, ...)
    /{domain}/{split}/              split in ("train", "validation")
        input_ids      [n, L]          token ids
        topk_ids       [n, L-1, k]     teacher top-k ids, rank order
        topk_logprobs  [n, L-1, k]     uint16 quantised log-probs (encoding.py)
        tail_logmass   [n, L-1]        uint16 quantised log(1 - sum top-k probs)
        target_logprob [n, L-1]        float32 teacher log-prob of the next token (validation only)
        shard_done     [num_shards]    uint8, 1 once every array of that shard is written

The unit of work and of atomicity is the shard (`sequences_per_shard` sequences): a shard
is written whole, then its flag; a flag is never set for a partial shard, so a killed job
redoes at most the shards it was writing. Each flag is its own object, so several workers
can fill disjoint shards of one store concurrently.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from ddk.cache.errors import StoreError

# The numcodecs Delta filter is part of the documented format; readers need zarr + numcodecs.
warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3")

FORMAT_VERSION = 1
SPLITS = ("train", "validation")
META_KEY = "ddk"

#: metadata that must match for an existing store to be resumed (see `job_key`).
_RUN_ONLY_KEYS = {"complete", "created_by"}


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def local_path(path: str) -> Path | None:
    if path.startswith("file://"):
        return Path(path[len("file://"):])
    return None if _is_url(path) else Path(path)


def zarr_target(path: str) -> str:
    """What zarr opens: a plain path for local stores (file:// included), else the URL."""
    local = local_path(path)
    return str(local) if local is not None else path


def check_writable(path: str) -> None:
    """Fail early, before any teacher work, if a local output location cannot be written."""
    local = local_path(path)
    if local is None:
        return
    parent = local.parent if not local.exists() else local
    if not parent.exists():
        raise StoreError(f"output location {local}: parent directory {parent} does not exist; "
                         "create it or choose another --output")
    if local.exists() and not local.is_dir():
        raise StoreError(f"output location {local} is a file, not a directory; "
                         "choose another --output")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"output location {local} is not writable (permission denied on "
                         f"{parent}); choose another --output")


def job_key(meta: dict[str, Any]) -> dict[str, Any]:
    """The parts of the metadata that define the cache's content (not run status/paths)."""
    key = {k: v for k, v in meta.items() if k not in _RUN_ONLY_KEYS}
    # where the teacher and the sources live is a record, not content: fingerprints decide
    key["teacher"] = {k: v for k, v in key.get("teacher", {}).items()
                      if k not in ("path", "name")}
    key["domains"] = {name: {k: v for k, v in info.items() if k != "source"}
                      for name, info in key.get("domains", {}).items()}
    return key


def diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += diff_keys(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [prefix]


def split_arrays(split: str) -> list[str]:
    """The data arrays of one split, in layout order (target_logprob is validation only)."""
    names = ["input_ids", "topk_ids", "topk_logprobs", "tail_logmass"]
    return names + ["target_logprob"] if split == "validation" else names


def num_shards(num_sequences: int, sequences_per_shard: int) -> int:
    return math.ceil(num_sequences / sequences_per_shard)


def missing_shards(group: zarr.Group, domains: Sequence[str]
                   ) -> dict[tuple[str, str], list[int]]:
    """(domain, split) -> indices of shards not flagged done; [-1] if the flags are absent."""
    out = {}
    for domain in domains:
        for split in SPLITS:
            try:
                flags = np.asarray(group[f"{domain}/{split}/shard_done"][:])
            except KeyError:
                out[(domain, split)] = [-1]
                continue
            missing = [int(i) for i in np.flatnonzero(flags == 0)]
            if missing:
                out[(domain, split)] = missing
    return out
