"""Loader throughput: how many tokens/s the cache reader + PrefetchLoader deliver.

Compares reading in the consumer thread (read_plan) with the background PrefetchLoader (the
consumer does no work, so this is the loader's ceiling), on the same sampled index stream the
trainer would draw (uniform domain weights). Compare the result with the trainer's consumption
(bench/bench_train.py prints tokens/s; pass it as --trainer-tok-s) to see the headroom.

    python bench/bench_loader.py --cache CACHE [--batch-size 8] [--batches 100] [--depth 8]
                                 [--workers 2] [--trainer-tok-s 12000] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

from ddk.cache.train.sampler import DomainSampler, PrefetchLoader, read_plan
from ddk.cache.train.training_cache import open_cache


def _sampler(reader) -> DomainSampler:
    sizes = [reader.num_sequences(d, "train") for d in reader.domains]
    return DomainSampler(sizes, [1.0] * len(sizes), seed=0)


def bench(cache: str, batch_size: int, batches: int, depth: int, workers: int) -> dict:
    reader = open_cache(cache)
    L = reader.seq_len
    read_plan(reader, reader.domains, _sampler(reader).draw(batch_size))  # warm metadata caches

    s = _sampler(reader)
    t = time.perf_counter()
    for _ in range(batches):
        read_plan(reader, reader.domains, s.draw(batch_size))
    sync_s = time.perf_counter() - t

    t = time.perf_counter()
    loader = PrefetchLoader(reader, reader.domains, _sampler(reader), batch_size, batches,
                            depth=depth, workers=workers)
    n = sum(b.input_ids.shape[0] for b in loader)
    thread_s = time.perf_counter() - t
    assert n == batches * batch_size
    tokens = batches * batch_size * L
    return {"cache": cache, "seq_len": L, "k": reader.k, "domains": len(reader.domains),
            "batch_size": batch_size, "batches": batches, "depth": depth, "workers": workers,
            "sync_tokens_per_s": tokens / sync_s, "prefetch_tokens_per_s": tokens / thread_s,
            "prefetch_sequences_per_s": batches * batch_size / thread_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="reader threads of the loader")
    ap.add_argument("--trainer-tok-s", type=float, default=None,
                    help="trainer consumption (tokens/s) to compare with")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    r = bench(a.cache, a.batch_size, a.batches, a.depth, a.workers)
    if a.trainer_tok_s:
        r["trainer_tokens_per_s"] = a.trainer_tok_s
        r["headroom"] = r["prefetch_tokens_per_s"] / a.trainer_tok_s
    if a.json:
        print(json.dumps(r))
        return
    print(f"cache {r['cache']}: L={r['seq_len']} k={r['k']} domains={r['domains']}, "
          f"batch {r['batch_size']} x {r['batches']}")
    print(f"  read in consumer thread : {r['sync_tokens_per_s']:>12,.0f} tok/s")
    print(f"  PrefetchLoader (depth {r['depth']}, {r['workers']} readers): "
          f"{r['prefetch_tokens_per_s']:>12,.0f} tok/s")
    if "headroom" in r:
        print(f"  trainer consumes        : {r['trainer_tokens_per_s']:>12,.0f} tok/s "
              f"-> loader headroom {r['headroom']:.1f}x")


if __name__ == "__main__":
    main()
