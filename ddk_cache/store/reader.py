"""Reading a cache store back by sequence (the read side: inspection, sampler, evaluation)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from ddk.cache.errors import DamagedCacheError, IncompleteCacheError, StoreError
from ddk.cache.store.encoding import Encoding, dequantize_logprobs
from ddk.cache.store.id_order import id_by_rank
from ddk.cache.store.integrity import missing_shards, shard_key
from ddk.cache.store.layout import (
    FORMAT_VERSION,
    META_KEY,
    SPLITS,
    local_path,
    target_kind,
    zarr_target,
)
from ddk.cache.teacher.sampled import sampled_target


def read_rows(arr: zarr.Array, indices: np.ndarray) -> np.ndarray:
    """Rows `indices` (sorted, distinct) of a cache array, reading only their chunks.

    Every chunk carries a CRC-32C; a mismatch (bytes altered on disk) becomes a
    DamagedCacheError naming the shard objects that fail, instead of zarr's bare ValueError.
    """
    select = (indices,) + (slice(None),) * (arr.ndim - 1)
    try:
        return np.asarray(arr.get_orthogonal_selection(select))
    except ValueError as e:
        if "checksum" not in str(e):
            raise
        bad = _unreadable_shards(arr, indices)
        raise DamagedCacheError(
            f"cache object {', '.join(bad) or arr.path} fails its checksum (bytes altered on "
            f"disk); run `ddk inspect-cache {_store_location(arr)} --check` to list every "
            "damaged object, then re-run the `ddk cache-teacher` command that built the cache "
            "to rewrite them") from None


def _unreadable_shards(arr: zarr.Array, indices: np.ndarray) -> list[str]:
    """Store keys of the shards holding `indices` that cannot be decoded (read one by one)."""
    per_shard = int((arr.shards or arr.chunks)[0])
    bad = []
    for shard in np.unique(indices // per_shard):
        rows = indices[indices // per_shard == shard]
        try:
            arr.get_orthogonal_selection((rows,) + (slice(None),) * (arr.ndim - 1))
        except ValueError:
            bad.append(shard_key(arr, int(shard)))
    return bad


def _store_location(arr: zarr.Array) -> str:
    """The store's path (local) or URL, for messages."""
    root = getattr(arr.store, "root", None)
    return str(root) if root is not None else str(arr.store)


@dataclass(frozen=True)
class CachedBatch:
    """Sequences read back from the cache, as CPU tensors (see CacheReader.read).

    topk_* hold the sparse teacher target whatever its kind: for a sampled cache the
    drawn ids with log(count / N) (-inf on padding) and a tail of -inf (no tail).
    """

    input_ids: torch.Tensor      # int64 [B, L]
    topk_ids: torch.Tensor       # int64 [B, L-1, k]
    topk_logprobs: torch.Tensor  # float32 [B, L-1, k]
    tail_logmass: torch.Tensor   # float32 [B, L-1]


