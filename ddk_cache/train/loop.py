"""Train a student on a teacher cache: DDK domain re-weighting, or the kd / cpt baselines.

`train(cfg)` runs three named parts, in the manner of litgpt's pretrain.py:

    prepare  every check that can fail (options, run dir, cache, student), then the student on
             its device, AdamW, DDP, the domain mixture (mixture.py: the sampler and the
             interval schedule), and, with resume=True, the checkpoint restored into a
             TrainState (state.py) -> (Run, TrainState)
    fit      the step loop: every `interval` steps measure each domain's student perplexity on
             its cached validation split and (ddk) re-weight the domains; then, step by step,
             draw micro-batches by the domain weights and take one optimizer step (step.py:
             CE + gamma * KL(teacher || student) over the cached top-k with
             ddk.kernels.sparse_kl_loss, AdamW with linear warm-up then cosine decay)
    finish   final evaluation, the model (save_pretrained + tokenizer), plots, summary.json

    ddk: weights r_0 = softmax(ppl_S/ppl_T), then DDK updates (ddk_weights.py); loss CE + gamma KL
    kd:  fixed mixture (natural token proportions or uniform);                  loss CE + gamma KL
    cpt: same fixed mixture;                                  loss CE (the same call, gamma = 0)

The fixed mixture can also be given by name (domain_weights). For measuring what the cache's
compression costs, the KD target can be the top-k renormalised (kd_tail="renorm"), cut to
fewer entries than cached (kd_topk), or the teacher's full distribution recomputed online at
every step (online_teacher, see full_vocab_kd.py).

`Run` holds what prepare builds from the config and fit/finish only read (reader, model, the
optimizer, mixture, metrics log, resolved step budget); `TrainState` holds everything fit
advances and a checkpoint must carry. Nothing else survives a restart, which is why a resumed
run is exact.

Run directory (`out`): model/ (save_pretrained + tokenizer), checkpoints/, metrics.jsonl,
plots/domain_weights.png, plots/domain_ppl.png, summary.json.

Checkpoints (every `checkpoint_every` steps and on SIGTERM/SIGINT) hold the model, optimizer,
step (the LR schedule is a pure function of it), every rank's RNG and sampler state and the
domain-weight history (checkpoint.py); they are written to a temp dir and renamed, so a kill
mid-write never corrupts the latest one. `resume=True` continues bit-for-bit where the
checkpoint left off. After a signal (signals.py) the trainer finishes the current step,
checkpoints and returns with `interrupted_by` set (the CLI then exits with 128 + signal number,
like a killed process).

Under torchrun (WORLD_SIZE > 1) the model is wrapped in DDP (nccl on GPU, gloo on CPU; see
distributed.py); each rank samples its own stream (sampler seeded from (seed, rank)),
validation perplexities are all-reduced, and rank 0 alone writes checkpoints, metrics and the
model.

The order of everything that touches an RNG in prepare (model load, torch.manual_seed, moving
the model, the fused-head probe, FSDP, AdamW, DDP, restoring the checkpoint's RNG before the
barrier) is part of the results: keep it when editing.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from ddk.cache.errors import ConfigError
from ddk.cache.teacher.model_dir import transformers_progress
from ddk.cache.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_model,
)
from ddk.cache.train.config import TrainConfig
from ddk.cache.train.device import resolve_autocast
from ddk.cache.train.distributed import (
    Dist,
    all_reduce,
    barrier,
    close_distributed,
    init_distributed,
)
from ddk.cache.train.evaluate import DomainPerplexity, evaluate_domains
from ddk.cache.train.fsdp import full_state_dict, is_sharded, shard_model
from ddk.cache.train.full_vocab_kd import load_online_teacher
from ddk.cache.train.lm_head import (
    ONLINE_TEACHER_NEEDS_LOGITS,
    install_fused_forward,
    use_fused_head,
)
from ddk.cache.train.metrics import MetricsLog, plot_metrics
from ddk.cache.train.mixture import DomainMixture
from ddk.cache.train.sampler import PrefetchLoader
from ddk.cache.train.saturation import saturation_summary
from ddk.cache.train.signals import StopFlag
from ddk.cache.train.state import TrainState
from ddk.cache.train.step import lr_at, optimizer_step, steps_for_tokens, truncate_topk
from ddk.cache.train.student import load_student
from ddk.cache.train.training_cache import open_cache

__all__ = ["TrainConfig", "TrainResult", "latest_checkpoint", "lr_at", "train", "truncate_topk"]


@dataclass
class TrainResult:
    out: Path
    steps: int
    tokens: int
    interrupted_by: int | None = None      # signal number when stopped by SIGTERM/SIGINT
    final: list[DomainPerplexity] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    model: Any = None                      # the trained student (unwrapped), on its device


@dataclass
class Run:
    """What prepare builds from the config; fit and finish read it. Never checkpointed."""

    cfg: TrainConfig
    d: Dist
    reader: Any
    model: torch.nn.Module                 # unwrapped
    net: torch.nn.Module                   # what is trained: `model`, DDP-wrapped under
                                           # torchrun (under --fsdp: `model` itself, sharded)
    fused: bool                            # loss from the hidden states (lm_head.py)
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    teacher: torch.nn.Module | None        # online teacher (full-vocabulary KD) or None
    amp: torch.dtype | None                # autocast dtype
    save_dtype: torch.dtype                # the student's own dtype, for the saved model
    max_steps: int
    warmup: int
    tokens_per_step: int                   # over all ranks
    mixture: DomainMixture                 # this rank's sampler and the interval schedule
    metrics: MetricsLog

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def domains(self) -> list[str]:
        return self.reader.domains


@dataclass
class FitStats:
    """How fit went: timings for the summary, and the signal that stopped it, if any."""

    t_start: float
    train_time: float = 0.0
    loader_wait: float = 0.0
    steps_run: int = 0                     # steps taken by this process (a resume counts on)
    interrupted: int | None = None


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) one training run; see the module doc. Raises DDKError on bad input."""
    cfg.validate()
    d = init_distributed(cfg.device)
    try:
        with transformers_progress(cfg.progress):  # quiet: no loading/saving bars either
            run, state = prepare(cfg, d)
            return finish(run, state, fit(run, state))
    finally:
        close_distributed(d)


