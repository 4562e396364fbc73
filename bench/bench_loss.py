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

Without a GPU it says so, optionally times the CPU paths at a small shape (clearly
labelled, not comparable to GPU figures) and exits 0.

Usage: python bench/bench_loss.py [--reps 20] [--no-compile] [--no-fused] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from ddk.kernels import fused_linear_sparse_kl_loss, sparse_kl_loss
from ddk.kernels.reference import sparse_kl_loss_reference
from ddk.kernels.target import prepare_teacher_target

GiB = 1024**3


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


def copy_bandwidth(nbytes: int = 2 * GiB, reps: int = 20) -> float:
    """Measured device copy bandwidth in bytes/s (read + write counted)."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").fill_(1)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
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


def bench_logits(n, v, k, reps, warmup, use_compile, bw, kl_weight=1.0, ce_weight=1.0):
    inp = make_inputs(n, v, k, torch.bfloat16, "cuda")
    base_logits = inp["logits"]
    args = (inp["ids"], inp["lp"], inp["tail"], inp["labels"])

    def fresh():
        return base_logits.clone().requires_grad_()

    def ours(inplace):
        def run(x):
            loss = sparse_kl_loss(
                x, *args, kl_weight=kl_weight, ce_weight=ce_weight, inplace_grad=inplace
            )
            return torch.autograd.grad(loss, x)

        return run

    def ref(fn):
        def run(x):
            loss = fn(x, *args, kl_weight, ce_weight)
            return torch.autograd.grad(loss, x)

        return run

    rows = []
    rows.append(("ours (Triton, in-place grad)", *cuda_measure(fresh, ours(True), reps, warmup)))
    rows.append(("ours (Triton, separate grad)", *cuda_measure(fresh, ours(False), reps, warmup)))
    rows.append(("torch eager reference", *cuda_measure(fresh, ref(reference_loss), reps, warmup)))
    if use_compile:
        compiled = torch.compile(reference_loss, dynamic=False)
        rows.append(("torch.compile reference", *cuda_measure(fresh, ref(compiled), reps, warmup)))
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy

        def liger(x):
            return torch.autograd.grad(liger_cross_entropy(x, inp["labels"]), x)

        rows.append(
            ("Liger cross-entropy (peer, CE only)", *cuda_measure(fresh, liger, reps, warmup))
        )
    except ImportError as e:
        rows.append(
            (
                f"Liger cross-entropy: not run ({e.name} missing: pip install liger-kernel)",
                None,
                None,
            )
        )
    floor_ms = 2 * n * v * base_logits.element_size() / bw * 1e3
    print(
        f"\nN={n} V={v} k={k} bf16, kl_weight={kl_weight} ce_weight={ce_weight}; "
        f"floor (read logits + write grad once) = {floor_ms:.3f} ms"
    )
    print(f"  {'method':44s} {'ms':>9s} {'x floor':>8s} {'extra peak GiB':>15s}")
    for name, ms, peak in rows:
        if ms is None:
            print(f"  {name}")
        else:
            print(f"  {name:44s} {ms:9.3f} {ms / floor_ms:8.2f} {peak / GiB:15.3f}")


def bench_fused(n, h, v, k, reps, warmup, kl_weight=1.0, ce_weight=1.0):
    g = torch.Generator(device="cuda").manual_seed(1)
    hidden = (torch.randn(n, h, generator=g, device="cuda") * 0.5).to(torch.bfloat16)
    weight = (torch.randn(v, h, generator=g, device="cuda") * 0.02).to(torch.bfloat16)
    t = make_inputs(n, v, k, torch.bfloat16, "cuda", seed=2)
    del t["logits"]
    args = (t["ids"], t["lp"], t["tail"], t["labels"])

    def fresh():
        return hidden.clone().requires_grad_(), weight.clone().requires_grad_()

    def torch_run(hw):
        hh, ww = hw
        loss = reference_loss(hh @ ww.t(), *args, kl_weight, ce_weight)
        return torch.autograd.grad(loss, (hh, ww))

    def ours_run(hw):
        hh, ww = hw
        loss = fused_linear_sparse_kl_loss(hh, ww, *args, kl_weight=kl_weight, ce_weight=ce_weight)
        return torch.autograd.grad(loss, (hh, ww))

    rows = [
        ("torch (logits materialised + reference)", *cuda_measure(fresh, torch_run, reps, warmup)),
        ("ours fused_linear_sparse_kl_loss", *cuda_measure(fresh, ours_run, reps, warmup)),
    ]
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        def liger_run(hw):
            hh, ww = hw
            return torch.autograd.grad(
                liger_fused_linear_cross_entropy(hh, ww, t["labels"]), (hh, ww)
            )

        rows.append(
            ("Liger fused-linear CE (peer, CE only)", *cuda_measure(fresh, liger_run, reps, warmup))
        )
    except ImportError as e:
        rows.append((f"Liger fused-linear CE: not run ({e.name} missing)", None, None))
    print(f"\nfused LM head: N={n} H={h} V={v} k={k} bf16 (extra peak includes the two gradients)")
    print(f"  {'method':44s} {'ms':>9s} {'extra peak GiB':>15s}")
    for name, ms, peak in rows:
        if ms is None:
            print(f"  {name}")
        else:
            print(f"  {name:44s} {ms:9.3f} {peak / GiB:15.3f}")


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    ap.add_argument("--no-fused", action="store_true", help="skip the fused LM-head benchmark")
    ap.add_argument("--quick", action="store_true", help="only V=151936, k=64, 5 reps")
    ap.add_argument(
        "--no-cpu", action="store_true", help="without a GPU, skip the small CPU timing"
    )
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "No GPU present: GPU benchmark not run (no figures measured). "
            "Run this script on a CUDA machine with triton installed."
        )
        if not a.no_cpu:
            cpu_small()
        return 0
    import triton

    print(
        f"device: {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}"
    )
    print(f"command: {' '.join([sys.executable] + sys.argv)}")
    bw = copy_bandwidth()
    print(f"measured copy bandwidth: {bw / 1e9:.0f} GB/s (read + write)")
    shapes = (
        [(151936, 64)] if a.quick else [(v, k) for v in (32000, 49152, 151936) for k in (16, 64)]
    )
    reps = 5 if a.quick else a.reps
    for v, k in shapes:
        bench_logits(8192, v, k, reps, a.warmup, not a.no_compile, bw)
        torch.cuda.empty_cache()
    if not a.no_fused:
        bench_fused(8192, 2048, 151936, 64, reps, a.warmup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
