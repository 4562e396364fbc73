"""Tokens/s and peak RSS of the transformers and vLLM teacher backends, same model and sequences.

Each backend runs in its own process (vLLM replaces torch's thread settings in-process and
may live in another virtualenv) with the settings the cache job gives it: the backend's
own defaults (on CPU vLLM runs in-process, eager, with a KV cache sized for the job,
ddk.cache.teacher.vllm_backend), quiet, batches of --batch-size sequences. Each worker
loads the teacher, scores one warm-up batch, then scores all sequences. Reported per
backend: load and warm-up seconds, steady tok/s (score time only), end-to-end tok/s
(tokens / (load + warm-up + score): what a job of this many tokens sees), the peak RSS
of the worker's whole process tree (vLLM's engine and worker processes included, polled
every 0.1 s), and the load average before and after (a shared CPU shows there). The
driver also prints how far the two backends' outputs differ.

    # tiny random teacher (seconds), CPU:
    python bench/bench_backends.py --vllm-python /work/venv-vllm/bin/python
    # the default teacher in the default job's shapes (batches of 8 x 256 tokens, k 64):
    python bench/bench_backends.py --vllm-python /work/venv-vllm/bin/python \
        --teacher ~/.cache/ddk/models/SmolLM2-135M-Instruct --sequences 64

On a GPU machine both backends use the GPU (transformers: --device auto picks cuda).
Before 2026-12 this bench set VLLM_ENABLE_V1_MULTIPROCESSING=0 and OMP_NUM_THREADS for
vLLM while the cache job did not, and headlined score-only tok/s: see docs/scaling-out.md
("Why the old backend bench disagreed with the job").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
FIELDS = ("topk_ids", "topk_logprobs", "tail_logmass", "target_logprob")


def tiny_teacher(directory: Path) -> Path:
    """The test suite's tiny random Llama (tests/conftest.py), saved under `directory`."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ddk_test_conftest",
                                                  REPO / "tests" / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    return conftest.save_tiny_llama(directory / "tiny-teacher", seed=0)


def worker(args: argparse.Namespace) -> None:
    """Measure one backend; print a JSON line and save its scores to args.out."""
    ids = np.load(args.inputs)
    t0 = time.perf_counter()
    if args.worker == "vllm":
        from ddk.cache.teacher.vllm_backend import VLLMTeacher

        opts = {"kv_cache_memory_bytes": args.kv_cache_gib << 30} if args.kv_cache_gib else {}
        if args.enforce_eager is not None:
            opts["enforce_eager"] = args.enforce_eager
        teacher = VLLMTeacher(args.teacher, dtype=args.dtype, max_logprobs=args.k,
                              batch_size=args.batch_size, progress=False, **opts)
    else:
        from ddk.cache.teacher.transformers_backend import TransformersTeacher

        teacher = TransformersTeacher(args.teacher, dtype=args.dtype, device=args.device,
                                      progress=False)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    teacher.score(ids[: args.batch_size], args.k)  # warm-up (allocations, kernels)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    parts = [teacher.score(ids[i:i + args.batch_size], args.k)
             for i in range(0, len(ids), args.batch_size)]
    score_s = time.perf_counter() - t0
    teacher.close()
    np.savez(args.out, **{f: np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS})
    total = load_s + warmup_s + score_s
    print(json.dumps({"backend": args.worker, "load_s": load_s, "warmup_s": warmup_s,
                      "score_s": score_s, "tokens": int(ids.size),
                      "tokens_per_s": ids.size / score_s,
                      "end_to_end_tokens_per_s": ids.size / total}))


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_worker(python: str, backend: str, args: argparse.Namespace, inputs: Path,
               out: Path) -> dict:
    env = dict(os.environ)
    if args.threads:  # same thread count for both backends (else each backend's default)
        env["OMP_NUM_THREADS"] = str(args.threads)
    cmd = [python, __file__, "--worker", backend, "--inputs", str(inputs), "--out", str(out),
           "--teacher", str(args.teacher), "--k", str(args.k), "--dtype", args.dtype,
           "--device", args.device, "--batch-size", str(args.batch_size),
           "--kv-cache-gib", str(args.kv_cache_gib)]
    if args.enforce_eager is not None:
        cmd.append("--enforce-eager" if args.enforce_eager else "--no-enforce-eager")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr, text=True)
        root, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            peak = max(peak, _tree_rss(root))
            time.sleep(0.1)
        stdout.seek(0)
        stderr.seek(0)
        if proc.returncode != 0:
            sys.exit(f"{backend} worker failed:\n{stderr.read()[-4000:]}")
        result = json.loads(stdout.read().strip().splitlines()[-1])
    result.update(peak_rss_gib=peak / 2**30, loadavg_before=load_before,
                  loadavg_after=os.getloadavg()[0])
    return result


