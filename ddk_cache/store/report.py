"""`ddk inspect-cache`: storage and fidelity statistics of a teacher cache, as a JSON-able dict.

What it reports, per domain and split and for the whole store:

- storage: sequences, scored tokens, stored bytes (the objects in the store) against
  logical bytes (the decoded arrays in memory), compression ratio, bytes per token and
  per top-k entry, and the same per array;
- fidelity of the cached distribution: top-k probability mass (mean, 5th percentile) on a
  bounded sample, and the teacher's validation loss / perplexity recorded at finalisation;
- integrity: every missing, truncated or (with `check=True`, which reads every object)
  altered object of a finished shard, by store key, against the shard manifests
  (integrity.py); damaged shards are left out of every other figure;
- completeness (missing shards) and layout (chunk/shard shapes, codecs, encoding, identity);
- with `verify=N`, the teacher is re-run on N stored validation sequences and the stored
  values are compared with the exact ones (verify.py), which gives the fidelity figures
  of the docs.

The store is opened with require_complete=False: an unfinished store is inspected, with
its missing shards reported, instead of refused. report_text.py turns the dict into the
text the CLI prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr
from ddk.cache.store.encoding import dequantize_logprobs
from ddk.cache.store.integrity import IntegrityReport, check_store
from ddk.cache.store.layout import SPLITS, split_arrays
from ddk.cache.store.reader import CacheReader, read_rows
from ddk.cache.store.selection import finished_sequences, spread
from ddk.cache.store.verify import verify_cache
from zarr.core.sync import sync

#: sequences per split whose top-k mass is measured (bounds the time on a large cache).
MASS_SAMPLE_SEQUENCES = 64

#: the natural in-memory dtype of each array once decoded (what "logical bytes" counts).
LOGICAL_DTYPES = {"input_ids": "int32", "topk_ids": "int32", "topk_logprobs": "float32",
                  "tail_logmass": "float32", "target_logprob": "float32",
                  "sample_ids": "int32", "sample_counts": "uint8"}
#: the arrays that hold the teacher target, per target kind (their bytes make B/entry)
TARGET_ARRAYS = {"topk": ("topk_ids", "topk_logprobs"),
                 "sampled": ("sample_ids", "sample_counts")}

DEFINITIONS = {
    "tokens": "scored positions = sequences x (seq_len - 1): the positions that hold a "
              "teacher distribution (the last token of a sequence has none)",
    "stored_bytes": "size of every object under the array's prefix in the store (chunks, "
                    "shard indexes, zarr.json); input_ids included",
    "logical_bytes": "decoded arrays in memory: ids as int32, log-probs as float32",
    "compression_ratio": "logical_bytes / stored_bytes",
    "bytes_per_token": "stored_bytes (all arrays, input_ids included) / tokens",
    "bytes_per_topk_entry": "stored bytes of topk_ids + topk_logprobs / (tokens x k); for a "
                            "sampled target, of sample_ids + sample_counts / (tokens x N "
                            "slots)",
    "sample_distinct": "sampled target: distinct drawn ids per position (mean, p95) over the "
                       "sequences of topk_mass, and stored bytes of sample_ids + "
                       "sample_counts per distinct entry (bytes_per_entry)",
    "overhead_bytes": "store objects outside the data arrays: metadata and shard_done flags",
    "topk_mass": f"sum of exp(top-k log-probs) per position, over up to "
                 f"{MASS_SAMPLE_SEQUENCES} evenly spaced finished sequences per split",
    "counted": "only sequences of finished, undamaged shards count (sequences_done)",
    "integrity": "every object of every finished shard against the size (and, with "
                 "--check, the CRC-32) its shard recorded when it was written; damaged "
                 "shards are listed by object and left out of every other figure",
}


# -- storage ----------------------------------------------------------------------------
def _prefix_bytes(store: Any, prefix: str) -> int:
    """Total size of the objects whose key starts with `prefix` (zarr store API, any store)."""

    async def total() -> int:
        size = 0
        async for key in store.list_prefix(prefix):
            size += await store.getsize(key)
        return size

    return int(sync(total()))


def _key(group: zarr.Group, *parts: str) -> str:
    """The store key of `parts` below `group` (the group may sit below the store root)."""
    return "/".join(p for p in (group.path, *parts) if p)


def _logical_bytes(name: str, sequences: int, seq_len: int, k: int) -> int:
    if name == "input_ids":
        per_seq = seq_len
    elif name in (*TARGET_ARRAYS["topk"], *TARGET_ARRAYS["sampled"]):
        per_seq = (seq_len - 1) * k  # k entries (or N slots) per scored position
    else:
        per_seq = seq_len - 1
    return sequences * per_seq * np.dtype(LOGICAL_DTYPES[name]).itemsize


def _ratios(stored: int, logical: int, tokens: int, topk_stored: int, k: int) -> dict[str, Any]:
    return {"compression_ratio": logical / stored if stored else None,
            "bytes_per_token": stored / tokens if tokens else None,
            "bytes_per_topk_entry": topk_stored / (tokens * k) if tokens else None}


def _split_storage(reader: CacheReader, domain: str, split: str, done: int) -> dict[str, Any]:
    """Storage figures of one split; `done` sequences (those of finished shards) count."""
    store = reader.group.store
    L, k = reader.seq_len, reader.k
    arrays = {}
    for name in split_arrays(split, reader.target_kind):
        arrays[name] = {
            "stored_bytes": _prefix_bytes(store, _key(reader.group, domain, split, name) + "/"),
            "logical_bytes": _logical_bytes(name, done, L, k),
        }
    stored = sum(a["stored_bytes"] for a in arrays.values())
    logical = sum(a["logical_bytes"] for a in arrays.values())
    tokens = done * (L - 1)
    topk = sum(arrays[n]["stored_bytes"] for n in TARGET_ARRAYS[reader.target_kind])
    return {"tokens": tokens, "stored_bytes": stored, "logical_bytes": logical,
            **_ratios(stored, logical, tokens, topk, k), "arrays": arrays}


# -- fidelity of what is stored ---------------------------------------------------------
def _topk_mass(reader: CacheReader, domain: str, split: str,
               done: np.ndarray) -> dict[str, Any] | None:
    """Top-k probability mass per position over up to MASS_SAMPLE_SEQUENCES evenly spaced
    sequences of `done`; None when no shard of the split is finished."""
    sample = spread(done, MASS_SAMPLE_SEQUENCES)
    if sample.size == 0 or reader.target_kind != "topk":
        return None
    codes = read_rows(reader.array(domain, split, "topk_logprobs"), sample)
    lp = dequantize_logprobs(codes, reader.encoding.logprob_step).astype(np.float64)
    mass = np.exp(lp).sum(axis=-1).ravel()
    return {"mean": float(mass.mean()), "p5": float(np.percentile(mass, 5)),
            "sampled_sequences": int(sample.size), "positions": int(mass.size)}


def _sample_distinct(reader: CacheReader, domain: str, split: str, done: np.ndarray,
                     target_bytes: int) -> dict[str, Any] | None:
    """Distinct drawn ids per position of a sampled target, over the sequences of
    _topk_mass, and the stored target bytes per distinct entry; None for a top-k cache."""
    sample = spread(done, MASS_SAMPLE_SEQUENCES)
    if sample.size == 0 or reader.target_kind != "sampled":
        return None
    distinct = (read_rows(reader.array(domain, split, "sample_counts"), sample) > 0).sum(-1)
    entries = float(distinct.mean()) * done.size * (reader.seq_len - 1)
    return {"draws": reader.sample_draws, "mean": float(distinct.mean()),
            "p95": float(np.percentile(distinct, 95)), "max": int(distinct.max()),
            "bytes_per_entry": target_bytes / entries if entries else None,
            "sampled_sequences": int(sample.size)}


def _teacher_stats(reader: CacheReader, domain: str) -> dict[str, Any] | str:
    """The teacher's validation loss recorded at finalisation, or "missing" before that."""
    info = reader.group[f"{domain}/validation"].attrs.get("teacher")
    if info is None:
        return "missing"
    return {"loss": float(info["loss"]), "ppl": float(info["ppl"]),
            "tokens": int(info["tokens"])}