class CacheReader:
    """Read access to a complete (or, with require_complete=False, partial) cache."""

    def __init__(self, group: zarr.Group, meta: dict[str, Any], path: str) -> None:
        self.group = group
        self.meta = meta
        self.path = path
        self.encoding = Encoding.from_json(meta["encoding"])
        self._arrays: dict[tuple[str, str, str], zarr.Array] = {}
        # rank -> token id of a cache that stores target ids by frequency rank (id_order.py)
        self._id_by_rank = None if self.encoding.id_order is None else id_by_rank(
            self.encoding.id_order, int(meta["teacher"]["vocab_size"]))

    @classmethod
    def open(cls, path: str | Path, *, require_complete: bool = True) -> CacheReader:
        path = str(path)
        local = local_path(path)
        if local is not None and not local.exists():
            raise StoreError(f"no cache at {path}; build one with `ddk cache-teacher`")
        try:
            group = zarr.open_group(zarr_target(path), mode="r")
        except (OSError, ValueError, FileNotFoundError) as e:
            raise StoreError(f"{path} is not a Zarr store: {e}") from e
        meta = group.attrs.get(META_KEY)
        if meta is None:
            raise StoreError(f"{path} is a Zarr store but not a ddk cache (no '{META_KEY}' "
                             "metadata)")
        if int(meta.get("format_version", -1)) > FORMAT_VERSION:
            raise StoreError(f"{path} uses cache format {meta['format_version']}, newer than "
                             f"this ddk understands ({FORMAT_VERSION}); upgrade ddk")
        reader = cls(group, meta, path)
        if require_complete and not meta.get("complete", False):
            missing = reader.missing_shards()
            detail = ", ".join(f"{d}/{s}: {len(v)} shards" for (d, s), v in missing.items())
            raise IncompleteCacheError(
                f"cache {path} is incomplete ({detail or 'not finalised'}); re-run the same "
                "`ddk cache-teacher` command to finish it")
        return reader

    # -- metadata -----------------------------------------------------------------------
    @property
    def domains(self) -> list[str]:
        return list(self.meta["domains"])

    @property
    def k(self) -> int:
        return int(self.meta["k"])

    @property
    def target_kind(self) -> str:
        """"topk" or "sampled" (teacher/sampled.py)."""
        return target_kind(self.meta)

    @property
    def sample_draws(self) -> int | None:
        """Draws per position of a sampled cache (None for top-k)."""
        draws = self.meta.get("target", {}).get("draws")
        return None if draws is None else int(draws)

    @property
    def seq_len(self) -> int:
        return int(self.meta["seq_len"])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["teacher"]["vocab_size"])

    @property
    def tokenizer_fingerprint(self) -> str:
        return str(self.meta["tokenizer"]["fingerprint"])

    @property
    def teacher(self) -> dict[str, Any]:
        return dict(self.meta["teacher"])

    def _check(self, domain: str, split: str) -> None:
        if domain not in self.meta["domains"]:
            raise IncompleteCacheError(f"domain {domain!r} is not in cache {self.path}; "
                                       f"it has: {', '.join(self.domains)}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")

    def num_sequences(self, domain: str, split: str) -> int:
        self._check(domain, split)
        return int(self.meta["domains"][domain][f"{split}_sequences"])

    def num_tokens(self, domain: str, split: str) -> int:
        return self.num_sequences(domain, split) * self.seq_len

    def chunk_sequences(self, domain: str, split: str) -> int:
        return int(self.array(domain, split, "input_ids").chunks[0])

    def array(self, domain: str, split: str, name: str) -> zarr.Array:
        key = (domain, split, name)
        if key not in self._arrays:
            self._check(domain, split)
            self._arrays[key] = self.group[f"{domain}/{split}/{name}"]
        return self._arrays[key]

    def missing_shards(self) -> dict[tuple[str, str], list[int]]:
        return missing_shards(self.group, self.domains)

    def teacher_loss(self, domain: str, indices: Sequence[int] | None = None) -> float:
        """Teacher mean CE per token (nats) on the validation split or a subset of it."""
        self._check(domain, "validation")
        if indices is None:
            info = self.group[f"{domain}/validation"].attrs.get("teacher")
            if info is None:
                raise IncompleteCacheError(f"cache {self.path} has no teacher validation loss "
                                           f"for {domain!r}; re-run `ddk cache-teacher`")
            return float(info["loss"])
        rows = self._read_rows(self.array(domain, "validation", "target_logprob"), indices)
        return float(-rows.astype(np.float64).mean())

    # -- data ---------------------------------------------------------------------------
    def decode_ids(self, stored: np.ndarray) -> np.ndarray:
        """Stored target ids (topk_ids, sample_ids) -> token ids, int64; input_ids are raw."""
        if self._id_by_rank is None:
            return np.asarray(stored).astype(np.int64)
        return self._id_by_rank[np.asarray(stored)]

    @staticmethod
    def _read_rows(arr: zarr.Array, indices: Sequence[int]) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            return np.empty((0,) + arr.shape[1:], dtype=arr.dtype)
        order = np.argsort(idx, kind="stable")
        uniq, inverse = np.unique(idx[order], return_inverse=True)
        rows = read_rows(arr, uniq)
        out = np.empty((idx.size,) + rows.shape[1:], dtype=rows.dtype)
        out[order] = rows[inverse]
        return out

    def read(self, domain: str, split: str, indices: Sequence[int]) -> CachedBatch:
        """Sequences `indices` (any order, repeats allowed); reads only the chunks needed."""
        n = self.num_sequences(domain, split)
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"{domain}/{split} has {n} sequences; got index {idx.max()}")
        step = self.encoding.logprob_step

        def rows(name: str) -> np.ndarray:
            return self._read_rows(self.array(domain, split, name), idx)

        input_ids = torch.from_numpy(rows("input_ids").astype(np.int64))
        if self.target_kind == "sampled":
            ids, logw = sampled_target(self.decode_ids(rows("sample_ids")), rows("sample_counts"),
                                       int(self.sample_draws or 0))
            return CachedBatch(input_ids=input_ids, topk_ids=ids, topk_logprobs=logw,
                               tail_logmass=torch.full(logw.shape[:-1], float("-inf")))
        return CachedBatch(
            input_ids=input_ids,
            topk_ids=torch.from_numpy(self.decode_ids(rows("topk_ids"))),
            topk_logprobs=torch.from_numpy(dequantize_logprobs(rows("topk_logprobs"), step)),
            tail_logmass=torch.from_numpy(dequantize_logprobs(rows("tail_logmass"), step)),
        )
