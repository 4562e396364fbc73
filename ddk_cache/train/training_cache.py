"""Open a teacher cache for training or evaluation, with the checks both need up front.

The store's reader already refuses an incomplete cache; a trainer also needs, for every domain,
train sequences to draw, validation sequences to score and the teacher's validation loss to
compare against. Missing any of them is one clear IncompleteCacheError here, before a student
is loaded, instead of a KeyError mid-run. A store with a missing, truncated or altered
object (checked against the shard manifests: sizes, and CRC-32 for stores up to
FULL_CHECK_BYTES) is one DamagedCacheError naming the objects; in a larger store, bytes
altered in place are caught when read (reader.read_rows), since every chunk carries a
checksum.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddk.cache.errors import DamagedCacheError, IncompleteCacheError

__all__ = ["FULL_CHECK_BYTES", "open_cache"]

#: stores up to this size have every object's CRC-32 read at start (about a second);
#: larger ones get the size check only, and each chunk's checksum is verified as it is read.
FULL_CHECK_BYTES = 1 << 30


def open_cache(path: str | Path) -> Any:
    """Open a complete cache and check it has train and validation data for every domain."""
    from ddk.cache.store.integrity import check_store
    from ddk.cache.store.reader import CacheReader

    reader = CacheReader.open(str(path))  # IncompleteCacheError / StoreError on its own
    integrity = check_store(reader.group, reader.meta, checksums=True,
                            max_checksum_bytes=FULL_CHECK_BYTES)
    if not integrity.ok:
        raise DamagedCacheError(
            f"cache {path} is damaged: {integrity.describe()}; run `ddk inspect-cache {path} "
            "--check` for the full list, then re-run the `ddk cache-teacher` command that "
            "built it to rewrite the damaged shards")
    if not reader.domains:
        raise IncompleteCacheError(f"cache {path} has no domains; rebuild it with "
                                   "`ddk cache-teacher` on a corpus with at least one domain")
    for d in reader.domains:
        for split in ("train", "validation"):
            try:
                reader.array(d, split, "input_ids")
            except KeyError as e:
                raise IncompleteCacheError(
                    f"cache {path} lists domain {d!r} but its {split} data is missing from the "
                    "store; re-run `ddk cache-teacher` to rebuild it") from e
            if reader.num_sequences(d, split) <= 0:
                raise IncompleteCacheError(
                    f"domain {d!r} in cache {path} has no {split} sequences; DDK needs both "
                    "splits for every domain: add text to it or drop it and rebuild the cache")
        try:
            reader.teacher_loss(d)  # IncompleteCacheError if the teacher val loss is missing
        except KeyError as e:
            raise IncompleteCacheError(f"cache {path} has no teacher validation data for {d!r}; "
                                       "re-run `ddk cache-teacher` to rebuild it") from e
    return reader
