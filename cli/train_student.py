"""`ddk train-student`: options -> TrainConfig -> train -> summary and perplexity table."""

from __future__ import annotations

import json
import operator
import signal
import sys
from typing import Any

import click
from ddk.cache.train.config import METHODS, MIXTURES, TAILS, TrainConfig
from ddk.cli.options import Target, field_values
from ddk.cli.tables import perplexity_table


def grad_clip_or_off(clip: float) -> float | None:
    """--grad-clip 0 turns clipping off (TrainConfig.grad_clip None)."""
    return clip if clip > 0 else None


#: option -> TrainConfig field where the name or value differs (cli/options.py); every
#: other option fills the field of its own name
OPTION_FIELDS: dict[str, Target] = {
    "grad_clip": ("grad_clip", grad_clip_or_off),
    "quiet": ("progress", operator.not_),
    "as_json": None,
}


@click.command("train-student")
@click.option("--cache", required=True, help="Teacher cache (path or fsspec URL).")
@click.option("--student", required=True, help="Local transformers causal LM directory.")
@click.option("--out", required=True, help="Run directory (model/, checkpoints/, metrics...).")
@click.option("--method", type=click.Choice(METHODS), default=TrainConfig.method,
              show_default=True, help="ddk: DDK re-weighting + KD; kd: fixed mixture + KD; "
                                      "cpt: fixed mixture, CE only.")
@click.option("--kd-mixture", "mixture", default=TrainConfig.mixture, show_default=True,
              help="Fixed domain mixture of kd / cpt: natural (by training tokens), uniform, "
                   "or explicit weights DOMAIN=W,DOMAIN=W (unnamed domains get 0).")
@click.option("--alpha", type=float, default=TrainConfig.alpha, show_default=True,
              help="DDK smoothing: r = alpha * psi/sum(psi) + (1 - alpha)/N.")
@click.option("--interval", type=int, default=TrainConfig.interval, show_default=True,
              help="Steps between validation / domain re-weighting.")
@click.option("--gamma", type=float, default=TrainConfig.gamma, show_default=True,
              help="Weight of the KL term (ddk, kd).")
@click.option("--temperature", type=float, default=TrainConfig.temperature, show_default=True)
@click.option("--kd-tail", type=click.Choice(TAILS), default=TrainConfig.kd_tail,
              show_default=True, help="Teacher target: cached top-k + one tail bucket, or the "
                                      "top-k renormalised to 1 (no tail).")
@click.option("--kd-topk", type=int, default=TrainConfig.kd_topk,
              help="Distil from only the first K of the cached top-k (the rest joins the tail).")
@click.option("--online-teacher", default=TrainConfig.online_teacher,
              help="Full-vocabulary KD: run this teacher (the cache's own) at every step "
                   "instead of reading its top-k. Slow; a baseline for the cache's fidelity.")
@click.option("--fused-lm-head/--no-fused-lm-head", default=TrainConfig.fused_lm_head,
              help="Compute the loss from the hidden states and head weight without the full "
                   "[tokens, vocab] logits (same maths, less memory). Default: on when the "
                   "student's head is a plain linear map, else off with a log line.")
@click.option("--fsdp", is_flag=True, default=TrainConfig.fsdp,
              help="Shard the student (weights, gradients, AdamW state) across the torchrun "
                   "processes with FSDP2, for students that do not fit one device; bf16 "
                   "params / fp32 gradient reduction with --bf16. Checkpoints are sharded "
                   "(torch.distributed.checkpoint); the final model is a plain directory.")
@click.option("--val-sequences", type=int, default=TrainConfig.val_sequences, show_default=True,
              help="Validation sequences per domain for perplexity.")
@click.option("--batch-size", type=int, default=TrainConfig.batch_size, show_default=True,
              help="Sequences per micro-batch (per process).")
@click.option("--grad-accum", type=int, default=TrainConfig.grad_accum, show_default=True,
              help="Micro-batches per optimizer step.")