# -- layout -----------------------------------------------------------------------------
def _codec_names(arr: zarr.Array) -> list[dict[str, Any]]:
    """The array's codec chain (inside the shard, if sharded), as zarr metadata dicts."""
    return [c.to_dict() for c in (*arr.filters, arr.serializer, *arr.compressors)
            if c is not None]


def _first_array(reader: CacheReader, name: str) -> zarr.Array | None:
    """Array `name` of the first domain/split that holds it (None if none does)."""
    for domain in reader.domains:
        for split in SPLITS:
            try:
                return reader.array(domain, split, name)
            except KeyError:
                continue
    return None


def _layout(reader: CacheReader) -> dict[str, Any]:
    """k, seq_len, shard size, value encoding, and each array's dtype, shapes and codecs."""
    enc = reader.meta["encoding"]
    out: dict[str, Any] = {
        "k": reader.k, "seq_len": reader.seq_len,
        "target": {"kind": reader.target_kind, "draws": reader.sample_draws},
        "sequences_per_shard": int(reader.meta["sequences_per_shard"]),
        "encoding": {"id_dtype": enc["id_dtype"], "logprob_dtype": enc["logprob"]["dtype"],
                     "logprob_step": float(enc["logprob"]["step"]),
                     "logprob_max_abs_error": float(enc["logprob"]["step"]) / 2,
                     "codec_profile": enc["codec_profile"],
                     # target ids stored by frequency rank (id_order.py): how many are ranked
                     "id_order": None if "id_order" not in enc else {
                         "kind": enc["id_order"]["kind"],
                         "ranked": int(enc["id_order"]["ranked"])}},
        "arrays": {},
    }
    # shapes of the first domain/split holding each array (a split smaller than
    # sequences_per_shard has a shorter shard)
    for name in (*split_arrays("validation", reader.target_kind), "shard_done"):
        arr = _first_array(reader, name)
        if arr is not None:
            out["arrays"][name] = {
                "dtype": str(arr.dtype), "chunk_shape": list(arr.chunks),
                "shard_shape": list(arr.shards) if arr.shards else None,
                "codecs": _codec_names(arr)}
    return out


