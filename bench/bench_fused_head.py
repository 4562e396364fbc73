"""Peak memory and tokens/s of one training step: fused LM head vs the full-logits path.

Each variant runs in its own subprocess (so peak RSS is its own): a llama student with the
given vocab/hidden/layers, `--steps` optimizer steps of one micro-batch of `--batch` x
`--seq-len` tokens against a random top-k teacher target, through the trainer's own
`optimizer_step` (micro_loss, backward, clip, AdamW). Reported per variant: peak RSS of the
whole process, the step's own memory (peak RSS minus RSS after setup: model, optimizer state
after a first warm-up step, batch), and tokens/s over the timed steps; then fused/unfused
ratios from this same run. On CUDA, torch.cuda.max_memory_allocated replaces RSS.

The children run with glibc's mmap threshold pinned (MALLOC_MMAP_THRESHOLD_=65536, unless
set already): by default glibc raises it as large blocks are freed, so the warm-up step's
freed tensors stay in the heap, inflate the RSS baseline and make the step memory read low
and noisy. Pinned, every large tensor is its own mapping and freeing it lowers RSS.
Variants alternate for `--repeats` rounds; tokens/s is the median round (the 2-core CI-class
machines vary by +-10% between runs), memory the first round's (it repeats to the MiB).

    python bench/bench_fused_head.py [--vocab 49152] [--hidden 576] [--layers 2]
        [--batch 8] [--seq-len 512] [--k 32] [--steps 3] [--repeats 3] [--device cpu|cuda]
        [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _batch(args, gen):
    import torch
    from ddk.cache.train.sampler import SampledBatch

    b, n, k, v = args.batch, args.seq_len, args.k, args.vocab
    ids = torch.randint(0, v, (b, n + 1), generator=gen)
    base = torch.randint(0, v, (b, n, 1), generator=gen)
    topk = (base + torch.arange(k) * 97) % v  # distinct within a row
    lp = torch.log_softmax(torch.randn(b, n, k + 1, generator=gen) * 3, -1)
    lp, _ = lp.sort(-1, descending=True)
    return SampledBatch(ids, topk, lp[..., :k].contiguous(), lp[..., k].contiguous(),
                        torch.zeros(b, dtype=torch.long))


def _child(args) -> dict:
    import torch
    from ddk.cache.train.config import TrainConfig
    from ddk.cache.train.distributed import Dist
    from ddk.cache.train.lm_head import install_fused_forward
    from ddk.cache.train.step import optimizer_step
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    dev = torch.device(args.device)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden,
                         intermediate_size=4 * args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=args.hidden // 64,
                         num_key_value_heads=args.hidden // 64,
                         max_position_embeddings=args.seq_len + 1, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).to(dev).train()
    fused = args.variant == "fused"
    if fused:
        install_fused_forward(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    cfg = TrainConfig(cache="", student="", out="", batch_size=args.batch)
    d = Dist(rank=0, world=1, device=dev, owns_group=False)
    batches = iter([_batch(args, torch.Generator().manual_seed(i))
                    for i in range(args.steps + 1)])
    optimizer_step(model, model, opt, batches, cfg, d, None, 1e-5, fused=fused)  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _current_rss_bytes()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        optimizer_step(model, model, opt, batches, cfg, d, None, 1e-5, fused=fused)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else _rss_bytes()
    return {"variant": args.variant, "peak_bytes": peak, "step_bytes": peak - base,
            "tokens_per_s": args.steps * args.batch * args.seq_len / dt}


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds per variant")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    p.add_argument("--variant", choices=["fused", "unfused"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = _parse(argv)
    if args.variant:  # child
        print(json.dumps(_child(args)))
        return
    runs: dict[str, list[dict]] = {"unfused": [], "fused": []}
    base_argv = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"]
    env = {"MALLOC_MMAP_THRESHOLD_": "65536", **os.environ}
    for _ in range(args.repeats):
        for variant, rounds in runs.items():
            out = subprocess.run([sys.executable, __file__, *base_argv, "--variant", variant],
                                 check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
            rounds.append(json.loads(out.strip().splitlines()[-1]))
    rows = {v: {**r[0], "tokens_per_s": statistics.median(x["tokens_per_s"] for x in r),
                "tokens_per_s_rounds": [x["tokens_per_s"] for x in r]}
            for v, r in runs.items()}
    f, u = rows["fused"], rows["unfused"]
    result = {"config": {k: v for k, v in vars(args).items() if k not in ("variant", "json")},
              "malloc_mmap_threshold": env["MALLOC_MMAP_THRESHOLD_"],
              "unfused": u, "fused": f,
              "peak_ratio": f["peak_bytes"] / u["peak_bytes"],
              "step_memory_ratio": f["step_bytes"] / u["step_bytes"],
              "tokens_per_s_ratio": f["tokens_per_s"] / u["tokens_per_s"]}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    mib = 1 << 20
    print(f"{'variant':8} {'peak MiB':>9} {'step MiB':>9} {'tokens/s':>9}")
    for r in (u, f):
        print(f"{r['variant']:8} {r['peak_bytes'] / mib:9.0f} {r['step_bytes'] / mib:9.0f} "
              f"{r['tokens_per_s']:9.0f}")
    print(f"fused/unfused: peak {result['peak_ratio']:.2f}x, step memory "
          f"{result['step_memory_ratio']:.2f}x, tokens/s {result['tokens_per_s_ratio']:.2f}x")


if __name__ == "__main__":
    main()
