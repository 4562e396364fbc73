"""Tokens/s of the transformers and vLLM teacher backends on the same model and sequences.

Each backend runs in its own process (vLLM replaces torch's thread settings in-process and
may live in another virtualenv), loads the teacher, scores one warm-up batch, then scores
all sequences; the driver prints tokens/s and how far the two backends' outputs differ.

    # tiny random teacher (seconds), CPU:
    python bench/bench_backends.py --vllm-python /work/venv-vllm/bin/python
    # a real teacher (local directory), e.g. the default SmolLM2-135M-Instruct:
    python bench/bench_backends.py --teacher PATH --sequences 64 --seq-len 512 --k 64

On a GPU machine both backends use the GPU (transformers: --device auto picks cuda).
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
        teacher = VLLMTeacher(args.teacher, dtype=args.dtype, enforce_eager=args.enforce_eager,
                              max_logprobs=args.k, batch_size=args.batch_size, **opts)
    else:
        from ddk.cache.teacher.transformers_backend import TransformersTeacher

        teacher = TransformersTeacher(args.teacher, dtype=args.dtype, device=args.device,
                                      max_batch_tokens=args.batch_size * ids.shape[1])
    load_s = time.perf_counter() - t0
    teacher.score(ids[: args.batch_size], args.k)  # warm-up (allocations, kernels)
    t0 = time.perf_counter()
    parts = [teacher.score(ids[i:i + args.batch_size], args.k)
             for i in range(0, len(ids), args.batch_size)]
    score_s = time.perf_counter() - t0
    teacher.close()
    np.savez(args.out, **{f: np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS})
    print(json.dumps({"backend": args.worker, "load_s": load_s, "score_s": score_s,
                      "tokens": int(ids.size), "tokens_per_s": ids.size / score_s}))


def run_worker(python: str, backend: str, args: argparse.Namespace, inputs: Path,
               out: Path) -> dict:
    env = dict(os.environ)
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if args.threads:  # same thread count for both backends (vLLM would otherwise pick)
        env["OMP_NUM_THREADS"] = str(args.threads)
    cmd = [python, __file__, "--worker", backend, "--inputs", str(inputs), "--out", str(out),
           "--teacher", str(args.teacher), "--k", str(args.k), "--dtype", args.dtype,
           "--device", args.device, "--batch-size", str(args.batch_size),
           "--kv-cache-gib", str(args.kv_cache_gib)]
    if args.enforce_eager:
        cmd.append("--enforce-eager")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{backend} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16, help="sequences per score() call")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--device", default="auto", help="transformers backend device")
    p.add_argument("--backends", default="transformers,vllm")
    p.add_argument("--vllm-python", default=os.environ.get("DDK_VLLM_PYTHON", sys.executable),
                   help="interpreter with vLLM installed (default: $DDK_VLLM_PYTHON or this)")
    p.add_argument("--enforce-eager", action="store_true", help="vLLM: no CUDA graphs/compile")
    p.add_argument("--kv-cache-gib", type=int, default=2,
                   help="vLLM KV cache size (CPU needs it; 0: vLLM's own default)")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="OMP_NUM_THREADS for both workers")
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
          f"batch {args.batch_size}, {args.dtype}, {args.threads} threads")
    for name, r in results.items():
        print(f"  {name:12s} {r['tokens_per_s']:10.0f} tok/s  (score {r['score_s']:.2f} s, "
              f"load {r['load_s']:.1f} s)")
    if "difference" in report:
        print("  difference: " + ", ".join(f"{k}={v:.3g}" for k, v in
                                           report["difference"].items()))


if __name__ == "__main__":
    main()
