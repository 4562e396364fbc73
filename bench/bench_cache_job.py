"""Throughput of `ddk cache-teacher` against a bare teacher forward over the same sequences.

The overhead ratio = bare forward tokens/s / cache job tokens/s says what top-k extraction,
quantisation, compression and writing cost on top of the teacher itself (1.0 = free). The
job runs twice in one invocation, before/after: shards written in the scoring thread
(background_writer.MAX_PENDING = 0, the loop as it was) and on the background writer (the
default), so the two ratios share the machine's load.

    python bench/bench_cache_job.py                      # default teacher, demo corpus
    python bench/bench_cache_job.py --teacher DIR --seq-len 512 --train-sequences 8
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


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
    # 2. forward + top-k/tail/target extraction (the backend's score), no store
    t = time.perf_counter()
    for b in range(0, len(seqs), args.batch_size):
        teacher.score(seqs[b:b + args.batch_size], args.k)
    scored = time.perf_counter() - t
    bare = min(bare, bare_forward())
    teacher.close()

    # 3. the whole job (packing, teacher, quantise, compress, write, finalise), with the
    # shards written in the scoring thread (before) and on the background writer (after)
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
    jobs = {"sequential": [], "background": []}
    for _ in range(args.repeats):
        jobs["sequential"].append(whole_job(0))
        jobs["background"].append(whole_job(default))
    background_writer.MAX_PENDING, background_writer.CPU_PENDING = default, cpu_default

    rows = {
        "bare forward": bare, "forward + top-k extraction": scored,
        "cache job, sequential writes (before)": min(jobs["sequential"]),
        f"cache job, background writer (after, {default} pending)": min(jobs["background"])}
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
