"""The teacher cache on disk: a Zarr v3 store, written shard by shard and read by sequence.

Layout (specified in docs/cache-format.md, readable with plain zarr):

    /                               root group; attrs["ddk"] = metadata (format, teacher, ...)
    /{domain}/{split}/              split in ("train", "validation")
        input_ids      [n, L]          token ids
        topk_ids       [n, L-1, k]     teacher top-k ids, rank order
        topk_logprobs  [n, L-1, k]     uint16 quantised log-probs (encoding.py)
        tail_logmass   [n, L-1]        uint16 quantised log(1 - sum top-k probs)
          or, for a sampled target (format 2, metadata "target": {"kind": "sampled"}):
        sample_ids     [n, L-1, N]     drawn ids, then padding ids (teacher/sampled.py)
        sample_counts  [n, L-1, N]     uint8 draw counts (0: padding); weight = count / N
        target_logprob [n, L-1]        float32 teacher log-prob of the next token (validation only)
        shard_manifest [num_shards, arrays, 3]  uint64, per array: written, bytes, CRC-32
        shard_done     [num_shards]    uint8, 1 once every array of that shard is written

The unit of work and of atomicity is the shard (`sequences_per_shard` sequences): a shard
is written whole, then its manifest row (integrity.py), then its flag; a flag is never set
for a partial shard, so a killed job redoes at most the shards it was writing. Each flag
and manifest row is its own object, so several workers can fill disjoint shards of one
store concurrently.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zarr
from ddk.cache.errors import StoreError

# The numcodecs Delta filter is part of the documented format; readers need zarr + numcodecs.
warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3")

#: 2 added the sampled target (metadata "target"); a store without "target" is top-k.
FORMAT_VERSION = 2
TARGET_KINDS = ("topk", "sampled")
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


@dataclass(frozen=True)
class OutputState:
    """What an output location holds before a cache job writes there.

    kind: "absent" (nothing, or an empty directory), "ddk" (a ddk cache; `meta` is its
    metadata) or "foreign" (anything else). `foreign` lists a few entries that a ddk cache
    does not hold: those ddk will never delete.
    """

    kind: str
    meta: dict[str, Any] | None = None
    foreign: tuple[str, ...] = ()


def output_state(path: str) -> OutputState:
    """Classify `path` (local directories only; a URL is "absent" or "ddk" by its metadata)."""
    local = local_path(path)
    if local is None:
        try:
            meta = zarr.open_group(path, mode="r").attrs.get(META_KEY)
        except (OSError, ValueError, KeyError):
            return OutputState("absent")
        return OutputState("ddk", meta) if meta is not None else OutputState("absent")
    if not local.is_dir() or not any(local.iterdir()):
        return OutputState("absent")
    meta = _root_meta(local)
    if meta is None and [p.name for p in local.iterdir()] == ["zarr.json"]:
        # an empty Zarr group: what a worker started at the same moment has just created,
        # before it records the ddk metadata; writing into it deletes nothing
        return OutputState("absent")
    foreign = _foreign_entries(local)
    return OutputState("foreign" if meta is None else "ddk", meta, foreign)


def _root_meta(root: Path) -> dict[str, Any] | None:
    """The ddk metadata in `root`/zarr.json, None if there is none (or it is not JSON)."""
    try:
        doc = json.loads((root / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    meta = doc.get("attributes", {}).get(META_KEY) if isinstance(doc, dict) else None
    return meta if isinstance(meta, dict) else None


def _foreign_entries(root: Path, limit: int = 5) -> tuple[str, ...]:
    """Up to `limit` files under `root` that a ddk cache does not hold: anything but the
    zarr.json of a node and the chunk objects below an array's `c/` directory."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames.sort()
        if here.name == "c" and (here.parent / "zarr.json").is_file():
            dirnames[:] = []  # chunk objects of an array
            continue
        out += [str((here / name).relative_to(root)) for name in sorted(filenames)
                if name != "zarr.json"]
        if len(out) >= limit:
            break
    return tuple(out[:limit])


def check_output(path: str, *, overwrite: bool) -> OutputState:
    """Fail early, before any teacher work, unless a cache may be written at `path`.

    Refused: a location that cannot be written, a non-empty directory that is not a ddk
    cache (with or without --overwrite: ddk deletes nothing it did not write), and
    --overwrite of a ddk cache that also holds other files.
    """
    check_writable(path)
    state = output_state(path)
    if state.kind == "foreign":
        shown = ", ".join(state.foreign) or "other content"
        raise StoreError(f"output location {path} is not empty and is not a ddk cache "
                         f"(it holds {shown}); ddk will neither write into it nor delete it: "
                         "choose another --output")
    if state.kind == "ddk" and overwrite and state.foreign:
        raise StoreError(f"--overwrite would delete {path}, a ddk cache that also holds files "
                         f"ddk did not write ({', '.join(state.foreign)}); move them out "
                         "first, or choose another --output")
    return state


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


def target_kind(meta: dict[str, Any]) -> str:
    """"topk" or "sampled": the kind of teacher target the cache stores."""
    return str(meta.get("target", {}).get("kind", "topk"))


def split_arrays(split: str, kind: str = "topk") -> list[str]:
    """The data arrays of one split, in layout order (target_logprob is validation only)."""
    target = ["sample_ids", "sample_counts"] if kind == "sampled" else [
        "topk_ids", "topk_logprobs", "tail_logmass"]
    names = ["input_ids", *target]
    return names + ["target_logprob"] if split == "validation" else names


def num_shards(num_sequences: int, sequences_per_shard: int) -> int:
    return math.ceil(num_sequences / sequences_per_shard)
