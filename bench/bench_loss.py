"""Benchmark of ddk.kernels.sparse_kl_loss (forward + backward), not a test.

On one CUDA GPU it prints, for N=8192 bf16 logits, V in {32000, 49152, 151936} and
k in {16, 64}: milliseconds and extra peak memory of
  - ours (Triton, gradient in place) and ours (separate gradient buffer),
  - the torch eager reference (ddk.kernels.reference, autograd) and its torch.compile,
  - Liger-Kernel's full-vocabulary cross-entropy (the peer; pip install liger-kernel),
  - the memory floor: read the logits + write the gradient once at the measured copy
    bandwidth, and each method's ratio to it;
then the fused LM-head variant at N=8192, H=2048, V=151936 against torch (materialised
logits + reference) and Liger's fused-linear cross-entropy.

"Extra peak memory" = peak allocated during forward+backward minus what was allocated
before it (inputs included in the baseline). Gradients are taken with torch.autograd.grad,
so no leaf .grad accumulation copy is counted for anyone.

Next to each timing: the minimum bytes the method must move (read the logits once, write
the gradient once; for the fused head: read hidden + weight, write both gradients) and the
achieved fraction of the copy bandwidth measured in the same run (floor_ms / ms).

Without a GPU it says so, optionally times the CPU paths at a small shape (clearly
labelled, not comparable to GPU figures) and exits 0. `--dry-run` instead runs every row on
CPU at tiny shapes (N=64, V=1000, k=8, fused H=32), the Triton kernels through the
interpreter (TRITON_INTERPRET=1, set before triton is imported), timed with perf_counter,
peak memory null: it checks that the script runs, not how fast anything is.

Usage: python bench/bench_loss.py [--reps 20] [--no-compile] [--no-fused] [--quick]
    [--n 8192] [--vocabs 32000,49152,151936] [--ks 16,64] [--json PATH] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

if "--dry-run" in sys.argv[1:]:  # the interpreter is read when triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch
from ddk.kernels import fused_linear_sparse_kl_loss, sparse_kl_loss
from ddk.kernels.reference import sparse_kl_loss_reference
from ddk.kernels.target import prepare_teacher_target

GiB = 1024**3
MiB = 1024**2
DRY = {"n": 64, "vocabs": (1000,), "ks": (8,), "hidden": 32}  # --dry-run shapes


def make_inputs(n: int, v: int, k: int, dtype: torch.dtype, device: str, seed: int = 0) -> dict:
    """Random bf16 logits and a valid cached teacher: k distinct ids, log-probs + tail, labels."""
    g = torch.Generator(device=device).manual_seed(seed)
    logits = torch.randn(n, v, generator=g, device=device, dtype=torch.float32).mul_(2).to(dtype)
    ids = torch.rand(n, v, generator=g, device=device).topk(k, dim=-1).indices
    t = torch.log_softmax(torch.randn(n, k + 1, generator=g, device=device) * 2, dim=-1)
    labels = torch.randint(0, v, (n,), generator=g, device=device)
    labels[torch.rand(n, generator=g, device=device) < 0.05] = -100
    return {
        "logits": logits,
        "ids": ids,
        "lp": t[:, :k].contiguous(),
        "tail": t[:, k].contiguous(),
        "labels": labels,
    }


def cuda_measure(setup, run, reps: int, warmup: int) -> tuple[float, float]:
    """Median ms of run(setup()) and max extra peak bytes over reps (setup is not timed)."""
    times, peaks = [], []
    for i in range(warmup + reps):
        state = setup()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        out = run(state)
        e1.record()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(e0.elapsed_time(e1))
            peaks.append(torch.cuda.max_memory_allocated() - base)
        del state, out
    return statistics.median(times), max(peaks)


def cpu_measure(setup, run, reps: int, warmup: int) -> tuple[float, None]:
    """Median ms of run(setup()) by perf_counter; no peak memory on CPU."""
    times = []
    for i in range(warmup + reps):
        state = setup()
        t0 = time.perf_counter()
        out = run(state)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
        del state, out
    return statistics.median(times), None


def measure(device: str, setup, run, reps: int, warmup: int) -> tuple[float, float | None]:
    fn = cuda_measure if device == "cuda" else cpu_measure
    return fn(setup, run, reps, warmup)


def copy_bandwidth(nbytes: int = 2 * GiB, reps: int = 20, device: str = "cuda") -> float:
    """Measured device copy bandwidth in bytes/s (read + write counted)."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).fill_(1)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    if device != "cuda":
        t0 = time.perf_counter()
        for _ in range(reps):
            dst.copy_(src)
        return 2 * nbytes * reps / (time.perf_counter() - t0)
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(reps):
        dst.copy_(src)
    e1.record()
    torch.cuda.synchronize()
    sec = e0.elapsed_time(e1) / 1e3 / reps
    return 2 * nbytes / sec