# -- the report -------------------------------------------------------------------------
def _split_report(reader: CacheReader, domain: str, split: str,
                  integrity: IntegrityReport) -> dict[str, Any]:
    """Completeness, storage and fidelity of one domain/split (damaged shards left out)."""
    done, missing, n_shards = finished_sequences(reader, domain, split, integrity)
    storage = _split_storage(reader, domain, split, int(done.size))
    target_bytes = sum(storage["arrays"][n]["stored_bytes"]
                       for n in TARGET_ARRAYS[reader.target_kind])
    entry = {"sequences": reader.num_sequences(domain, split),
             "sequences_done": int(done.size), "num_shards": n_shards,
             "missing_shards": missing,
             "damaged_shards": integrity.damaged_shards().get((domain, split), []),
             **storage,
             "topk_mass": _topk_mass(reader, domain, split, done),
             "sample_distinct": _sample_distinct(reader, domain, split, done, target_bytes)}
    if split == "validation":
        entry["teacher"] = _teacher_stats(reader, domain)
    return entry


def _completeness(reader: CacheReader, domains: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Shards done out of all, and the missing ones as "domain/split" -> shard indices."""
    entries = [e for splits in domains.values() for e in splits.values()]
    total = sum(e["num_shards"] for e in entries)
    return {"complete": bool(reader.meta.get("complete", False)),
            "shards_total": total,
            "shards_done": total - sum(len(e["missing_shards"]) for e in entries),
            "missing_shards": {f"{d}/{s}": e["missing_shards"]
                               for d, splits in domains.items() for s, e in splits.items()
                               if e["missing_shards"]},
            "damaged_shards": {f"{d}/{s}": e["damaged_shards"]
                               for d, splits in domains.items() for s, e in splits.items()
                               if e["damaged_shards"]}}


def _totals(reader: CacheReader, domains: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Sums over every domain and split, plus the whole store's size and overhead."""
    totals = {"sequences": 0, "sequences_done": 0, "tokens": 0}
    arrays: dict[str, dict[str, int]] = {}
    for splits in domains.values():
        for entry in splits.values():
            for key in totals:
                totals[key] += entry[key]
            for name, a in entry["arrays"].items():
                t = arrays.setdefault(name, {"stored_bytes": 0, "logical_bytes": 0})
                t["stored_bytes"] += a["stored_bytes"]
                t["logical_bytes"] += a["logical_bytes"]
    stored = sum(a["stored_bytes"] for a in arrays.values())
    logical = sum(a["logical_bytes"] for a in arrays.values())
    store_bytes = _prefix_bytes(reader.group.store, _key(reader.group) + "/"
                                if reader.group.path else "")
    topk = sum(arrays[n]["stored_bytes"] for n in TARGET_ARRAYS[reader.target_kind]
               if n in arrays)
    return {**totals, "stored_bytes": stored, "logical_bytes": logical,
            "overhead_bytes": store_bytes - stored, "store_bytes": store_bytes,
            **_ratios(stored, logical, totals["tokens"], topk, reader.k),
            "arrays": arrays}


def inspect_cache(path: str | Path, *, verify: int = 0, check: bool = False,
                  teacher: str | None = None, progress: bool = True, device: str = "auto",
                  dtype: str = "fp32") -> dict[str, Any]:
    """Storage, fidelity, integrity, completeness and layout statistics of the cache at `path`.

    Every shard object is checked against its manifest (integrity.py): sizes always,
    CRC-32 too with `check` (reads the whole store). Damaged shards are listed and left
    out of the figures. `verify` > 0 re-runs the teacher (`teacher`, default the path
    recorded in the cache) on that many validation sequences, see `verify.verify_cache`.
    Returns a JSON-able dict; the meaning of each figure is in its "definitions" entry.
    Raises StoreError if `path` is not a ddk cache.
    """
    reader = CacheReader.open(path, require_complete=False)
    meta = reader.meta
    integrity = check_store(reader.group, meta, checksums=check, progress=progress)
    domains = {domain: {split: _split_report(reader, domain, split, integrity)
                        for split in SPLITS}
               for domain in reader.domains}
    report: dict[str, Any] = {
        "path": str(path),
        "format_version": int(meta.get("format_version", 0)),
        "created_by": meta.get("created_by"),
        "teacher": reader.teacher,
        "tokenizer": dict(meta.get("tokenizer", {})),
        "layout": _layout(reader),
        "integrity": integrity.to_dict(),
        "completeness": _completeness(reader, domains),
        "domains": domains,
        "totals": _totals(reader, domains),
        "definitions": DEFINITIONS,
        "verify": None,
    }
    if verify > 0:
        report["verify"] = verify_cache(reader, verify, teacher=teacher, progress=progress,
                                        device=device, dtype=dtype, integrity=integrity)
    return report
