"""What the cache's integrity checks cost: the manifest on the write side, the checks on the
read side, each as a ratio to a baseline measured in the same run.

    write   CacheWriter.write_shard with its manifest row (every object read back once and
            CRC-32'd) vs the same writes with the manifest step skipped
    sizes   check_store(checksums=False) (a listing: what train-student / eval always run)
            vs reading the root metadata alone
    crc     check_store(checksums=True) (`inspect-cache --check`, a cache-teacher re-run)
            vs reading every file of the store with plain Python

The store is synthetic (random ids and log-probs, so it compresses like a hard case), written
by ddk's own CacheWriter in a temporary directory.

    python bench/bench_integrity.py [--sequences 256] [--seq-len 512] [--k 64] [--repeat 3]
                                    [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _scores(n: int, L: int, k: int, vocab: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    logp = np.sort(-rng.exponential(2.0, size=(n, L - 1, k)).astype(np.float32), axis=-1)[..., ::-1]
    return {"input_ids": rng.integers(0, vocab, size=(n, L), dtype=np.int64),
            "topk_ids": rng.integers(0, vocab, size=(n, L - 1, k), dtype=np.int64),
            "topk_logprobs": np.ascontiguousarray(logp),
            "tail": np.log(rng.uniform(0.01, 0.5, size=(n, L - 1))).astype(np.float32),
            "target": -rng.exponential(3.0, size=(n, L - 1)).astype(np.float32)}


def _meta(n: int, L: int, k: int, vocab: int, per_shard: int) -> dict[str, Any]:
    from ddk.cache.store.encoding import Encoding, id_dtype_for_vocab
    from ddk.cache.store.integrity import MANIFEST_META

    enc = Encoding(id_dtype=id_dtype_for_vocab(vocab), logprob_step=1 / 64,
                   codec_profile="pcodec")
    return {"format_version": 1, "created_by": "bench_integrity", "k": k, "seq_len": L,
            "teacher": {"vocab_size": vocab}, "encoding": enc.to_json(),
            "sequences_per_shard": per_shard, "shard_manifest": MANIFEST_META,
            "domains": {"bench": {"train_sequences": n, "validation_sequences": per_shard}}}


def _write(root: Path, meta: dict[str, Any], s: dict[str, np.ndarray], manifest: bool) -> float:
    """Seconds to write every shard (train and validation) with CacheWriter."""
    from ddk.cache.store import writer as writer_module
    from ddk.cache.teacher.backend import TeacherScores

    w = writer_module.CacheWriter.open(str(root), meta)
    record = writer_module.record_shard
    if not manifest:
        writer_module.record_shard = lambda *a, **kw: None
    try:
        t = time.perf_counter()
        for split in ("train", "validation"):
            for shard in range(w.num_shards("bench", split)):
                a, b = w.shard_range("bench", split, shard)
                w.write_shard("bench", split, shard, s["input_ids"][a:b], TeacherScores(
                    s["topk_ids"][a:b], s["topk_logprobs"][a:b], s["tail"][a:b],
                    s["target"][a:b]))
        seconds = time.perf_counter() - t
    finally:
        writer_module.record_shard = record
    w.finalize()
    return seconds


def _read_every_file(root: Path) -> tuple[float, int]:
    t = time.perf_counter()
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(Path(dirpath) / name, "rb") as f:
                total += len(f.read())
    return time.perf_counter() - t, total


def _best(fn, repeat: int) -> float:
    return min(fn() for _ in range(repeat))


def bench(sequences: int, seq_len: int, k: int, repeat: int) -> dict[str, Any]:
    import zarr
    from ddk.cache.store.integrity import check_store

    vocab, per_shard = 49152, 16
    s = _scores(sequences + per_shard, seq_len, k, vocab, seed=0)
    meta = _meta(sequences, seq_len, k, vocab, per_shard)
    with tempfile.TemporaryDirectory() as tmp:
        roots = {m: Path(tmp) / f"store-{m}" for m in ("with", "without")}
        write = {m: [] for m in roots}
        for i in range(repeat):  # alternate, each into a fresh store
            for m, root in roots.items():
                target = root.with_name(f"{root.name}-{i}")
                write[m].append(_write(target, meta, s, manifest=m == "with"))
        store = roots["with"].with_name(f"{roots['with'].name}-0")
        group = zarr.open_group(str(store), mode="r")
        stored_meta = group.attrs["ddk"]

        def timed(fn) -> float:
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t

        sizes = _best(lambda: timed(lambda: check_store(group, stored_meta, checksums=False)),
                      repeat)
        root_meta = _best(lambda: timed(lambda: zarr.open_group(str(store), mode="r")
                                        .attrs["ddk"]), repeat)
        crc = _best(lambda: timed(lambda: check_store(group, stored_meta, checksums=True)),
                    repeat)
        raw = min(_read_every_file(store)[0] for _ in range(repeat))
        store_bytes = _read_every_file(store)[1]
        report = check_store(group, stored_meta, checksums=True)
    w_with, w_without = min(write["with"]), min(write["without"])
    return {
        "sequences": sequences, "seq_len": seq_len, "k": k, "store_bytes": store_bytes,
        "shard_objects": report.objects_checked, "intact": report.ok,
        "write_s": {"with_manifest": w_with, "without_manifest": w_without,
                    "ratio": w_with / w_without},
        "sizes_check_s": {"check": sizes, "baseline_root_metadata": root_meta,
                          "ratio": sizes / root_meta},
        "crc_check_s": {"check": crc, "baseline_read_every_file": raw, "ratio": crc / raw,
                        "MiB_per_s": store_bytes / crc / 2**20},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sequences", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    r = bench(a.sequences, a.seq_len, a.k, a.repeat)
    if a.json:
        print(json.dumps(r, indent=2))
        return
    mib = r["store_bytes"] / 2**20
    print(f"store: {r['sequences']} train sequences x {r['seq_len']} tokens, k {r['k']}: "
          f"{mib:.1f} MiB, {r['shard_objects']} shard objects, intact: {r['intact']}")
    w, sz, c = r["write_s"], r["sizes_check_s"], r["crc_check_s"]
    print(f"write   with manifest {w['with_manifest']:.3f}s  without {w['without_manifest']:.3f}s"
          f"  ratio {w['ratio']:.3f}")
    print(f"sizes   check {sz['check'] * 1e3:.1f} ms  root metadata alone "
          f"{sz['baseline_root_metadata'] * 1e3:.1f} ms  ratio {sz['ratio']:.1f}")
    print(f"crc     check {c['check']:.3f}s  read every file {c['baseline_read_every_file']:.3f}s"
          f"  ratio {c['ratio']:.2f}  ({c['MiB_per_s']:.0f} MiB/s)")


if __name__ == "__main__":
    main()