def reference_loss(logits, ids, lp, tail, labels, kl_weight, ce_weight):
    a, b = prepare_teacher_target(
        lp,
        tail,
        vocab_size=logits.shape[1],
        temperature=1.0,
        tail="bucket",
        active=labels != -100,
        dtype=torch.float32,
    )
    return sparse_kl_loss_reference(
        logits, ids, a, b, labels, kl_weight=kl_weight, ce_weight=ce_weight
    )


def row(bench: str, shape: dict, method: str, timing, min_bytes: int, bw: float,
        reason: str | None = None) -> dict:
    """One result row: ms, extra peak, the bytes floor and the achieved fraction of it."""
    ms, peak = timing if timing is not None else (None, None)
    floor_ms = min_bytes / bw * 1e3
    status = "ok" if ms is not None else "failed" if reason.startswith("failed") else "skipped"
    return {"bench": bench, **shape, "method": method, "status": status, "reason": reason,
            "ms": ms, "extra_peak_bytes": peak, "min_bytes": min_bytes,
            "floor_ms": floor_ms, "floor_fraction": None if ms is None else floor_ms / ms}


def print_rows(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print(f"  {'method':44s} {'ms':>9s} {'min MiB':>8s} {'of copy bw':>10s} "
          f"{'extra peak GiB':>15s}")
    for r in rows:
        if r["ms"] is None:
            print(f"  {r['method']}: not run ({r['reason']})")
            continue
        peak = "-" if r["extra_peak_bytes"] is None else f"{r['extra_peak_bytes'] / GiB:.3f}"
        print(f"  {r['method']:44s} {r['ms']:9.3f} {r['min_bytes'] / MiB:8.1f} "
              f"{r['floor_fraction']:10.3f} {peak:>15s}")


def liger_missing(device: str) -> str | None:
    """Why Liger cannot run here, or None."""
    if device != "cuda":
        return "Liger-Kernel's Triton kernels need CUDA (no interpreter support)"
    try:
        import liger_kernel  # noqa: F401
    except ImportError as e:
        return f"{e.name} missing: pip install liger-kernel"
    return None


def try_peer(device: str, setup, make_run, reps: int, warmup: int):
    """(timing, None) of a peer, or (None, reason): a peer that does not import or run here
    (a release that does not fit this torch / triton) is a failed row, not a failed bench."""
    try:
        return measure(device, setup, make_run(), reps, warmup), None
    except Exception as e:  # noqa: BLE001  (reported in the row)
        if device == "cuda":
            torch.cuda.empty_cache()
        print(f"  (peer failed: {type(e).__name__}: {e})")
        return None, f"failed: {type(e).__name__}: {str(e)[:300]}"


def bench_logits(n, v, k, reps, warmup, compile_skip, bw, kl_weight=1.0, ce_weight=1.0, *,
                 device="cuda", dtype=torch.bfloat16, backend="auto") -> list[dict]:
    """Forward + backward of every method at one shape. `compile_skip`: None to run the
    torch.compile baseline, else the reason it is not run."""
    inp = make_inputs(n, v, k, dtype, device)
    base_logits = inp["logits"]
    args = (inp["ids"], inp["lp"], inp["tail"], inp["labels"])
    shape = {"n": n, "v": v, "k": k, "dtype": str(dtype).removeprefix("torch.")}
    min_bytes = 2 * n * v * base_logits.element_size()

    def fresh():
        return base_logits.clone().requires_grad_()

    def ours(inplace):
        def run(x):
            loss = sparse_kl_loss(x, *args, kl_weight=kl_weight, ce_weight=ce_weight,
                                  inplace_grad=inplace, backend=backend)
            return torch.autograd.grad(loss, x)

        return run

    def ref(fn):
        def run(x):
            return torch.autograd.grad(fn(x, *args, kl_weight, ce_weight), x)

        return run

    def liger():
        from liger_kernel.transformers.functional import liger_cross_entropy

        return lambda x: torch.autograd.grad(liger_cross_entropy(x, inp["labels"]), x)

    def add(method, run=None, reason=None, peer=None):
        if peer is not None:
            timing, reason = try_peer(device, fresh, peer, reps, warmup)
        else:
            timing = None if run is None else measure(device, fresh, run, reps, warmup)
        rows.append(row("logits", shape, method, timing, min_bytes, bw, reason))

    rows: list[dict] = []
    add("ours (Triton, in-place grad)", ours(True))
    add("ours (Triton, separate grad)", ours(False))
    add("torch eager reference", ref(reference_loss))
    if compile_skip is None:
        add("torch.compile reference",
            peer=lambda: ref(torch.compile(reference_loss, dynamic=False)))
    else:
        add("torch.compile reference", reason=compile_skip)
    why = liger_missing(device)
    add("Liger cross-entropy (peer, CE only)", reason=why, peer=None if why else liger)
    print_rows(f"N={n} V={v} k={k} {shape['dtype']}, kl_weight={kl_weight} "
               f"ce_weight={ce_weight}; floor (read logits + write grad once) = "
               f"{rows[0]['floor_ms']:.3f} ms", rows)
    return rows


def bench_fused(n, h, v, k, reps, warmup, bw, kl_weight=1.0, ce_weight=1.0, *,
                device="cuda", dtype=torch.bfloat16, backend="auto") -> list[dict]:
    """The fused LM head (hidden @ weight.T inside the loss) against torch and Liger."""
    g = torch.Generator(device=device).manual_seed(1)
    hidden = (torch.randn(n, h, generator=g, device=device) * 0.5).to(dtype)
    weight = (torch.randn(v, h, generator=g, device=device) * 0.02).to(dtype)
    t = make_inputs(n, v, k, dtype, device, seed=2)
    del t["logits"]
    args = (t["ids"], t["lp"], t["tail"], t["labels"])
    shape = {"n": n, "v": v, "k": k, "h": h, "dtype": str(dtype).removeprefix("torch.")}
    min_bytes = 2 * (n * h + v * h) * hidden.element_size()  # read h, w; write both grads

    def fresh():
        return hidden.clone().requires_grad_(), weight.clone().requires_grad_()

    def torch_run(hw):
        hh, ww = hw
        return torch.autograd.grad(reference_loss(hh @ ww.t(), *args, kl_weight, ce_weight),
                                   (hh, ww))

    def ours_run(hw):
        hh, ww = hw
        loss = fused_linear_sparse_kl_loss(hh, ww, *args, kl_weight=kl_weight,
                                           ce_weight=ce_weight, backend=backend)
        return torch.autograd.grad(loss, (hh, ww))

    def liger():
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        def run(hw):
            hh, ww = hw
            return torch.autograd.grad(
                liger_fused_linear_cross_entropy(hh, ww, t["labels"]), (hh, ww))

        return run

    def add(method, run=None, reason=None, peer=None):
        if peer is not None:
            timing, reason = try_peer(device, fresh, peer, reps, warmup)
        else:
            timing = None if run is None else measure(device, fresh, run, reps, warmup)
        r = row("fused", shape, method, timing, min_bytes, bw, reason)
        r["tflops"] = None if r["ms"] is None else 6 * n * h * v / (r["ms"] * 1e-3) / 1e12
        rows.append(r)

    rows: list[dict] = []
    add("torch (logits materialised + reference)", torch_run)
    add("ours fused_linear_sparse_kl_loss", ours_run)
    why = liger_missing(device)
    add("Liger fused-linear CE (peer, CE only)", reason=why, peer=None if why else liger)
    print_rows(f"fused LM head: N={n} H={h} V={v} k={k} {shape['dtype']} (extra peak includes "
               f"the two gradients; the floor is compute-bound in practice, see tflops)", rows)
    for r in rows:
        if r["tflops"] is not None:
            print(f"  {r['method']:44s} {r['tflops']:9.2f} TFLOP/s (6*N*H*V)")
    return rows


def cpu_small(n: int = 256, v: int = 32000, k: int = 16, reps: int = 3) -> None:
    """CPU timings at a small shape: chunked PyTorch path vs the eager reference (fp32)."""
    inp = make_inputs(n, v, k, torch.float32, "cpu")
    args = (inp["ids"], inp["lp"], inp["tail"], inp["labels"])

    def t(fn):
        best = float("inf")
        for _ in range(reps):
            x = inp["logits"].clone().requires_grad_()
            t0 = time.perf_counter()
            torch.autograd.grad(fn(x), x)
            best = min(best, time.perf_counter() - t0)
        return best * 1e3

    ours = t(lambda x: sparse_kl_loss(x, *args, ce_weight=1.0))
    ref = t(lambda x: reference_loss(x, *args, 1.0, 1.0))
    print(
        f"CPU ONLY (labelled, not comparable to GPU figures; {torch.get_num_threads()} threads): "
        f"N={n} V={v} k={k} fp32, forward+backward, best of {reps}"
    )
    print(f"  ours (chunked PyTorch path)  {ours:9.1f} ms")
    print(f"  torch eager reference        {ref:9.1f} ms")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    ap.add_argument("--no-fused", action="store_true", help="skip the fused LM-head benchmark")
    ap.add_argument("--quick", action="store_true", help="only V=151936, k=64, 5 reps")
    ap.add_argument("--n", type=int, default=8192, help="tokens (rows of logits)")
    ap.add_argument("--vocabs", type=_ints, default=(32000, 49152, 151936), help="e.g. 49152,151936")
    ap.add_argument("--ks", type=_ints, default=(16, 64), help="cached top-k sizes, e.g. 64")
    ap.add_argument("--hidden", type=int, default=2048, help="fused LM head: hidden size")
    ap.add_argument("--fused-vocab", type=int, default=151936, help="fused LM head: vocabulary")
    ap.add_argument("--json", type=Path, help="write every row (and the setup) here")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU, tiny shapes, Triton through the interpreter: checks the script runs")
    ap.add_argument(
        "--no-cpu", action="store_true", help="without a GPU, skip the small CPU timing"
    )
    a = ap.parse_args(argv)
    if a.quick:
        a.vocabs, a.ks, a.reps = (151936,), (64,), 5
    if a.dry_run:
        a.n, a.vocabs, a.ks, a.hidden = DRY["n"], DRY["vocabs"], DRY["ks"], DRY["hidden"]
        a.fused_vocab, a.reps, a.warmup = DRY["vocabs"][0], 1, 0
    return a


def main(argv: list[str] | None = None) -> int:
    a = _parse(argv)
    if not torch.cuda.is_available() and not a.dry_run:
        print(
            "No GPU present: GPU benchmark not run (no figures measured). "
            "Run this script on a CUDA machine with triton installed."
        )
        if not a.no_cpu:
            cpu_small()
        return 0
    import triton

    device = "cpu" if a.dry_run else "cuda"
    name = "CPU (dry run: Triton interpreter)" if a.dry_run else torch.cuda.get_device_name()
    print(f"device: {name} | torch {torch.__version__} | triton {triton.__version__}")
    print(f"command: {' '.join([sys.executable] + sys.argv)}")
    bw = copy_bandwidth(64 * MiB, 5, "cpu") if a.dry_run else copy_bandwidth()
    print(f"measured copy bandwidth: {bw / 1e9:.1f} GB/s (read + write)")
    # torch.compile on CPU (inductor's C++ build) took 20 s for the one tiny shape on a
    # 2-core machine (2026-11): too long for a check that only shows that every row runs.
    compile_skip = ("--no-compile" if a.no_compile else
                    "dry run: inductor's CPU build takes ~20 s per shape" if a.dry_run else None)
    dtype = torch.bfloat16
    backend = "triton" if a.dry_run else "auto"
    rows: list[dict] = []

    def dump(done: bool) -> None:  # after every shape: a timeout keeps what was measured
        if a.json:
            a.json.write_text(json.dumps({
                "device": name, "torch": torch.__version__, "triton": triton.__version__,
                "command": [sys.executable] + sys.argv, "dry_run": a.dry_run, "reps": a.reps,
                "warmup": a.warmup, "copy_bandwidth_bytes_per_s": bw, "complete": done,
                "rows": rows}, indent=1))

    for v in a.vocabs:
        for k in a.ks:
            rows += bench_logits(a.n, v, k, a.reps, a.warmup, compile_skip, bw, device=device,
                                 dtype=dtype, backend=backend)
            dump(False)
            if device == "cuda":
                torch.cuda.empty_cache()
    if not a.no_fused:
        rows += bench_fused(a.n, a.hidden, a.fused_vocab, max(a.ks), a.reps, a.warmup, bw,
                            device=device, dtype=dtype, backend=backend)
    dump(True)
    if a.json:
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