# -- prepare ------------------------------------------------------------------------------
def prepare(cfg: TrainConfig, d: Dist) -> tuple[Run, TrainState]:
    """Checks, cache, student, optimizer, DDP, mixture; the checkpoint restored if resuming.

    Every check that can fail comes before any work, and nothing is written before every
    rank has passed them (the barrier).
    """
    out = Path(cfg.out)
    _check_out(out)
    amp = resolve_autocast(cfg.bf16, d.device)  # --bf16 on a CPU fails here, first
    if cfg.fsdp and d.world == 1:
        raise ConfigError("--fsdp shards the student across the processes of a torchrun "
                          "launch (torchrun --nproc-per-node N ... ddk train-student ..., N >= 2); "
                          "a single process trains without it")
    latest = latest_checkpoint(out / "checkpoints")
    if not cfg.resume and (latest is not None or (out / "metrics.jsonl").exists()):
        raise ConfigError(f"{out} already holds a training run; pass --resume to continue it, "
                          "or choose another --out")
    reader, model, tokenizer, teacher = _load_models(cfg, d)
    save_dtype = _model_dtype(model)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    train_tokens = [reader.num_tokens(dom, "train") for dom in reader.domains]
    tokens_per_step = cfg.tokens_per_step(d.world, reader.seq_len)
    max_steps, warmup = _schedule(cfg, sum(train_tokens), tokens_per_step)
    resolved = {**asdict(cfg), "max_steps": max_steps, "warmup": warmup, "world_size": d.world}

    torch.manual_seed(cfg.seed)
    net, opt, fused = _place_student(cfg, d, model, amp, online_teacher=teacher is not None)
    state = TrainState(model, opt, resolved)
    if cfg.resume and latest is not None:
        load_checkpoint(state, latest, d)  # restores this rank's RNG too
    barrier(d)  # every rank has checked for an existing run before rank 0 writes anything
    metrics = MetricsLog(out / "metrics.jsonl", enabled=d.rank == 0,
                         tensorboard_dir=out / "tensorboard" if cfg.tensorboard else None)
    metrics.truncate(state.step)  # drop what a killed run logged after its checkpoint
    mixture = DomainMixture(cfg, reader, state.mixture, rank=d.rank,  # resumed: sampler restored
                            pin_memory=d.device.type == "cuda")
    run = Run(cfg, d, reader, model, net, fused, tokenizer, opt, teacher, amp, save_dtype,
              max_steps, warmup, tokens_per_step, mixture, metrics)
    return run, state


