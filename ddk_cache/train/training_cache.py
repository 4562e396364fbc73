"""Open a teacher cache for training or evaluation, with the checks both need up front.

The store's reader already refuses an incomplete cache; a trainer also needs, for every domain,
train sequences to draw, validation sequences to score and the teacher's validation loss to
compare against. Missing any of them is one clear IncompleteCacheError here, before a student
is loaded, instead of a KeyError mid-run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddk.cache.errors import IncompleteCacheError

__all__ = ["open_cache"]


def open_cache(path: str | Path) -> Any:
    """Open a complete cache and check it has train and validation data for every domain."""
    from ddk.cache.store.reader import CacheReader

    reader = CacheReader.open(str(path))  # IncompleteCacheError / StoreError on its own
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
