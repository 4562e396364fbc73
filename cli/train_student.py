"""`ddk train-student` and `ddk eval`: options -> TrainConfig / evaluate_model -> print."""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

import click


@click.command("train-student")
@click.option("--cache", required=True, help="Teacher cache (path or fsspec URL).")
@click.option("--student", required=True, help="Local transformers causal LM directory.")
@click.option("--out", required=True, help="Run directory (model/, checkpoints/, metrics...).")
@click.option("--method", type=click.Choice(["ddk", "kd", "cpt"]), default="ddk",
              show_default=True, help="ddk: DDK re-weighting + KD; kd: fixed mixture + KD; "
                                      "cpt: fixed mixture, CE only.")
@click.option("--kd-mixture", "mixture", default="natural", show_default=True,
              help="Fixed domain mixture of kd / cpt: natural (by training tokens), uniform, "
                   "or explicit weights DOMAIN=W,DOMAIN=W (unnamed domains get 0).")
@click.option("--alpha", type=float, default=0.5, show_default=True,
              help="DDK smoothing: r = alpha * psi/sum(psi) + (1 - alpha)/N.")
@click.option("--interval", type=int, default=1000, show_default=True,
              help="Steps between validation / domain re-weighting.")
@click.option("--gamma", type=float, default=0.2, show_default=True,
              help="Weight of the KL term (ddk, kd).")
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--kd-tail", type=click.Choice(["bucket", "renorm"]), default="bucket",
              show_default=True, help="Teacher target: cached top-k + one tail bucket, or the "
                                      "top-k renormalised to 1 (no tail).")
@click.option("--kd-topk", type=int, default=None,
              help="Distil from only the first K of the cached top-k (the rest joins the tail).")
@click.option("--online-teacher", default=None,
              help="Full-vocabulary KD: run this teacher (the cache's own) at every step "
                   "instead of reading its top-k. Slow; a baseline for the cache's fidelity.")
@click.option("--val-sequences", type=int, default=500, show_default=True,
              help="Validation sequences per domain for perplexity.")
@click.option("--batch-size", type=int, default=8, show_default=True,
              help="Sequences per micro-batch (per process).")
@click.option("--grad-accum", type=int, default=1, show_default=True,
              help="Micro-batches per optimizer step.")
@click.option("--max-steps", type=int, default=None, help="Optimizer steps.")
@click.option("--max-tokens", type=int, default=None,
              help="Token budget instead of --max-steps. [default: one pass over the cache]")
@click.option("--lr", type=float, default=3e-5, show_default=True, help="Peak learning rate.")
@click.option("--min-lr", type=float, default=3e-6, show_default=True,
              help="Learning rate at the end of the cosine decay.")
@click.option("--warmup", type=int, default=None,
              help="Linear warm-up steps. [default: 1% of the steps, at least 1]")
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--bf16/--no-bf16", default=None,
              help="bf16 autocast. [default: on where the CUDA GPU supports it]")
@click.option("--grad-clip", type=float, default=1.0, show_default=True,
              help="Max global gradient norm (0 = off).")
@click.option("--checkpoint-every", type=int, default=500, show_default=True,
              help="Steps between checkpoints (0 = only on SIGTERM/SIGINT).")
@click.option("--keep-checkpoints", type=int, default=2, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--eval-batch-size", type=int, default=None,
              help="Batch size for validation. [default: --batch-size]")
@click.option("--device", default=None, help="cpu, cuda, cuda:1... [default: cuda if available]")
@click.option("--tensorboard", is_flag=True, help="Also log to OUT/tensorboard.")
@click.option("--deterministic", is_flag=True,
              help="torch.use_deterministic_algorithms (reproducible GPU runs, slower).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def train_student(as_json: bool, quiet: bool, grad_clip: float, **opts: Any) -> None:
    """Distil a student from a teacher cache with DDK domain re-weighting (or kd / cpt).

    Writes OUT/model (save_pretrained + tokenizer), OUT/metrics.jsonl, OUT/plots/*.png,
    OUT/summary.json and OUT/checkpoints. On SIGTERM/SIGINT it finishes the step, saves a
    checkpoint and exits with 128 + the signal number; --resume continues exactly there.
    Under torchrun it trains with DDP (nccl on GPU, gloo on CPU).
    """
    from ddk.cache.train.config import MIXTURES, TrainConfig
    from ddk.cache.train.ddk_weights import parse_weights
    from ddk.cache.train.loop import train

    if opts["mixture"] not in MIXTURES:
        opts["domain_weights"] = parse_weights(opts["mixture"])
        opts["mixture"] = "natural"
    cfg = TrainConfig(grad_clip=grad_clip if grad_clip > 0 else None, progress=not quiet,
                      **opts)
    result = train(cfg)
    s = result.summary
    if result.interrupted_by is not None:
        name = signal.Signals(result.interrupted_by).name
        click.echo(f"stopped by {name} after step {result.steps}; checkpoint saved in "
                   f"{result.out / 'checkpoints'}; re-run with --resume to continue", err=True)
        sys.exit(128 + result.interrupted_by)
    if as_json:
        click.echo(json.dumps({k: s[k] for k in ("method", "steps", "tokens",
                                                  "train_tokens_per_s", "final",
                                                  "weight_history")}
                              | {"model": str(result.out / "model")}, default=str))
        return
    tps = s["train_tokens_per_s"]
    click.echo(f"{cfg.method}: {result.steps} steps, {result.tokens:,} tokens"
               + (f", {tps:,.0f} tok/s" if tps else "") + f"; model in {result.out / 'model'}")
    click.echo(_table([p.to_dict() for p in result.final]))


def _table(rows: list[dict[str, Any]]) -> str:
    head = f"{'domain':<20} {'seqs':>6} {'student ppl':>12} {'teacher ppl':>12} {'ratio':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['domain']:<20} {r['sequences']:>6} {r['student_ppl']:>12.3f} "
                     f"{r['teacher_ppl']:>12.3f} {r['ratio']:>8.3f}")
    return "\n".join(lines)


@click.command("eval")
@click.argument("model")
@click.option("--cache", required=True, help="Teacher cache (path or fsspec URL).")
@click.option("--val-sequences", type=int, default=500, show_default=True,
              help="Validation sequences per domain.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--device", default=None, help="cpu, cuda, cuda:1... [default: cuda if available]")
@click.option("--bf16/--no-bf16", default=None,
              help="bf16 autocast. [default: on where the CUDA GPU supports it]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def eval_model(model: str, cache: str, val_sequences: int, batch_size: int, device: str | None,
               bf16: bool | None, as_json: bool) -> None:
    """Per-domain validation perplexity of MODEL on the cache, and its ratio to the teacher."""
    from ddk.cache.train.evaluate import evaluate_model

    rows = [p.to_dict() for p in evaluate_model(model, cache, max_sequences=val_sequences,
                                                batch_size=batch_size, device=device,
                                                bf16=bf16)]
    click.echo(json.dumps({"model": model, "cache": cache, "domains": rows}) if as_json
               else _table(rows))