def compare(a: dict, b: dict) -> dict:
    loss_a = -a["target_logprob"].astype(np.float64).mean()
    loss_b = -b["target_logprob"].astype(np.float64).mean()
    lp_diff = np.abs(a["topk_logprobs"] - b["topk_logprobs"])
    return {"topk_ids_equal": float((a["topk_ids"] == b["topk_ids"]).mean()),
            "max_abs_logprob_diff": float(lp_diff.max()),
            "max_abs_top1_logprob_diff": float(lp_diff[..., 0].max()),
            "max_abs_target_diff": float(np.abs(a["target_logprob"] - b["target_logprob"]).max()),
            "loss_rel_diff": float(abs(loss_a - loss_b) / loss_a)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default=None, help="local model dir (default: tiny random)")
    p.add_argument("--sequences", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256, help="the demo job's: 256")
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8,
                   help="sequences per score() call (the cache job's --batch-size: 8)")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--device", default="auto", help="transformers backend device")
    p.add_argument("--backends", default="transformers,vllm")
    p.add_argument("--vllm-python", default=os.environ.get("DDK_VLLM_PYTHON", sys.executable),
                   help="interpreter with vLLM installed (default: $DDK_VLLM_PYTHON or this)")
    p.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=None,
                   help="vLLM: no CUDA graphs/compile (default: the backend's, eager on CPU)")
    p.add_argument("--kv-cache-gib", type=int, default=0,
                   help="vLLM KV cache size (0: the backend's default, sized for the job)")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS for both workers (default: each backend's own)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--inputs", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.teacher is None:
            args.teacher = str(tiny_teacher(tmp))
        vocab = json.loads((Path(args.teacher) / "config.json").read_text())
        vocab = vocab.get("text_config", vocab)["vocab_size"]
        ids = np.random.default_rng(0).integers(3, vocab, size=(args.sequences, args.seq_len))
        np.save(tmp / "ids.npy", ids)
        results, scores = {}, {}
        for backend in args.backends.split(","):
            python = args.vllm_python if backend == "vllm" else sys.executable
            results[backend] = run_worker(python, backend, args, tmp / "ids.npy",
                                          tmp / f"{backend}.npz")
            scores[backend] = dict(np.load(tmp / f"{backend}.npz"))
        report = {"teacher": args.teacher, "sequences": args.sequences,
                  "seq_len": args.seq_len, "k": args.k, "batch_size": args.batch_size,
                  "dtype": args.dtype, "threads": args.threads, "results": results}
        if len(scores) == 2:
            report["difference"] = compare(*scores.values())
    if args.json:
        print(json.dumps(report))
        return
    print(f"teacher {report['teacher']}: {args.sequences} x {args.seq_len} tokens, k={args.k}, "
          f"batch {args.batch_size}, {args.dtype}, threads {args.threads or 'default'}")
    for name, r in results.items():
        print(f"  {name:12s} {r['tokens_per_s']:8.0f} tok/s steady, "
              f"{r['end_to_end_tokens_per_s']:6.0f} end to end  (load {r['load_s']:.1f} s, "
              f"warm-up {r['warmup_s']:.1f} s, score {r['score_s']:.1f} s; peak RSS "
              f"{r['peak_rss_gib']:.2f} GiB; load average {r['loadavg_before']:.1f} -> "
              f"{r['loadavg_after']:.1f})")
    if "difference" in report:
        print("  difference: " + ", ".join(f"{k}={v:.3g}" for k, v in
                                           report["difference"].items()))


if __name__ == "__main__":
    main()