def _check_out(out: Path) -> None:
    """ConfigError if the run directory is an existing file, or would be inside one."""
    for p in (out, *out.parents):
        if not p.exists():
            continue
        if p.is_dir():
            return
        where = (f"--out {out} is an existing file" if p == out else
                 f"--out {out} cannot be created: {p} is an existing file")
        raise ConfigError(f"{where}, not a directory; choose another --out (a directory "
                          "that does not exist yet, or an earlier run's to --resume)")


def _place_student(cfg: TrainConfig, d: Dist, model: torch.nn.Module, amp: torch.dtype | None,
                   online_teacher: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer, bool]:
    """(net, AdamW, fused): the student on its device in train mode, with the fused-head
    forward if the run takes it, then sharded (--fsdp) or DDP-wrapped (torchrun)."""
    model.to(d.device)
    model.train()
    fused = use_fused_head(cfg.fused_lm_head, model, say=d.rank == 0,
                           blocker=ONLINE_TEACHER_NEEDS_LOGITS if online_teacher else None)
    if fused:
        install_fused_forward(model)
    if cfg.fsdp:  # before AdamW, which must see the sharded parameters
        shard_model(model, amp)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=d.device.type == "cuda")
    net: torch.nn.Module = model
    if d.world > 1 and not cfg.fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(net, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    return net, opt, fused


def _load_models(cfg: TrainConfig, d: Dist) -> tuple[Any, torch.nn.Module, Any,
                                                     torch.nn.Module | None]:
    """(cache reader, student, tokenizer, online teacher or None), each checked."""
    reader = open_cache(cfg.cache)
    model, tokenizer = load_student(cfg.student, reader, progress=cfg.progress)
    cfg.check_cache_target(reader.k, reader.target_kind)
    teacher = (None if cfg.online_teacher is None
               else load_online_teacher(cfg.online_teacher, reader, d.device))
    return reader, model, tokenizer, teacher


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype the student was stored in (its config's), so the trained one is saved alike."""
    dtype = getattr(model.config, "dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, torch.float32)
    return dtype


def _schedule(cfg: TrainConfig, train_tokens: int, tokens_per_step: int) -> tuple[int, int]:
    """(max_steps, warmup): max_steps, else the token budget (default one pass), in steps."""
    if cfg.max_steps is not None:
        max_steps = cfg.max_steps
    else:
        budget = cfg.max_tokens if cfg.max_tokens is not None else train_tokens
        max_steps = steps_for_tokens(budget, tokens_per_step)
    warmup = cfg.warmup if cfg.warmup is not None else max(1, round(0.01 * max_steps))
    return max_steps, warmup


# -- fit ----------------------------------------------------------------------------------
def fit(run: Run, state: TrainState) -> FitStats:
    """The step loop, from state.step to max_steps or a signal; advances `state` in place."""
    cfg = run.cfg
    loader = None

    from tqdm.auto import tqdm

    bar = tqdm(total=run.max_steps, initial=state.step, unit="step",
               disable=not (run.d.rank == 0 and cfg.progress), dynamic_ncols=True)
    stats = FitStats(t_start=time.perf_counter())
    with StopFlag() as stop, contextlib.ExitStack() as cleanup:
        cleanup.callback(lambda: loader is not None and loader.close())
        cleanup.callback(bar.close)
        while state.step < run.max_steps:
            served = run.mixture.loader_for(state.step, loader,  # measure, re-weight if due
                                            lambda step: _start_interval(run, state))
            if loader is not None and served is not loader:
                stats.loader_wait += loader.wait_s
            loader = served
            stats.interrupted = _train_step(run, state, loader, stop, bar, stats)
            if stats.interrupted or (cfg.checkpoint_every
                                     and state.step % cfg.checkpoint_every == 0
                                     and state.step < run.max_steps):
                save_checkpoint(state, run.out / "checkpoints", run.d, cfg.keep_checkpoints)
            if stats.interrupted:
                break
        if loader is not None:
            stats.loader_wait += loader.wait_s
    return stats


def _evaluate(run: Run) -> list[DomainPerplexity]:
    return evaluate_domains(run.model, run.reader, max_sequences=run.cfg.val_sequences,
                            batch_size=run.cfg.eval_batch_size or run.cfg.batch_size,
                            device=run.d.device, autocast_dtype=run.amp)


def _start_interval(run: Run, state: TrainState) -> None:
    """Measure every domain, set the weights for the next `interval` steps, log them."""
    rec = run.mixture.start_interval(state.step, _evaluate(run), run.max_steps)
    run.metrics.log_interval(state.step, run.domains, rec["weights"], rec["ppl_student"],
                             rec["ppl_teacher"], saturation=rec.get("saturation"))
    sat = rec.get("saturation")
    if run.d.rank == 0 and sat and sat["saturated"]:
        from tqdm.auto import tqdm

        before = any(h.get("saturation", {}).get("saturated") for h in state.mixture.history[:-1])
        msg = (f"ddk's weights are still saturated ({sat['top_domain']} "
               f"{sat['top_share']:.2f} of the discrepancy-driven weight)" if before
               else sat["message"])
        tqdm.write(f"warning: step {state.step}: {msg}", file=sys.stderr)


def _train_step(run: Run, state: TrainState, loader: PrefetchLoader, stop: StopFlag, bar: Any,
                stats: FitStats) -> int | None:
    """One optimizer step, logged; returns the signal number if any rank was signalled."""
    cfg, d = run.cfg, run.d
    t0 = time.perf_counter()
    lr = lr_at(state.step, max_steps=run.max_steps, warmup=run.warmup, lr=cfg.lr,
               min_lr=cfg.min_lr)
    sums = optimizer_step(run.net, run.model, run.optimizer, loader, cfg, d, run.amp, lr,
                          run.teacher, fused=run.fused)  # one host sync
    sums[4] = 1.0 if stop.signum is not None else 0.0
    sums = all_reduce(sums, d)  # (sums over ranks) loss, ce, kl, grad norm, stop
    grad_norm = float(sums[3]) / d.world
    loss_v, ce_v, kl_v = (float(x) / d.world for x in sums[:3])
    state.step += 1
    stats.steps_run += 1
    state.tokens += run.tokens_per_step
    dt = time.perf_counter() - t0
    stats.train_time += dt
    run.metrics.log_step(state.step - 1, loss=loss_v, ce=ce_v, kl=kl_v, lr=lr,
                         grad_norm=grad_norm, tokens=state.tokens,
                         tokens_per_s=run.tokens_per_step / dt)
    bar.update(1)
    bar.set_postfix(loss=f"{loss_v:.4f}", tok_s=f"{run.tokens_per_step / dt:,.0f}")
    return int(stop.signum or signal.SIGTERM) if sums[4] > 0 else None


# -- finish -------------------------------------------------------------------------------
def finish(run: Run, state: TrainState, stats: FitStats) -> TrainResult:
    """Final evaluation (unless interrupted), model, plots and summary.json (rank 0)."""
    final: list[DomainPerplexity] = []
    if stats.interrupted is None:
        final = _evaluate(run)
        if state.mixture.weights is not None:
            run.metrics.log_interval(state.step, run.domains, state.mixture.weights.tolist(),
                                     [p.student_ppl for p in final],
                                     [p.teacher_ppl for p in final])
    summary = _summary(run, state, stats, final)
    weights = None  # a sharded model's, gathered to rank 0 (collective)
    if stats.interrupted is None and is_sharded(run.model):
        weights = full_state_dict(run.model)
    if run.d.rank == 0:
        if stats.interrupted is None:
            save_model(run.model, run.tokenizer, run.out / "model", run.save_dtype, weights)
        plot_metrics(run.out / "metrics.jsonl", run.out / "plots")
        tmp = run.out / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2, default=str))
        os.replace(tmp, run.out / "summary.json")
    run.metrics.close()
    barrier(run.d)
    return TrainResult(run.out, state.step, state.tokens, stats.interrupted, final,
                       state.mixture.history, summary, run.model)


def _summary(run: Run, state: TrainState, stats: FitStats,
             final: list[DomainPerplexity]) -> dict[str, Any]:
    """summary.json: what ran, how fast, the weight history and the final perplexities."""
    tps = run.tokens_per_step
    return {
        "method": run.cfg.method, "steps": state.step, "max_steps": run.max_steps,
        "tokens": state.tokens, "tokens_per_step": tps, "world_size": run.d.world,
        "fused_lm_head": run.fused, "fsdp": run.cfg.fsdp,
        "train_tokens_per_s": (tps * stats.steps_run / stats.train_time
                               if stats.train_time > 0 else None),
        "loader_wait_s": stats.loader_wait, "train_time_s": stats.train_time,
        "wall_s": time.perf_counter() - stats.t_start, "interrupted_by": stats.interrupted,
        "domains": run.domains, "weight_history": state.mixture.history,
        "final": [p.to_dict() for p in final], "config": state.config,
        "ddk_saturation": saturation_summary(state.mixture.history, run.domains),
    }
