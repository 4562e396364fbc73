"""Creating or resuming a cache store and writing whole shards into it (the write side).

A shard is written whole, then its manifest row, then its flag: a flag is never set for a
partial shard, so a killed job redoes at most the shards it was writing, and several
workers can fill disjoint shards of one store at once. A damaged shard is repaired by
clearing its flag and writing it again. The layout itself is described in layout.py.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import zarr
from ddk.cache.errors import StoreError, StoreMismatchError
from ddk.cache.store.encoding import Encoding, codec_pipeline, quantize_logprobs
from ddk.cache.store.id_order import id_by_rank, rank_of_id, remaps_ids
from ddk.cache.store.integrity import (
    MANIFEST_ARRAY,
    manifest_shape,
    missing_shards,
    record_shard,
    shard_key,
)
from ddk.cache.store.layout import (
    META_KEY,
    SPLITS,
    check_output,
    diff_keys,
    job_key,
    num_shards,
    split_arrays,
    target_kind,
    zarr_target,
)
from ddk.cache.teacher.backend import TeacherScores
from zarr.codecs import Crc32cCodec
from zarr.core.sync import sync
from zarr.errors import ContainsArrayError, ContainsGroupError


class CacheWriter:
    """Creates or resumes a cache store and writes whole shards into it."""

    def __init__(self, group: zarr.Group, meta: dict[str, Any]) -> None:
        self.group = group
        self.meta = meta
        self.encoding = Encoding.from_json(meta["encoding"])
        self.sequences_per_shard = int(meta["sequences_per_shard"])
        self.target = target_kind(meta)
        # target ids -> their frequency rank (pcodec-remap, id_order.py); None: stored raw
        self._rank: np.ndarray | None = None
        if remaps_ids(self.encoding.codec_profile):
            if self.encoding.id_order is None:
                raise ValueError(f"codec profile {self.encoding.codec_profile} needs the id "
                                 "order in the metadata (encoding.id_order, id_order.py)")
            vocab = int(meta["teacher"]["vocab_size"])
            self._rank = rank_of_id(id_by_rank(self.encoding.id_order, vocab))

    def _target_ids(self, ids: np.ndarray) -> np.ndarray:
        """Teacher target ids as stored: raw, or their frequency rank in a remapped cache."""
        if self._rank is not None:
            ids = self._rank[np.asarray(ids, dtype=np.int64)]
        return ids.astype(self.encoding.id_dtype)

    @staticmethod
    def existing(path: str, meta: dict[str, Any], *, overwrite: bool = False
                 ) -> zarr.Group | None:
        """The ddk cache at `path`, read-only, if writing `meta` there would resume it.

        None when the job would create the store (nothing there) or replace it
        (`overwrite`). Raises StoreError for a location that must not be written (see
        layout.check_output) and StoreMismatchError for a cache built with different
        parameters without `overwrite`. Creates and deletes nothing.
        """
        state = check_output(path, overwrite=overwrite)
        if state.kind != "ddk" or overwrite:
            return None
        _check_same_job(path, state.meta or {}, meta)
        return zarr.open_group(zarr_target(path), mode="r")

    @classmethod
    def open(cls, path: str, meta: dict[str, Any], *, overwrite: bool = False) -> CacheWriter:
        """Open `path` for writing the cache described by `meta`.

        A new store gets its layout; an existing one must have been created with the same
        parameters (teacher, k, seq_len, tokenizer, sources, encoding, split), else
        StoreMismatchError, unless `overwrite` replaces it (only ever a ddk cache that
        holds nothing else; see layout.check_output).
        """
        state = check_output(path, overwrite=overwrite)
        try:
            group = _open_for_writing(path, overwrite and state.kind == "ddk")
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot open {path} for writing: {e}") from e
        existing = group.attrs.get(META_KEY)
        if existing is None and len(list(group.keys())) > 0:
            # a concurrent worker may have created the layout after we opened the group
            group = zarr.open_group(zarr_target(path), mode="a")
            existing = group.attrs.get(META_KEY)
        if existing is None:
            if len(list(group.keys())) > 0:
                raise StoreError(f"{path} holds a Zarr store that is not a ddk cache; "
                                 "ddk will not write into it: choose another --output")
            group.attrs[META_KEY] = {**meta, "complete": False}
        else:
            _check_same_job(path, existing, meta)
            meta = {**meta, "complete": bool(existing.get("complete", False))}
        writer = cls(group, meta)
        writer._create_layout()
        return writer

    # -- layout -------------------------------------------------------------------------
    def _create_layout(self) -> None:
        L = int(self.meta["seq_len"])
        k = int(self.meta["k"])
        ids = self.encoding.id_dtype
        S = self.sequences_per_shard
        for domain, info in self.meta["domains"].items():
            for split in SPLITS:
                n = int(info[f"{split}_sequences"])
                g = _require_group(self.group, f"{domain}/{split}")
                specs: list[tuple[str, tuple[int, ...], str]] = [("input_ids", (n, L), ids)]
                if self.target == "sampled":  # k = N slots per position (teacher/sampled.py)
                    specs += [("sample_ids", (n, L - 1, k), ids),
                              ("sample_counts", (n, L - 1, k), "uint8")]
                else:
                    specs += [("topk_ids", (n, L - 1, k), ids),
                              ("topk_logprobs", (n, L - 1, k), "uint16"),
                              ("tail_logmass", (n, L - 1), "uint16")]
                if split == "validation":
                    specs.append(("target_logprob", (n, L - 1), "float32"))
                for name, shape, dtype in specs:
                    if name in g:
                        continue
                    chunk = (1,) + shape[1:]
                    shard = (max(1, min(S, n)),) + shape[1:]
                    _create_array(g, name, shape=shape, dtype=dtype, chunks=chunk, shards=shard,
                                  **codec_pipeline(self.encoding.codec_profile, name, dtype))
                manifest = manifest_shape(split, num_shards(n, S), self.target)
                for name, shape, chunk, dtype, compressors in (
                        (MANIFEST_ARRAY, manifest, (1,) + manifest[1:], "uint64",
                         [Crc32cCodec()]),
                        ("shard_done", manifest[:1], (1,), "uint8", [])):
                    if name not in g:
                        _create_array(g, name, shape=shape, dtype=dtype, chunks=chunk,
                                      shards=None, filters=[], compressors=compressors,
                                      fill_value=0)

    # -- shards -------------------------------------------------------------------------
    def num_shards(self, domain: str, split: str) -> int:
        return num_shards(int(self.meta["domains"][domain][f"{split}_sequences"]),
                          self.sequences_per_shard)

    def shard_range(self, domain: str, split: str, shard: int) -> tuple[int, int]:
        n = int(self.meta["domains"][domain][f"{split}_sequences"])
        start = shard * self.sequences_per_shard
        return start, min(n, start + self.sequences_per_shard)

    def mark_incomplete(self) -> None:
        """Record that the store is not complete (before damaged shards are rewritten)."""
        if self.meta.get("complete"):
            self.meta = {**self.meta, "complete": False}
            self.group.attrs[META_KEY] = self.meta

    def clear_shard(self, domain: str, split: str, shard: int) -> None:
        """Mark a damaged shard not done (flag first, then its manifest row), so that it
        is written again and a kill before that leaves it counted as unfinished."""
        g = self.group[f"{domain}/{split}"]
        g["shard_done"][shard] = 0
        g[MANIFEST_ARRAY][shard] = 0

    def write_shard(self, domain: str, split: str, shard: int, input_ids: np.ndarray,
                    scores: TeacherScores) -> None:
        """Write every array of one shard, then its manifest row, then its done flag."""
        start, stop = self.shard_range(domain, split, shard)
        if input_ids.shape[0] != stop - start:
            raise ValueError(f"shard {shard} of {domain}/{split} holds {stop - start} "
                             f"sequences, got {input_ids.shape[0]}")
        g = self.group[f"{domain}/{split}"]
        # what an earlier, killed or damaged write left of this shard goes first: zarr
        # merges a shard write with the existing object, and a torn one cannot be read
        for name in split_arrays(split, self.target):
            sync(self.group.store.delete(shard_key(g[name], shard)))
        step = self.encoding.logprob_step
        ids = self.encoding.id_dtype
        g["input_ids"][start:stop] = input_ids.astype(ids)
        if self.target == "sampled":
            if scores.sample_ids is None or scores.sample_counts is None:
                raise ValueError("a sampled-target cache needs sampled teacher scores")
            g["sample_ids"][start:stop] = self._target_ids(scores.sample_ids)
            g["sample_counts"][start:stop] = scores.sample_counts.astype(np.uint8)
        else:
            g["topk_ids"][start:stop] = self._target_ids(scores.topk_ids)
            g["topk_logprobs"][start:stop] = quantize_logprobs(scores.topk_logprobs, step)
            g["tail_logmass"][start:stop] = quantize_logprobs(scores.tail_logmass, step)
        if split == "validation":
            g["target_logprob"][start:stop] = scores.target_logprob.astype(np.float32)
        record_shard(self.group, domain, split, shard, self.target)
        g["shard_done"][shard] = 1

    def missing_shards(self) -> dict[tuple[str, str], list[int]]:
        return missing_shards(self.group, self.meta["domains"])

    def finalize(self) -> bool:
        """If every shard is done, record teacher validation losses and mark complete.

        Idempotent and deterministic, so whichever worker finishes last may call it, and
        concurrent calls write identical bytes. Returns whether the store is complete.
        """
        if self.missing_shards():
            return False
        for domain in self.meta["domains"]:
            g = self.group[f"{domain}/validation"]
            target = np.asarray(g["target_logprob"][:], dtype=np.float64)
            loss = float(-target.mean())
            g.attrs["teacher"] = {"loss": loss, "ppl": float(math.exp(loss)),
                                  "tokens": int(target.size)}
        self.meta = {**self.meta, "complete": True}
        self.group.attrs[META_KEY] = self.meta
        return True


def _check_same_job(path: str, existing: dict[str, Any], meta: dict[str, Any]) -> None:
    """StoreMismatchError unless the cache at `path` was built with `meta`'s parameters."""
    diff = diff_keys(job_key(existing), job_key(meta))
    if diff:
        raise StoreMismatchError(
            f"{path} holds a cache built with different parameters "
            f"({', '.join(diff[:6])}{'...' if len(diff) > 6 else ''}); "
            "pass --overwrite to rebuild it, or choose another --output")


def _open_for_writing(path: str, overwrite: bool) -> zarr.Group:
    if overwrite:
        return zarr.open_group(zarr_target(path), mode="w")
    try:
        return zarr.open_group(zarr_target(path), mode="a")
    except ContainsGroupError:  # a concurrent worker created the root between check and create
        return zarr.open_group(zarr_target(path), mode="a")


def _require_group(root: zarr.Group, path: str) -> zarr.Group:
    g = root
    for part in path.split("/"):
        try:
            g = g.require_group(part)
        except ContainsGroupError:  # created by a concurrent worker between check and create
            g = g[part]
        except ContainsArrayError as e:
            raise StoreError(f"{part} in the store is an array, expected a group") from e
    return g


def _create_array(group: zarr.Group, name: str, **kwargs: Any) -> None:
    try:
        group.create_array(name, **kwargs)
    except (ContainsArrayError, ContainsGroupError):  # created by a concurrent worker
        pass