@click.option("--max-steps", type=int, default=TrainConfig.max_steps, help="Optimizer steps.")
@click.option("--max-tokens", type=int, default=TrainConfig.max_tokens,
              help="Token budget instead of --max-steps. [default: one pass over the cache]")
@click.option("--lr", type=float, default=TrainConfig.lr, show_default=True,
              help="Peak learning rate.")
@click.option("--min-lr", type=float, default=TrainConfig.min_lr, show_default=True,
              help="Learning rate at the end of the cosine decay.")
@click.option("--warmup", type=int, default=TrainConfig.warmup,
              help="Linear warm-up steps. [default: 1% of the steps, at least 1]")
@click.option("--weight-decay", type=float, default=TrainConfig.weight_decay, show_default=True)
@click.option("--seed", type=int, default=TrainConfig.seed, show_default=True)
@click.option("--bf16/--no-bf16", default=TrainConfig.bf16,
              help="bf16 autocast. [default: on where the CUDA GPU supports it]")
@click.option("--grad-clip", type=float, default=TrainConfig.grad_clip or 0, show_default=True,
              help="Max global gradient norm (0 = off).")
@click.option("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every,
              show_default=True,
              help="Steps between checkpoints (0 = only on SIGTERM/SIGINT).")
@click.option("--keep-checkpoints", type=int, default=TrainConfig.keep_checkpoints,
              show_default=True)
@click.option("--resume", is_flag=True, default=TrainConfig.resume,
              help="Continue the run in --out from its last checkpoint.")
@click.option("--eval-batch-size", type=int, default=TrainConfig.eval_batch_size,
              help="Batch size for validation. [default: --batch-size]")
@click.option("--device", default=TrainConfig.device,
              help="cpu, cuda, cuda:1... [default: cuda if available]")
@click.option("--tensorboard", is_flag=True, default=TrainConfig.tensorboard,
              help="Also log to OUT/tensorboard.")
@click.option("--deterministic", is_flag=True, default=TrainConfig.deterministic,
              help="torch.use_deterministic_algorithms (reproducible GPU runs, slower).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def train_student(as_json: bool, **opts: Any) -> None:
    """Distil a student from a teacher cache with DDK domain re-weighting (or kd / cpt).

    Writes OUT/model (save_pretrained + tokenizer), OUT/metrics.jsonl, OUT/plots/*.png,
    OUT/summary.json and OUT/checkpoints. On SIGTERM/SIGINT it finishes the step, saves a
    checkpoint and exits with 128 + the signal number; --resume continues exactly there.
    Under torchrun it trains with DDP (nccl on GPU, gloo on CPU), or FSDP2 with --fsdp.
    """
    from ddk.cache.train.ddk_weights import parse_weights
    from ddk.cache.train.loop import train

    fields = field_values(opts, OPTION_FIELDS)
    if fields["mixture"] not in MIXTURES:  # --kd-mixture DOMAIN=W,...: an explicit mixture
        fields["domain_weights"] = parse_weights(fields["mixture"])
        fields["mixture"] = "natural"
    cfg = TrainConfig(**fields)
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
                                                  "weight_history", "ddk_saturation")}
                              | {"model": str(result.out / "model")}, default=str))
        return
    tps = s["train_tokens_per_s"]
    click.echo(f"{cfg.method}: {result.steps} steps, {result.tokens:,} tokens"
               + (f", {tps:,.0f} tok/s" if tps else "") + f"; model in {result.out / 'model'}")
    click.echo(perplexity_table([p.to_dict() for p in result.final]))
    sat = s.get("ddk_saturation")
    if sat and sat["saturated_intervals"]:
        click.echo(f"note: ddk's weights were saturated (one domain above "
                   f"{sat['threshold']} of the discrepancy-driven weight) at "
                   f"{sat['saturated_intervals']} of {sat['intervals']} intervals, on "
                   f"{', '.join(sat['domains'])}: the student is too far behind its teacher "
                   f"for DDK's formula to re-weight gently; see {sat['docs']}")
