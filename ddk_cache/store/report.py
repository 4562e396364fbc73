"""`ddk inspect-cache`: storage and fidelity statistics of a teacher cache, as a JSON-able dict.

What it reports, per domain and split and for the whole store:

- storage: sequences, scored tokens, stored bytes (the objects in the store) against
  logical bytes (the decoded arrays in memory), compression ratio, bytes per token and
  per top-k entry, and the same per array;
- fidelity of the cached distribution: top-k probability mass (mean, 5th percentile) on a
  bounded sample, and the teacher's validation loss / perplexity recorded at finalisation;
- completeness (missing shards) and layout (chunk/shard shapes, codecs, encoding, identity);
- with `verify=N`, the teacher is re-run on N stored validation sequences and the stored
  values are compared with the exact ones (`verify_cache`), which gives the fidelity
  figures of the docs.

The store is opened with require_complete=False: an unfinished store is inspected, with
its missing shards reported, instead of refused.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from ddk.cache.errors import IncompleteCacheError, TeacherError
from ddk.cache.store.encoding import NEG_INF_CODE, dequantize_logprobs
from ddk.cache.store.layout import SPLITS
from ddk.cache.store.reader import CacheReader

#: sequences per split whose top-k mass is measured (bounds the time on a large cache).
MASS_SAMPLE_SEQUENCES = 64
#: two top-k id sets whose difference lies within this many nats of the exact k-th
#: log-prob count as agreeing (near-ties reorder under different batch shapes/devices).
TIE_TOLERANCE = 1e-3
#: positions per float64 log-softmax block in --verify (bounds memory: block x vocab x 8 B).
_VERIFY_BLOCK = 128

#: the natural in-memory dtype of each array once decoded (what "logical bytes" counts).
LOGICAL_DTYPES = {"input_ids": "int32", "topk_ids": "int32", "topk_logprobs": "float32",
                  "tail_logmass": "float32", "target_logprob": "float32"}

DEFINITIONS = {
    "tokens": "scored positions = sequences x (seq_len - 1): the positions that hold a "
              "teacher distribution (the last token of a sequence has none)",
    "stored_bytes": "size of every object under the array's prefix in the store (chunks, "
                    "shard indexes, zarr.json); input_ids included",
    "logical_bytes": "decoded arrays in memory: ids as int32, log-probs as float32",
    "compression_ratio": "logical_bytes / stored_bytes",
    "bytes_per_token": "stored_bytes (all arrays, input_ids included) / tokens",
    "bytes_per_topk_entry": "stored bytes of topk_ids + topk_logprobs / (tokens x k)",
    "overhead_bytes": "store objects outside the data arrays: metadata and shard_done flags",
    "topk_mass": f"sum of exp(top-k log-probs) per position, over up to "
                 f"{MASS_SAMPLE_SEQUENCES} evenly spaced finished sequences per split",
    "counted": "only sequences of finished shards count (sequences_done)",
}


# -- storage ----------------------------------------------------------------------------
def _prefix_bytes(store: Any, prefix: str) -> int:
    """Total size of the objects whose key starts with `prefix` (zarr store API, any store)."""
    from zarr.core.sync import sync

    async def total() -> int:
        size = 0
        async for key in store.list_prefix(prefix):
            size += await store.getsize(key)
        return size

    return int(sync(total()))


def _key(group: zarr.Group, *parts: str) -> str:
    return "/".join(p for p in (group.path, *parts) if p)


def _done_sequences(reader: CacheReader, domain: str, split: str) -> tuple[np.ndarray, list[int], int]:
    """(indices of sequences in finished shards, missing shard indices, number of shards)."""
    n = reader.num_sequences(domain, split)
    per_shard = int(reader.meta["sequences_per_shard"])
    try:
        flags = np.asarray(reader.array(domain, split, "shard_done")[:])
    except KeyError:
        flags = np.zeros(math.ceil(n / per_shard), dtype=np.uint8)
    missing = [int(i) for i in np.flatnonzero(flags == 0)]
    done = [np.arange(s * per_shard, min(n, (s + 1) * per_shard))
            for s in np.flatnonzero(flags != 0)]
    idx = np.concatenate(done) if done else np.empty(0, dtype=np.int64)
    return idx.astype(np.int64), missing, int(flags.size)


def _array_names(split: str) -> list[str]:
    names = ["input_ids", "topk_ids", "topk_logprobs", "tail_logmass"]
    return names + ["target_logprob"] if split == "validation" else names


def _logical_bytes(name: str, sequences: int, seq_len: int, k: int) -> int:
    per_seq = {"input_ids": seq_len, "topk_ids": (seq_len - 1) * k,
               "topk_logprobs": (seq_len - 1) * k}.get(name, seq_len - 1)
    return sequences * per_seq * np.dtype(LOGICAL_DTYPES[name]).itemsize


def _ratios(stored: int, logical: int, tokens: int, topk_stored: int, k: int) -> dict[str, Any]:
    return {"compression_ratio": logical / stored if stored else None,
            "bytes_per_token": stored / tokens if tokens else None,
            "bytes_per_topk_entry": topk_stored / (tokens * k) if tokens else None}


def _split_storage(reader: CacheReader, domain: str, split: str, done: int) -> dict[str, Any]:
    store = reader.group.store
    L, k = reader.seq_len, reader.k
    arrays = {}
    for name in _array_names(split):
        arrays[name] = {
            "stored_bytes": _prefix_bytes(store, _key(reader.group, domain, split, name) + "/"),
            "logical_bytes": _logical_bytes(name, done, L, k),
        }
    stored = sum(a["stored_bytes"] for a in arrays.values())
    logical = sum(a["logical_bytes"] for a in arrays.values())
    tokens = done * (L - 1)
    topk = arrays["topk_ids"]["stored_bytes"] + arrays["topk_logprobs"]["stored_bytes"]
    return {"tokens": tokens, "stored_bytes": stored, "logical_bytes": logical,
            **_ratios(stored, logical, tokens, topk, k), "arrays": arrays}


# -- fidelity of what is stored ---------------------------------------------------------
def _spread(indices: np.ndarray, count: int) -> np.ndarray:
    """`count` evenly spaced elements of `indices` (deterministic, distinct)."""
    if count >= indices.size:
        return indices
    if count <= 0:
        return indices[:0]
    return indices[np.rint(np.linspace(0, indices.size - 1, count)).astype(np.int64)]


def _rows(arr: zarr.Array, indices: np.ndarray) -> np.ndarray:
    """Rows `indices` (sorted, distinct) of a zarr array, reading only their chunks."""
    return np.asarray(arr.get_orthogonal_selection((indices,) + (slice(None),) * (arr.ndim - 1)))


def _topk_mass(reader: CacheReader, domain: str, split: str, done: np.ndarray) -> dict[str, Any] | None:
    sample = _spread(done, MASS_SAMPLE_SEQUENCES)
    if sample.size == 0:
        return None
    codes = _rows(reader.array(domain, split, "topk_logprobs"), sample)
    lp = dequantize_logprobs(codes, reader.encoding.logprob_step).astype(np.float64)
    mass = np.exp(lp).sum(axis=-1).ravel()
    return {"mean": float(mass.mean()), "p5": float(np.percentile(mass, 5)),
            "sampled_sequences": int(sample.size), "positions": int(mass.size)}


def _teacher_stats(reader: CacheReader, domain: str) -> dict[str, Any] | str:
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


def _layout(reader: CacheReader) -> dict[str, Any]:
    enc = reader.meta["encoding"]
    out: dict[str, Any] = {
        "k": reader.k, "seq_len": reader.seq_len,
        "sequences_per_shard": int(reader.meta["sequences_per_shard"]),
        "encoding": {"id_dtype": enc["id_dtype"], "logprob_dtype": enc["logprob"]["dtype"],
                     "logprob_step": float(enc["logprob"]["step"]),
                     "logprob_max_abs_error": float(enc["logprob"]["step"]) / 2,
                     "codec_profile": enc["codec_profile"]},
        "arrays": {},
    }
    # shapes of the first domain/split holding each array (a split smaller than
    # sequences_per_shard has a shorter shard)
    for name in (*_array_names("validation"), "shard_done"):
        for domain in reader.domains:
            for split in SPLITS:
                if name in out["arrays"]:
                    continue
                try:
                    arr = reader.array(domain, split, name)
                except KeyError:
                    continue
                out["arrays"][name] = {
                    "dtype": str(arr.dtype), "chunk_shape": list(arr.chunks),
                    "shard_shape": list(arr.shards) if arr.shards else None,
                    "codecs": _codec_names(arr)}
    return out


# -- the report -------------------------------------------------------------------------
def inspect_cache(path: str | Path, *, verify: int = 0, teacher: str | None = None,
                  progress: bool = False, device: str = "auto",
                  dtype: str = "fp32") -> dict[str, Any]:
    """Storage, fidelity, completeness and layout statistics of the cache at `path`.

    `verify` > 0 re-runs the teacher (`teacher`, default the path recorded in the cache)
    on that many validation sequences, see `verify_cache`. Returns a JSON-able dict; the
    meaning of each figure is in its "definitions" entry. Raises StoreError if `path` is
    not a ddk cache.
    """
    reader = CacheReader.open(path, require_complete=False)
    meta = reader.meta
    domains: dict[str, Any] = {}
    missing: dict[str, list[int]] = {}
    shards_total = shards_done = 0
    totals_arrays: dict[str, dict[str, int]] = {}
    totals = {"sequences": 0, "sequences_done": 0, "tokens": 0}
    for domain in reader.domains:
        domains[domain] = {}
        for split in SPLITS:
            done, miss, n_shards = _done_sequences(reader, domain, split)
            shards_total += n_shards
            shards_done += n_shards - len(miss)
            if miss:
                missing[f"{domain}/{split}"] = miss
            entry = {"sequences": reader.num_sequences(domain, split),
                     "sequences_done": int(done.size), "num_shards": n_shards,
                     "missing_shards": miss,
                     **_split_storage(reader, domain, split, int(done.size)),
                     "topk_mass": _topk_mass(reader, domain, split, done)}
            if split == "validation":
                entry["teacher"] = _teacher_stats(reader, domain)
            domains[domain][split] = entry
            totals["sequences"] += entry["sequences"]
            totals["sequences_done"] += entry["sequences_done"]
            totals["tokens"] += entry["tokens"]
            for name, a in entry["arrays"].items():
                t = totals_arrays.setdefault(name, {"stored_bytes": 0, "logical_bytes": 0})
                t["stored_bytes"] += a["stored_bytes"]
                t["logical_bytes"] += a["logical_bytes"]
    stored = sum(a["stored_bytes"] for a in totals_arrays.values())
    logical = sum(a["logical_bytes"] for a in totals_arrays.values())
    store_bytes = _prefix_bytes(reader.group.store, _key(reader.group) + "/"
                                if reader.group.path else "")
    topk = sum(totals_arrays[n]["stored_bytes"] for n in ("topk_ids", "topk_logprobs")
               if n in totals_arrays)
    report: dict[str, Any] = {
        "path": str(path),
        "format_version": int(meta.get("format_version", 0)),
        "created_by": meta.get("created_by"),
        "teacher": reader.teacher,
        "tokenizer": dict(meta.get("tokenizer", {})),
        "layout": _layout(reader),
        "completeness": {"complete": bool(meta.get("complete", False)),
                         "shards_total": shards_total, "shards_done": shards_done,
                         "missing_shards": missing},
        "domains": domains,
        "totals": {**totals, "stored_bytes": stored, "logical_bytes": logical,
                   "overhead_bytes": store_bytes - stored, "store_bytes": store_bytes,
                   **_ratios(stored, logical, totals["tokens"], topk, reader.k),
                   "arrays": totals_arrays},
        "definitions": DEFINITIONS,
        "verify": None,
    }
    if verify > 0:
        report["verify"] = verify_cache(reader, verify, teacher=teacher, progress=progress,
                                        device=device, dtype=dtype)
    return report


# -- verify -----------------------------------------------------------------------------
def pick_verify_sequences(reader: CacheReader, n: int) -> list[tuple[str, int]]:
    """n finished validation sequences spread over the domains: round-robin over domains,
    evenly spaced within each (deterministic)."""
    done = {d: _done_sequences(reader, d, "validation")[0] for d in reader.domains}
    counts = dict.fromkeys(done, 0)
    remaining = n
    while remaining > 0:
        progressed = False
        for d, indices in done.items():
            if remaining > 0 and counts[d] < indices.size:
                counts[d] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            break
    return [(d, int(i)) for d in done for i in _spread(done[d], counts[d])]


def _resolve_verify_teacher(reader: CacheReader, teacher: str | None) -> Path:
    recorded = reader.teacher.get("path")
    path = Path(teacher).expanduser() if teacher is not None else (
        Path(recorded) if recorded else None)
    if path is None or not (path / "config.json").is_file():
        where = "given with --teacher" if teacher is not None else "recorded in the cache"
        raise TeacherError(f"cannot verify: the teacher {where} ({path}) is not a local "
                           "transformers model directory; pass --teacher with the directory "
                           "of the teacher that built this cache")
    return path


def _identity_warnings(reader: CacheReader, path: Path) -> list[str]:
    from ddk.cache.teacher.identity import teacher_identity

    now, stored = teacher_identity(path), reader.teacher
    return [f"teacher {field} of {path} ({str(now.get(field))[:12]}) differs from the one "
            f"recorded in the cache ({str(stored.get(field))[:12]}): the errors below then "
            "measure a different model, not the cache"
            for field in ("weights_fingerprint", "config_hash")
            if stored.get(field) is not None and now.get(field) != stored.get(field)]


def _compare(stored: dict[str, np.ndarray], logits: Any, input_ids: Any, k: int,
             step: float) -> dict[str, np.ndarray]:
    """Per-position error measures of one sequence: stored values vs the exact teacher."""
    import torch
    from ddk.cache.teacher.topk import scores_from_logits

    # exact log-prob of each stored id and exact log-mass outside the stored ids, in float64,
    # a block of positions at a time to bound memory on large vocabularies
    ids = torch.as_tensor(stored["topk_ids"].astype(np.int64), device=logits.device)
    a_parts, b_parts = [], []
    for start in range(0, ids.shape[0], _VERIFY_BLOCK):
        block = slice(start, start + _VERIFY_BLOCK)
        logp = torch.log_softmax(logits[0, :-1][block].double(), dim=-1)  # [t, V]
        a_parts.append(torch.gather(logp, -1, ids[block]).cpu())
        b_parts.append(torch.logsumexp(logp.scatter_(-1, ids[block], float("-inf")), -1).cpu())
        del logp
    a_exact = torch.cat(a_parts).numpy()
    b_exact = torch.cat(b_parts).numpy()
    exact = scores_from_logits(logits, input_ids, k)  # same maths as the cache job (consumes)
    a_st = stored["topk_logprobs"].astype(np.float64)
    b_st = stored["tail_logmass"].astype(np.float64)

    lp_err = np.abs(a_st - a_exact)
    same = np.all(np.sort(stored["topk_ids"], -1) == np.sort(exact.topk_ids[0], -1), axis=-1)
    kth = exact.topk_logprobs[0][:, -1].astype(np.float64)
    near_tie = a_exact.min(axis=-1) >= kth - TIE_TOLERANCE

    floor = -step * (NEG_INF_CODE - 1)  # quantisation saturates below this
    tail_exact = exact.tail_logmass[0].astype(np.float64)
    in_range = tail_exact > floor
    both_inf = np.isneginf(tail_exact) & np.isneginf(b_st)
    tail_err = np.where(both_inf, 0.0, np.abs(b_st - tail_exact))

    # KL(exact || stored) over the k + 1 buckets (stored ids + tail); the stored buckets
    # are renormalised so the KL is a proper divergence (>= 0).
    p_log = np.concatenate([a_exact, b_exact[:, None]], axis=-1)
    q_log = np.concatenate([a_st, b_st[:, None]], axis=-1)
    q_log = q_log - np.logaddexp.reduce(q_log, axis=-1, keepdims=True)
    p = np.exp(p_log)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (p_log - q_log), 0.0)
    return {"lp_err": lp_err.ravel(), "ids_same": same, "ids_agree": same | near_tie,
            "tail_err": tail_err[in_range], "tail_out_of_range": np.array([(~in_range).sum()]),
            "kl": terms.sum(axis=-1),
            "target_stored": stored["target_logprob"].astype(np.float64),
            "target_exact": exact.target_logprob[0].astype(np.float64)}


def verify_cache(reader: CacheReader, n: int, *, teacher: str | None = None,
                 progress: bool = False, device: str = "auto",
                 dtype: str = "fp32") -> dict[str, Any]:
    """Re-run the teacher (transformers backend) on n stored validation sequences and
    measure how far the stored values are from the exact ones.

    Returns max/mean abs error of the stored top-k log-probs (vs the exact log-probs of
    the same ids), top-k id agreement (exact, and ignoring near-ties within
    TIE_TOLERANCE nats), max abs error of the tail log-mass, KL(exact || stored) over the
    top-k + tail buckets per position, and the teacher-loss difference. Quantisation alone
    bounds the log-prob and tail errors by step / 2.
    """
    import torch
    from ddk.cache.teacher.transformers_backend import TransformersTeacher

    picks = pick_verify_sequences(reader, n)
    if not picks:
        raise IncompleteCacheError(f"cannot verify {reader.path}: no validation shard is "
                                   "finished yet; re-run `ddk cache-teacher` to fill it")
    path = _resolve_verify_teacher(reader, teacher)
    warnings = _identity_warnings(reader, path)
    t0 = time.perf_counter()
    model = TransformersTeacher(path, dtype=dtype, device=device)
    if model.vocab_size < reader.vocab_size:
        raise TeacherError(f"teacher at {path} has {model.vocab_size} output rows but the "
                           f"cache holds ids up to {reader.vocab_size}; pass --teacher with "
                           "the teacher that built this cache")
    step = reader.encoding.logprob_step
    parts: list[dict[str, np.ndarray]] = []
    iterator: Any = picks
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(picks, desc="verify", unit="seq")
    try:
        for domain, index in iterator:
            stored = _read_stored(reader, domain, index, step)
            ids = torch.as_tensor(stored["input_ids"].astype(np.int64))[None].to(model.device)
            with torch.inference_mode():
                logits = model.model(input_ids=ids, use_cache=False).logits.float()
                parts.append(_compare(stored, logits, ids, reader.k, step))
    finally:
        model.close()
    def cat(key: str) -> np.ndarray:
        return np.concatenate([p[key] for p in parts])

    lp_err, kl, tail_err = cat("lp_err"), cat("kl"), cat("tail_err")
    t_st, t_ex = cat("target_stored"), cat("target_exact")
    return {
        "requested": n, "sequences": len(picks),
        "per_domain": {d: sum(1 for dd, _ in picks if dd == d) for d in reader.domains},
        "positions": int(kl.size),
        "teacher_path": str(path), "device": str(model.device), "dtype": dtype,
        "warnings": warnings,
        "quantization_bound": step / 2,
        "topk_logprob_abs_error": {"max": float(lp_err.max()), "mean": float(lp_err.mean())},
        "topk_id_agreement": float(cat("ids_agree").mean()),
        "topk_id_exact_match": float(cat("ids_same").mean()),
        "tie_tolerance": TIE_TOLERANCE,
        "tail_logmass_abs_error": {"max": float(tail_err.max()) if tail_err.size else None,
                                   "positions_below_range": int(cat("tail_out_of_range").sum())},
        "kl_exact_vs_stored": {"mean": float(kl.mean()), "max": float(kl.max())},
        "teacher_loss": {"stored": float(-t_st.mean()), "exact": float(-t_ex.mean()),
                         "difference": float(-t_st.mean() + t_ex.mean()),
                         "target_logprob_max_abs_error": float(np.abs(t_st - t_ex).max())},
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _read_stored(reader: CacheReader, domain: str, index: int, step: float
                 ) -> dict[str, np.ndarray]:
    """One stored validation sequence, log-probs decoded to float32."""
    idx = np.array([index], dtype=np.int64)
    out = {name: _rows(reader.array(domain, "validation", name), idx)[0]
           for name in _array_names("validation")}
    for name in ("topk_logprobs", "tail_logmass"):
        out[name] = dequantize_logprobs(out[name], step)
    return out


# -- human-readable table ---------------------------------------------------------------
def human_bytes(n: float | None) -> str:
    """1536 -> '1.5 KiB' (binary units)."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "-" if x is None else x if isinstance(x, str) else format(x, spec)


