"""Frequency-ranked target ids: the id order of the `pcodec-remap` codec profile (format 2).

A remapped cache stores every teacher target id (`topk_ids`, `sample_ids`; `input_ids` stay
raw) as its rank in `id_by_rank`: the teacher's vocabulary sorted by descending count in the
packed corpus (every domain's `input_ids`, both splits), ties by ascending id. Frequent ids
become small numbers, which pcodec codes in fewer bits (docs/codecs.md).

The table is a pure function of the packed corpus, which every worker and every resume holds
before the teacher runs, so all of them write with the same table; it is recorded in the
root metadata (`encoding.id_order`, docs/cache-format.md), where the resume check compares it
with the rest of the job. Only the ids that occur in the corpus are listed there, most
frequent first (base64 of their little-endian bytes); every other id follows in ascending
order, as the tie rule says for count 0, so a reader rebuilds the whole table from the list.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np
from ddk.cache.errors import DamagedCacheError

#: codec profiles that store target ids by frequency rank
REMAP_PROFILES = ("pcodec-remap",)
ID_ORDER_KIND = "corpus-frequency"
_DTYPES = {"uint16": "<u2", "int32": "<i4"}


def remaps_ids(profile: str) -> bool:
    return profile in REMAP_PROFILES


def ranked_ids(sequences: Iterable[np.ndarray], vocab_size: int) -> np.ndarray:
    """The ids that occur in `sequences`, by descending count, ties by ascending id."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for seqs in sequences:
        a = np.asarray(seqs, dtype=np.int64).ravel()
        if a.size and (a.min() < 0 or a.max() >= vocab_size):
            raise ValueError(f"token id {int(a.max())} outside the vocabulary ({vocab_size})")
        counts += np.bincount(a, minlength=vocab_size)
    order = np.lexsort((np.arange(vocab_size), -counts))
    return order[: int(np.count_nonzero(counts))]


def id_order_json(ranked: np.ndarray, id_dtype: str) -> dict[str, Any]:
    """`encoding.id_order` for the ids `ranked` (see ranked_ids)."""
    raw = np.asarray(ranked).astype(_DTYPES[id_dtype]).tobytes()
    return {"kind": ID_ORDER_KIND, "arrays": ["topk_ids", "sample_ids"],
            "dtype": _DTYPES[id_dtype], "ranked": len(ranked),
            "ranked_ids": base64.b64encode(raw).decode("ascii"), "crc": zlib.crc32(raw),
            "decode": "id_by_rank[stored]"}


def corpus_id_order(profile: str, sequences: Iterable[np.ndarray], vocab_size: int,
                    id_dtype: str) -> dict[str, Any] | None:
    """`encoding.id_order` of a cache of `profile` over the packed `sequences` (every
    domain and split); None for a profile that stores raw ids."""
    if not remaps_ids(profile):
        return None
    return id_order_json(ranked_ids(sequences, vocab_size), id_dtype)


def id_by_rank(order: dict[str, Any], vocab_size: int) -> np.ndarray:
    """The full table rank -> token id (int64 [vocab_size]) of `encoding.id_order`."""
    raw = base64.b64decode(order["ranked_ids"])
    if zlib.crc32(raw) != int(order["crc"]):
        raise DamagedCacheError("the cache metadata's id order (encoding.id_order) fails its "
                                "CRC-32; the root zarr.json was altered: rebuild the cache "
                                "with `ddk cache-teacher --overwrite`")
    ranked = np.frombuffer(raw, dtype=order["dtype"]).astype(np.int64)
    return np.concatenate([ranked, np.setdiff1d(np.arange(vocab_size), ranked)])


def rank_of_id(table: np.ndarray) -> np.ndarray:
    """The inverse of `table` (token id -> rank), int64."""
    inverse = np.empty_like(table)
    inverse[table] = np.arange(table.size)
    return inverse
