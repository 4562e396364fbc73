"""Which stored sequences to look at: those of finished shards, and evenly spaced samples.

Shared by the report (report.py measures the top-k mass on a sample) and by --verify
(verify.py re-runs the teacher on a sample of validation sequences), so both count and
pick sequences the same way. Only finished, undamaged shards count: the arrays of an
unfinished shard may hold fill values, those of a damaged one anything.
"""

from __future__ import annotations

import numpy as np
from ddk.cache.store.integrity import IntegrityReport, done_flags
from ddk.cache.store.layout import num_shards
from ddk.cache.store.reader import CacheReader


def finished_sequences(reader: CacheReader, domain: str, split: str,
                       integrity: IntegrityReport | None = None
                       ) -> tuple[np.ndarray, list[int], int]:
    """(indices of sequences in finished shards, missing shard indices, number of shards).

    A split whose shard_done flags are absent counts every shard as missing. With the
    store's `integrity` report, its damaged shards hold no usable sequence, and the flags
    it read are used as they are.
    """
    n = reader.num_sequences(domain, split)
    per_shard = int(reader.meta["sequences_per_shard"])
    key = (domain, split)
    if integrity is not None and key in integrity.flags:
        flags = integrity.flags[key]
    else:
        flags = done_flags(reader.group, domain, split)
    damaged = set() if integrity is None else set(integrity.damaged_shards().get(key, ()))
    if flags is None:
        flags = np.zeros(num_shards(n, per_shard), dtype=np.uint8)
    missing = [int(i) for i in np.flatnonzero(flags == 0)]
    done = [np.arange(s * per_shard, min(n, (s + 1) * per_shard))
            for s in np.flatnonzero(flags != 0) if int(s) not in damaged]
    idx = np.concatenate(done) if done else np.empty(0, dtype=np.int64)
    return idx.astype(np.int64), missing, int(flags.size)


def spread(indices: np.ndarray, count: int) -> np.ndarray:
    """`count` evenly spaced elements of `indices` (deterministic, distinct)."""
    if count >= indices.size:
        return indices
    if count <= 0:
        return indices[:0]
    return indices[np.rint(np.linspace(0, indices.size - 1, count)).astype(np.int64)]