def _table(header: list[str], rows: list[list[str]], left: int = 2) -> list[str]:
    """Aligned columns: the first `left` columns left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()

    return [line(header), line(["-" * w for w in widths]), *map(line, rows)]


def _header_lines(report: dict[str, Any]) -> list[str]:
    lay, t, enc = report["layout"], report["teacher"], report["layout"]["encoding"]
    state = "complete" if report["completeness"]["complete"] else "INCOMPLETE"
    return [
        (f"cache {report['path']}  (format {report['format_version']}, {state}, "
         f"{report['created_by']})"),
        (f"teacher    {t.get('name')} ({t.get('model_type')}, {t.get('dtype')}, "
         f"{t.get('backend')}), vocab {t.get('vocab_size')}, weights "
         f"{str(t.get('weights_fingerprint'))[:12]}, config {str(t.get('config_hash'))[:12]}"),
        f"tokenizer  {str(report['tokenizer'].get('fingerprint'))[:12]}",
        (f"k {lay['k']}, seq_len {lay['seq_len']}, {lay['sequences_per_shard']} sequences per "
         f"shard; log-probs {enc['logprob_dtype']} step {enc['logprob_step']:g} (max error "
         f"{enc['logprob_max_abs_error']:g} nats), ids {enc['id_dtype']}, codecs "
         f"{enc['codec_profile']}"),
    ]


def _storage_row(name: str, split: str, e: dict[str, Any]) -> list[str]:
    seqs = str(e["sequences_done"])
    if e["sequences_done"] != e["sequences"]:
        seqs += f"/{e['sequences']}"
    return [name, split, seqs, str(e["tokens"]), human_bytes(e["stored_bytes"]),
            human_bytes(e["logical_bytes"]), _fmt(e["compression_ratio"]),
            _fmt(e["bytes_per_token"]), _fmt(e["bytes_per_topk_entry"], ".3f")]


def _storage_lines(report: dict[str, Any]) -> list[str]:
    tot = report["totals"]
    rows = [_storage_row(d, s, e) for d, splits in report["domains"].items()
            for s, e in splits.items()]
    rows.append(_storage_row("total", "", tot))
    out = [("Storage  (tokens = sequences x (seq_len-1) scored positions; stored bytes include "
           "input_ids; logical = int32 ids + float32 log-probs)")]
    out += _table(["domain", "split", "seqs", "tokens", "stored", "logical", "ratio",
                   "B/token", "B/entry"], rows)
    out.append(f"store total {human_bytes(tot['store_bytes'])} (incl. "
               f"{human_bytes(tot['overhead_bytes'])} of metadata and shard flags)")
    rows = [[name, human_bytes(a["stored_bytes"]), human_bytes(a["logical_bytes"]),
             _fmt(a["logical_bytes"] / a["stored_bytes"] if a["stored_bytes"] else None)]
            for name, a in tot["arrays"].items()]
    return out + ["", "Per array (all domains and splits)",
                  *_table(["array", "stored", "logical", "ratio"], rows, left=1)]


def _fidelity_lines(report: dict[str, Any]) -> list[str]:
    rows = []
    for domain, splits in report["domains"].items():
        for split, e in splits.items():
            m = e["topk_mass"] or {}
            te = e.get("teacher")
            loss = ppl = "-" if te is None else "missing"
            if isinstance(te, dict):
                loss, ppl = f"{te['loss']:.4f}", f"{te['ppl']:.2f}"
            rows.append([domain, split, _fmt(m.get("mean"), ".4f"), _fmt(m.get("p5"), ".4f"),
                         str(m.get("sampled_sequences", 0)), loss, ppl])
    title = (f"Fidelity  (top-k mass over up to {MASS_SAMPLE_SEQUENCES} sequences per split; "
             "teacher loss in nats/token over the whole validation split)")
    return [title, *_table(["domain", "split", "mass mean", "mass p5", "sampled", "loss",
                            "ppl"], rows)]


def _completeness_lines(report: dict[str, Any]) -> list[str]:
    comp = report["completeness"]
    out = [f"Completeness  {comp['shards_done']}/{comp['shards_total']} shards done"]
    for name, miss in comp["missing_shards"].items():
        shown = ", ".join(map(str, miss[:20])) + (", ..." if len(miss) > 20 else "")
        out.append(f"  {name}: missing shards {shown}")
    return out


def _layout_lines(report: dict[str, Any]) -> list[str]:
    rows = [[name, a["dtype"], "x".join(map(str, a["chunk_shape"])),
             "x".join(map(str, a["shard_shape"])) if a["shard_shape"] else "-",
             " > ".join(c["name"] for c in a["codecs"]) or "-"]
            for name, a in report["layout"]["arrays"].items()]
    return ["Layout", *_table(["array", "dtype", "chunk", "shard", "codecs (inside a shard)"],
                              rows, left=5)]


def _verify_lines(v: dict[str, Any]) -> list[str]:
    err, kl, tail, tl = (v["topk_logprob_abs_error"], v["kl_exact_vs_stored"],
                         v["tail_logmass_abs_error"], v["teacher_loss"])
    tail_note = (f" ({tail['positions_below_range']} positions below the quantisation range)"
                 if tail["positions_below_range"] else "")
    return [
        (f"Verify  {v['sequences']} validation sequences ({v['positions']} positions), teacher "
         f"{v['teacher_path']} on {v['device']} {v['dtype']}"),
        *[f"  WARNING: {w}" for w in v["warnings"]],
        (f"  top-k log-prob abs error  max {err['max']:.2e}  mean {err['mean']:.2e}  "
         f"(quantisation bound {v['quantization_bound']:.2e})"),
        (f"  top-k id agreement        {v['topk_id_agreement']:.4f}  (exact match "
         f"{v['topk_id_exact_match']:.4f}; ties within {v['tie_tolerance']:g} nats ignored)"),
        f"  tail log-mass abs error   max {_fmt(tail['max'], '.2e')}{tail_note}",
        f"  KL(exact || stored)       mean {kl['mean']:.2e}  max {kl['max']:.2e} nats/position",
        (f"  teacher loss              stored {tl['stored']:.5f}  exact {tl['exact']:.5f}  "
         f"difference {tl['difference']:.2e}"),
    ]


def format_report(report: dict[str, Any]) -> str:
    """The report as aligned text sections (storage, fidelity, completeness, layout, verify)."""
    sections = [_header_lines(report), _storage_lines(report), _fidelity_lines(report),
                _completeness_lines(report), _layout_lines(report)]
    if report.get("verify"):
        sections.append(_verify_lines(report["verify"]))
    return "\n\n".join("\n".join(lines) for lines in sections)
