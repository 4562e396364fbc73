"""Throughput of `ddk cache-teacher` against a bare teacher forward over the same sequences.

The overhead ratio = bare forward tokens/s / cache job tokens/s says what top-k extraction,
quantisation, compression and writing cost on top of the teacher itself (1.0 = free).
Before/after in one invocation, so the ratios share the machine's load: the extraction with
a fresh full-size temporary per batch (as before topk.ScratchBuffer) and with the backend's
reused one; the whole job before, as shipped, and with the shards on the background writer
(the setting of GPU teachers).

    python bench/bench_cache_job.py                      # default teacher, demo corpus
    python bench/bench_cache_job.py --teacher DIR --seq-len 512 --train-sequences 8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch


@contextlib.contextmanager
def fresh_temporaries() -> Iterator[None]:
    """The extraction as before its ScratchBuffer: a new full-size temporary every batch."""
    from ddk.cache.teacher import topk

    def fresh(self: Any, shape: torch.Size, device: torch.device) -> torch.Tensor:
        return torch.empty(shape, dtype=torch.float32, device=device)

    with mock.patch.object(topk.ScratchBuffer, "get", fresh):
        yield


def main() -> None:
    from ddk.cache.cache_job import background_writer
    from ddk.cache.cache_job.config import CacheJobConfig
    from ddk.cache.cache_job.run import run_cache_job
    from ddk.cache.corpus.demo_corpus import demo_domain_specs
    from ddk.cache.corpus.packing import pack_domain
    from ddk.cache.teacher.model_dir import resolve_teacher_path
    from ddk.cache.teacher.transformers_backend import TransformersTeacher
    from transformers import AutoTokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=None, help="model dir (default: embedded default)")
    ap.add_argument("--domains", type=int, default=8, help="first N demo domains")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--train-sequences", type=int, default=8)
    ap.add_argument("--val-sequences", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1,
                    help="run each job N times, alternating, and keep each one's fastest")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    teacher_path = resolve_teacher_path(args.teacher)
    specs = demo_domain_specs()[: args.domains]
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    seqs = np.concatenate([
        np.concatenate([p.validation, p.train])
        for p in (pack_domain(s, tokenizer, args.seq_len, val_sequences=args.val_sequences,
                              max_train_sequences=args.train_sequences) for s in specs)])
    tokens = int(seqs.size)

    # 1. bare forward: the teacher's logits and nothing else, same batches; timed before
    # and after stage 2 and the faster kept, so a burst of other load hurts neither side
    teacher = TransformersTeacher(teacher_path)
    model = teacher.model

    def bare_forward() -> float:
        with torch.inference_mode():
            t = time.perf_counter()
            for b in range(0, len(seqs), args.batch_size):
                model(input_ids=torch.as_tensor(seqs[b:b + args.batch_size], dtype=torch.long),
                      use_cache=False)
            return time.perf_counter() - t

    with torch.inference_mode():
        model(input_ids=torch.as_tensor(seqs[: args.batch_size], dtype=torch.long))  # warm-up
    bare = bare_forward()

    # 2. forward + top-k/tail/target extraction (the backend's score), no store: with a
    # fresh full-size temporary per batch (before) and the backend's reused scratch (after)
    def scored() -> float:
        t = time.perf_counter()
        for b in range(0, len(seqs), args.batch_size):
            teacher.score(seqs[b:b + args.batch_size], args.k)
        return time.perf_counter() - t

    with fresh_temporaries():
        scored_fresh = scored()
    scored_reused = scored()
    bare = min(bare, bare_forward())
    teacher.close()

    # 3. the whole job (packing, teacher, quantise, compress, write, finalise): before the
    # reused scratch, as shipped (a CPU teacher writes in its scoring thread), and with the
    # shards on the background writer (what a GPU teacher uses)
    def whole_job(max_pending: int) -> float:
        background_writer.MAX_PENDING = background_writer.CPU_PENDING = max_pending
        with tempfile.TemporaryDirectory() as tmp:
            cfg = CacheJobConfig(output=str(Path(tmp) / "cache"), domains=specs,
                                 teacher=str(teacher_path), k=args.k, seq_len=args.seq_len,
                                 val_sequences=args.val_sequences,
                                 max_train_sequences=args.train_sequences,
                                 batch_size=args.batch_size, progress=False)
            result = run_cache_job(cfg)
            assert result.complete and result.tokens_scored == tokens, (result, tokens)
            return result.seconds

    default, cpu_default = background_writer.MAX_PENDING, background_writer.CPU_PENDING
    jobs: dict[str, list[float]] = {"fresh": [], "shipped": [], "background": []}
    for _ in range(args.repeats):
        with fresh_temporaries():
            jobs["fresh"].append(whole_job(cpu_default))
        jobs["shipped"].append(whole_job(cpu_default))
        jobs["background"].append(whole_job(default))
    background_writer.MAX_PENDING, background_writer.CPU_PENDING = default, cpu_default

    rows = {
        "bare forward": bare,
        "forward + extraction, fresh temporaries per batch (before)": scored_fresh,
        "forward + extraction, reused scratch (after)": scored_reused,
        "cache job, fresh temporaries (before)": min(jobs["fresh"]),
        f"cache job as shipped ({cpu_default} pending on CPU) (after)": min(jobs["shipped"]),
        f"cache job, background writer ({default} pending, the GPU setting)":
            min(jobs["background"])}
    out = {"machine": f"{platform.processor() or platform.machine()}, "
                      f"{torch.get_num_threads()} torch threads",
           "teacher": str(teacher_path.name), "tokens": tokens, "k": args.k,
           "seq_len": args.seq_len, "batch_size": args.batch_size,
           "job_seconds": jobs,
           "tokens_per_second": {k: tokens / v for k, v in rows.items()},
           "overhead_vs_bare": {k: v / bare for k, v in rows.items()}}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{tokens} tokens, k={args.k}, seq_len={args.seq_len}, batch {args.batch_size}, "
          f"teacher {out['teacher']}, {out['machine']}")
    print("| stage | seconds | tokens/s | time / bare forward |\n|---|---|---|---|")
    for name, sec in rows.items():
        print(f"| {name} | {sec:.1f} | {tokens / sec:.0f} | {sec / bare:.2f}x |")


if __name__ == "__main__":
    main()
