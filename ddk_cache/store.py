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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from ddk.cache.encoding import Encoding, codec_pipeline, dequantize_logprobs, quantize_logprobs
from ddk.cache.errors import IncompleteCacheError, StoreError, StoreMismatchError
from ddk.cache.teacher.base import TeacherScores
from zarr.errors import ContainsArrayError, ContainsGroupError

# The numcodecs Delta filter is part of the documented format; readers need zarr + numcodecs.
warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3")

FORMAT_VERSION = 1
SPLITS = ("train", "validation")
META_KEY = "ddk"

#: metadata that must match for an existing store to be resumed (see `job_key`).
_RUN_ONLY_KEYS = {"complete", "created_by"}


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _local_path(path: str) -> Path | None:
    if path.startswith("file://"):
        return Path(path[len("file://"):])
    return None if _is_url(path) else Path(path)


def _zarr_target(path: str) -> str:
    """What zarr opens: a plain path for local stores (file:// included), else the URL."""
    local = _local_path(path)
    return str(local) if local is not None else path


def check_writable(path: str) -> None:
    """Fail early, before any teacher work, if a local output location cannot be written."""
    local = _local_path(path)
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


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [prefix]


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


class CacheWriter:
    """Creates or resumes a cache store and writes whole shards into it."""

    def __init__(self, group: zarr.Group, meta: dict[str, Any]) -> None:
        self.group = group
        self.meta = meta
        self.encoding = Encoding.from_json(meta["encoding"])
        self.sequences_per_shard = int(meta["sequences_per_shard"])

    @classmethod
    def open(cls, path: str, meta: dict[str, Any], *, overwrite: bool = False) -> CacheWriter:
        """Open `path` for writing the cache described by `meta`.

        A new store gets its layout; an existing one must have been created with the same
        parameters (teacher, k, seq_len, tokenizer, sources, encoding, split), else
        StoreMismatchError, unless `overwrite` wipes it first.
        """
        check_writable(path)
        try:
            group = _open_for_writing(path, overwrite)
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot open {path} for writing: {e}") from e
        existing = group.attrs.get(META_KEY)
        if existing is None and len(list(group.keys())) > 0:
            # a concurrent worker may have created the layout after we opened the group
            group = zarr.open_group(_zarr_target(path), mode="a")
            existing = group.attrs.get(META_KEY)
        if existing is None:
            if len(list(group.keys())) > 0:
                raise StoreError(f"{path} holds a Zarr store that is not a ddk cache; "
                                 "choose another --output or pass --overwrite to replace it")
            group.attrs[META_KEY] = {**meta, "complete": False}
        else:
            diff = _diff_keys(job_key(existing), job_key(meta))
            if diff:
                raise StoreMismatchError(
                    f"{path} holds a cache built with different parameters "
                    f"({', '.join(diff[:6])}{'...' if len(diff) > 6 else ''}); "
                    "pass --overwrite to rebuild it, or choose another --output")
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
                specs: list[tuple[str, tuple[int, ...], str]] = [
                    ("input_ids", (n, L), ids),
                    ("topk_ids", (n, L - 1, k), ids),
                    ("topk_logprobs", (n, L - 1, k), "uint16"),
                    ("tail_logmass", (n, L - 1), "uint16"),
                ]
                if split == "validation":
                    specs.append(("target_logprob", (n, L - 1), "float32"))
                for name, shape, dtype in specs:
                    if name in g:
                        continue
                    chunk = (1,) + shape[1:]
                    shard = (max(1, min(S, n)),) + shape[1:]
                    _create_array(g, name, shape=shape, dtype=dtype, chunks=chunk, shards=shard,
                                  **codec_pipeline(self.encoding.codec_profile, name, dtype))
                if "shard_done" not in g:
                    _create_array(g, "shard_done", shape=(num_shards(n, S),), dtype="uint8",
                                  chunks=(1,), shards=None, filters=[], compressors=[],
                                  fill_value=0)

    # -- shards -------------------------------------------------------------------------
    def num_shards(self, domain: str, split: str) -> int:
        return num_shards(int(self.meta["domains"][domain][f"{split}_sequences"]),
                          self.sequences_per_shard)

    def shard_range(self, domain: str, split: str, shard: int) -> tuple[int, int]:
        n = int(self.meta["domains"][domain][f"{split}_sequences"])
        start = shard * self.sequences_per_shard
        return start, min(n, start + self.sequences_per_shard)

    def done_flags(self, domain: str, split: str) -> np.ndarray:
        return np.asarray(self.group[f"{domain}/{split}/shard_done"][:])

    def write_shard(self, domain: str, split: str, shard: int, input_ids: np.ndarray,
                    scores: TeacherScores) -> None:
        """Write every array of one shard, then mark it done (the flag is written last)."""
        start, stop = self.shard_range(domain, split, shard)
        if input_ids.shape[0] != stop - start:
            raise ValueError(f"shard {shard} of {domain}/{split} holds {stop - start} "
                             f"sequences, got {input_ids.shape[0]}")
        g = self.group[f"{domain}/{split}"]
        step = self.encoding.logprob_step
        ids = self.encoding.id_dtype
        g["input_ids"][start:stop] = input_ids.astype(ids)
        g["topk_ids"][start:stop] = scores.topk_ids.astype(ids)
        g["topk_logprobs"][start:stop] = quantize_logprobs(scores.topk_logprobs, step)
        g["tail_logmass"][start:stop] = quantize_logprobs(scores.tail_logmass, step)
        if split == "validation":
            g["target_logprob"][start:stop] = scores.target_logprob.astype(np.float32)
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


def _open_for_writing(path: str, overwrite: bool) -> zarr.Group:
    if overwrite:
        return zarr.open_group(_zarr_target(path), mode="w")
    try:
        return zarr.open_group(_zarr_target(path), mode="a")
    except ContainsGroupError:  # a concurrent worker created the root between check and create
        return zarr.open_group(_zarr_target(path), mode="a")


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


@dataclass(frozen=True)
class CachedBatch:
    """Sequences read back from the cache, as CPU tensors (see CacheReader.read)."""

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

    @classmethod
    def open(cls, path: str | Path, *, require_complete: bool = True) -> CacheReader:
        path = str(path)
        local = _local_path(path)
        if local is not None and not local.exists():
            raise StoreError(f"no cache at {path}; build one with `ddk cache-teacher`")
        try:
            group = zarr.open_group(_zarr_target(path), mode="r")
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
        return int(self.array(domain, split, "topk_ids").chunks[0])

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
    @staticmethod
    def _read_rows(arr: zarr.Array, indices: Sequence[int]) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            return np.empty((0,) + arr.shape[1:], dtype=arr.dtype)
        order = np.argsort(idx, kind="stable")
        uniq, inverse = np.unique(idx[order], return_inverse=True)
        rows = arr.get_orthogonal_selection((uniq,) + (slice(None),) * (arr.ndim - 1))
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

        return CachedBatch(
            input_ids=torch.from_numpy(rows("input_ids").astype(np.int64)),
            topk_ids=torch.from_numpy(rows("topk_ids").astype(np.int64)),
            topk_logprobs=torch.from_numpy(dequantize_logprobs(rows("topk_logprobs"), step)),
            tail_logmass=torch.from_numpy(dequantize_logprobs(rows("tail_logmass"), step)),
        )
