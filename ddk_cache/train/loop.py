"""Train a student on a teacher cache: DDK domain re-weighting, or the kd / cpt baselines.

The loop (nanoGPT-style, see `_train`): every `interval` steps measure each domain's student
perplexity on its cached validation split and (ddk) re-weight the domains; then, step by step,
draw micro-batches by the domain weights, compute CE + gamma * KL(teacher || student) over the
cached top-k with ddk.kernels.sparse_kl_loss (one call per micro-batch, for every method), and
take an AdamW step with linear warm-up then cosine decay.

    ddk: weights r_0 = softmax(ppl_S/ppl_T), then DDK updates (ddk_weights.py); loss CE + gamma KL
    kd:  fixed mixture (natural token proportions or uniform);                  loss CE + gamma KL
    cpt: same fixed mixture;                                  loss CE (the same call, gamma = 0)

The fixed mixture can also be given by name (domain_weights). For measuring what the cache's
compression costs, the KD target can be the top-k renormalised (kd_tail="renorm"), cut to
fewer entries than cached (kd_topk), or the teacher's full distribution recomputed online at
every step (online_teacher, see online_teacher.py).

Run directory (`out`): model/ (save_pretrained + tokenizer), checkpoints/, metrics.jsonl,
plots/domain_weights.png, plots/domain_ppl.png, summary.json.

Checkpoints (every `checkpoint_every` steps and on SIGTERM/SIGINT) hold the model, optimizer,
step (the LR schedule is a pure function of it), every rank's RNG and sampler state and the
domain-weight history; they are written to a temp dir and renamed, so a kill mid-write never
corrupts the latest one. `resume=True` continues bit-for-bit where the checkpoint left off.
After a signal the trainer finishes the current step, checkpoints and returns with
`interrupted_by` set (the CLI then exits with 128 + signal number, like a killed process).

Under torchrun (WORLD_SIZE > 1) the model is wrapped in DDP (nccl on GPU, gloo on CPU); each
rank samples its own stream (sampler seeded from (seed, rank)), validation perplexities are
all-reduced, and rank 0 alone writes checkpoints, metrics and the model.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ddk.cache.errors import ConfigError
from ddk.cache.train.config import RESUME_KEYS, TrainConfig
from ddk.cache.train.ddk_weights import (
    explicit_weights,
    fixed_weights,
    initial_weights,
    update_weights,
)
from ddk.cache.train.evaluate import DomainPerplexity, evaluate_domains, load_student, open_cache
from ddk.cache.train.full_vocab_kd import full_vocab_kd_loss, load_online_teacher
from ddk.cache.train.metrics import MetricsLog, plot_metrics
from ddk.cache.train.sampler import DomainSampler, PrefetchLoader, SampledBatch

__all__ = ["TrainConfig", "TrainResult", "lr_at", "train"]

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


def lr_at(step: int, *, max_steps: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warm-up to `lr` over `warmup` steps, then cosine down to `min_lr` at max_steps."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    span = max(1, max_steps - warmup)
    ratio = min(1.0, (step - warmup) / span)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


# -- distributed / device -------------------------------------------------------------------
@dataclass
class _Dist:
    rank: int
    world: int
    device: torch.device
    owns_group: bool


def _setup(device: str | None) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was requested but no CUDA GPU is available")
    if world <= 1:
        return _Dist(0, 1, dev, False)
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), dev, owns)


def _all_reduce(t: torch.Tensor, d: _Dist, op: str = "sum") -> torch.Tensor:
    if d.world == 1:
        return t
    import torch.distributed as dist

    x = t.to(d.device)
    dist.all_reduce(x, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return x.cpu()


def _gather(obj: Any, d: _Dist) -> list[Any]:
    if d.world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def _barrier(d: _Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


# -- signals ------------------------------------------------------------------------------
class _StopFlag:
    """SIGTERM/SIGINT set a flag that the loop checks after each step (a 2nd SIGINT aborts)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._prev: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> _StopFlag:  # noqa: PYI034
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._prev[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._prev.items():
            signal.signal(s, h)


# -- checkpoints --------------------------------------------------------------------------
def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The directory named by checkpoints/latest, if it exists."""
    pointer = ckpt_dir / "latest"
    if not pointer.exists():
        return None
    path = ckpt_dir / pointer.read_text().strip()
    return path if (path / "state.pt").exists() else None


def _write_checkpoint(ckpt_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """state.pt in a temp dir, renamed into place, then `latest` replaced: atomic on POSIX."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for stale in ckpt_dir.glob(".tmp-*"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    name = f"step-{step:08d}"
    tmp = ckpt_dir / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir()
    with open(tmp / "state.pt", "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    final = ckpt_dir / name
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    pointer_tmp = ckpt_dir / f".latest-{os.getpid()}"
    pointer_tmp.write_text(name + "\n")
    os.replace(pointer_tmp, ckpt_dir / "latest")
    for old in sorted(p for p in ckpt_dir.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# -- the loop -----------------------------------------------------------------------------
def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) one training run; see the module doc. Raises DDKError on bad input."""
    cfg.validate()
    d = _setup(cfg.device)
    try:
        return _train(cfg, d)
    finally:
        if d.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _next_weights(cfg: TrainConfig, prev: torch.Tensor | None, ppl: list[DomainPerplexity],
                  fixed: torch.Tensor | None) -> torch.Tensor:
    if cfg.method != "ddk":
        return fixed
    s = [p.student_ppl for p in ppl]
    t = [p.teacher_ppl for p in ppl]
    return initial_weights(s, t) if prev is None else update_weights(prev, s, t, cfg.alpha)


def _micro_loss(model: torch.nn.Module, batch: SampledBatch, cfg: TrainConfig,
                device: torch.device, amp: torch.dtype | None,
                teacher: torch.nn.Module | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss to backprop, ce, kl) for one micro-batch, the same path for every method.

    One sparse_kl_loss call (CE + gamma * T^2 * KL; cpt: gamma = 0) writes the gradient into
    the logits buffer and returns the logged parts from the same pass (KL is computed for
    every method alike, so cpt logs how far it is from the teacher too). The returned kl is
    KL(teacher_T || student_T) itself, without the T^2 factor. With an online `teacher` the
    target is its full distribution instead (full_vocab_kd_loss, the comparison baseline).
    """
    from ddk.kernels import sparse_kl_loss

    ids = batch.input_ids.to(device, non_blocking=True)
    # positions 0..L-2 predict tokens 1..L-1; causal attention makes token L-1 irrelevant to them
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        logits = model(input_ids=ids[:, :-1], use_cache=False).logits
    logits = logits.flatten(0, 1)
    labels = ids[:, 1:].reshape(-1)
    kl_weight = 0.0 if cfg.method == "cpt" else cfg.gamma
    if teacher is not None:
        with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            t_logits = teacher(input_ids=ids[:, :-1], use_cache=False).logits.flatten(0, 1)
        loss, kl, ce = full_vocab_kd_loss(logits, t_logits, labels, kl_weight=kl_weight,
                                          temperature=cfg.temperature)
        return loss, ce, kl
    k = batch.topk_ids.shape[-1]
    topk_ids = batch.topk_ids.to(device, non_blocking=True).view(-1, k)
    topk_lp = batch.topk_logprobs.to(device, non_blocking=True).view(-1, k)
    tail = batch.tail_logmass.to(device, non_blocking=True).view(-1)
    if cfg.kd_topk is not None and cfg.kd_topk < k:
        topk_ids, topk_lp, tail = truncate_topk(topk_ids, topk_lp, tail, cfg.kd_topk)
    loss, kl, ce = sparse_kl_loss(logits, topk_ids, topk_lp, tail, labels, kl_weight=kl_weight,
                                  ce_weight=1.0, temperature=cfg.temperature, tail=cfg.kd_tail,
                                  inplace_grad=True,
                                  return_components=True)  # validates the cached ids/log-probs
    return loss, ce, kl


def truncate_topk(topk_ids: torch.Tensor, topk_logprobs: torch.Tensor,
                  tail_logmass: torch.Tensor, k: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cached top-k cut to its first k entries, the dropped mass moved into the tail.

    Cached entries are sorted by descending log-prob, so the first k are the teacher's top-k;
    the new tail log-mass is logsumexp(old tail, dropped log-probs), which is what a cache
    built with this k would have stored (up to the quantisation of the dropped entries).
    """
    rest = torch.cat([tail_logmass.unsqueeze(-1).to(topk_logprobs.dtype),
                      topk_logprobs[:, k:]], dim=-1)
    return (topk_ids[:, :k].contiguous(), topk_logprobs[:, :k].contiguous(),
            torch.logsumexp(rest, dim=-1))


def _optimizer_step(net: torch.nn.Module, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    loader: PrefetchLoader, cfg: TrainConfig, d: _Dist,
                    amp: torch.dtype | None, lr: float,
                    teacher: torch.nn.Module | None = None) -> torch.Tensor:
    """grad_accum micro-batches, clip, AdamW step. Returns float64 CPU [loss, ce, kl, gnorm, 0]."""
    for group in opt.param_groups:
        group["lr"] = lr
    acc = torch.zeros(3, dtype=torch.float32, device=d.device)
    for micro in range(cfg.grad_accum):
        batch = next(loader)
        last = micro == cfg.grad_accum - 1
        with contextlib.nullcontext() if last or d.world == 1 else net.no_sync():
            loss, ce, kl = _micro_loss(net, batch, cfg, d.device, amp, teacher)
            (loss / cfg.grad_accum).backward()
        acc += torch.stack([loss.detach(), ce, kl]).float()
    max_norm = cfg.grad_clip if cfg.grad_clip is not None else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    out = torch.zeros(5, dtype=torch.float64)
    out[:4] = torch.cat([acc / cfg.grad_accum, grad_norm.reshape(1).float()]).double().cpu()
    return out


def _train(cfg: TrainConfig, d: _Dist) -> TrainResult:
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    main = d.rank == 0
    # every check that can fail comes before any work: options, run dir, cache, student
    if cfg.bf16 and d.device.type != "cuda":
        raise ConfigError("--bf16 needs a CUDA device; drop it (or pass --no-bf16) on CPU")
    latest = latest_checkpoint(ckpt_dir)
    if not cfg.resume and (latest is not None or (out / "metrics.jsonl").exists()):
        raise ConfigError(f"{out} already holds a training run; pass --resume to continue it, "
                          "or choose another --out")
    reader = open_cache(cfg.cache)
    domains = reader.domains
    if not cfg.progress:  # quiet means quiet: no weight-loading bars either
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    model, tokenizer = load_student(cfg.student, reader)
    if cfg.kd_topk is not None and cfg.kd_topk > reader.k:
        raise ConfigError(f"--kd-topk {cfg.kd_topk} exceeds the cache's k = {reader.k}; "
                          f"pass --kd-topk <= {reader.k} or rebuild the cache with a larger k")
    teacher = (None if cfg.online_teacher is None
               else load_online_teacher(cfg.online_teacher, reader, d.device))
    save_dtype = getattr(model.config, "dtype", None) or torch.float32
    if isinstance(save_dtype, str):
        save_dtype = getattr(torch, save_dtype, torch.float32)
    use_bf16 = (d.device.type == "cuda" and torch.cuda.is_bf16_supported()
                if cfg.bf16 is None else cfg.bf16)
    amp = torch.bfloat16 if use_bf16 else None
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    L = reader.seq_len
    tokens_per_step = cfg.batch_size * cfg.grad_accum * d.world * L
    train_tokens = [reader.num_tokens(dom, "train") for dom in domains]
    if cfg.max_steps is not None:
        max_steps = cfg.max_steps
    else:
        budget = cfg.max_tokens if cfg.max_tokens is not None else sum(train_tokens)
        max_steps = max(1, math.ceil(budget / tokens_per_step))
    warmup = cfg.warmup if cfg.warmup is not None else max(1, round(0.01 * max_steps))
    resolved = {**asdict(cfg), "max_steps": max_steps, "warmup": warmup, "world_size": d.world}

    torch.manual_seed(cfg.seed)
    model.to(d.device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=d.device.type == "cuda")
    net: torch.nn.Module = model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)

    sampler = DomainSampler([reader.num_sequences(dom, "train") for dom in domains],
                            [1.0] * len(domains), seed=cfg.seed, rank=d.rank)
    if cfg.method == "ddk":
        fixed = None
    elif cfg.domain_weights is not None:
        fixed = explicit_weights(cfg.domain_weights, domains)
    else:
        fixed = fixed_weights(cfg.mixture, train_tokens)

    # state that a checkpoint carries besides model/optimizer
    step, tokens, weights = 0, 0, None
    history: list[dict[str, Any]] = []
    interval_start, interval_len, snapshot = 0, 0, None
    if cfg.resume and latest is not None:
        ck = torch.load(latest / "state.pt", map_location="cpu", weights_only=False)
        saved = ck["config"]
        changed = [f"{k}={saved.get(k)!r}" for k in RESUME_KEYS if saved.get(k) != resolved.get(k)]
        if changed:
            raise ConfigError(
                f"cannot resume {latest}: options differ from the checkpoint's "
                f"({', '.join(changed)}); resume with the original options or start a new --out")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, tokens, weights = ck["step"], ck["tokens"], ck["weights"]
        history = ck["history"]
        interval_start, interval_len = ck["interval_start"], ck["interval_len"]
        snapshot = ck["samplers"][d.rank]
        _set_rng_state(ck["rng"][d.rank])
        del ck
    _barrier(d)  # every rank has checked for an existing run before rank 0 writes anything
    metrics = MetricsLog(out / "metrics.jsonl", enabled=main,
                         tensorboard_dir=out / "tensorboard" if cfg.tensorboard else None)
    metrics.truncate(step)  # drop what a killed run logged after its checkpoint (or a stale file)

    def checkpoint() -> None:
        rng = _gather(_rng_state(), d)
        samplers = _gather(snapshot, d)
        if main:
            _write_checkpoint(ckpt_dir, step, {
                "step": step, "tokens": tokens, "weights": weights, "history": history,
                "interval_start": interval_start, "interval_len": interval_len,
                "samplers": samplers, "rng": rng, "config": resolved,
                "model": model.state_dict(), "optimizer": opt.state_dict(),
            }, cfg.keep_checkpoints)
        _barrier(d)

    def evaluate() -> list[DomainPerplexity]:
        return evaluate_domains(model, reader, max_sequences=cfg.val_sequences,
                                batch_size=cfg.eval_batch_size or cfg.batch_size,
                                device=d.device, autocast_dtype=amp)

    def make_loader(skip: int) -> PrefetchLoader:
        return PrefetchLoader(reader, domains, sampler, cfg.batch_size,
                              interval_len * cfg.grad_accum, skip=skip, depth=cfg.prefetch,
                              pin_memory=d.device.type == "cuda")

    loader = None
    if snapshot is not None:  # resumed: replay this interval's draws up to the checkpoint
        sampler.load_state_dict(snapshot)
        loader = make_loader(skip=(step - interval_start) * cfg.grad_accum)

    from tqdm.auto import tqdm

    bar = tqdm(total=max_steps, initial=step, unit="step", disable=not (main and cfg.progress),
               dynamic_ncols=True)
    t_start, train_time, loader_wait, interrupted = time.perf_counter(), 0.0, 0.0, None
    steps_run = 0  # steps taken by this process (a resumed run counts from its checkpoint)
    with _StopFlag() as stop, contextlib.ExitStack() as cleanup:
        cleanup.callback(lambda: loader is not None and loader.close())
        cleanup.callback(bar.close)
        while step < max_steps:
            if step == interval_start + interval_len:  # new interval: measure, re-weight
                if loader is not None:
                    loader_wait += loader.wait_s
                    loader.close()
                ppl = evaluate()
                weights = _next_weights(cfg, weights, ppl, fixed)
                rec = {"step": step, "weights": weights.tolist(),
                       "ppl_student": [p.student_ppl for p in ppl],
                       "ppl_teacher": [p.teacher_ppl for p in ppl]}
                history.append(rec)
                metrics.log_interval(step, domains, rec["weights"], rec["ppl_student"],
                                     rec["ppl_teacher"])
                sampler.set_weights(weights)
                snapshot = sampler.state_dict()
                interval_start, interval_len = step, min(cfg.interval, max_steps - step)
                loader = make_loader(skip=0)

            t0 = time.perf_counter()
            lr = lr_at(step, max_steps=max_steps, warmup=warmup, lr=cfg.lr, min_lr=cfg.min_lr)
            stats = _optimizer_step(net, model, opt, loader, cfg, d, amp, lr,
                                    teacher)  # one host sync
            stats[4] = 1.0 if stop.signum is not None else 0.0
            stats = _all_reduce(stats, d)  # (sums over ranks) loss, ce, kl, grad norm, stop
            grad_norm = float(stats[3]) / d.world
            loss_v, ce_v, kl_v = (float(x) / d.world for x in stats[:3])
            step += 1
            steps_run += 1
            tokens += tokens_per_step
            dt = time.perf_counter() - t0
            train_time += dt
            metrics.log_step(step - 1, loss=loss_v, ce=ce_v, kl=kl_v, lr=lr,
                             grad_norm=grad_norm, tokens=tokens, tokens_per_s=tokens_per_step / dt)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_v:.4f}", tok_s=f"{tokens_per_step / dt:,.0f}")
            if stats[4] > 0:
                interrupted = int(stop.signum or signal.SIGTERM)
            if interrupted or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0
                               and step < max_steps):
                checkpoint()
            if interrupted:
                break
        if loader is not None:
            loader_wait += loader.wait_s

    final: list[DomainPerplexity] = []
    if interrupted is None:
        final = evaluate()
        if weights is not None:
            metrics.log_interval(step, domains, weights.tolist(),
                                 [p.student_ppl for p in final], [p.teacher_ppl for p in final])
    summary = {
        "method": cfg.method, "steps": step, "max_steps": max_steps, "tokens": tokens,
        "tokens_per_step": tokens_per_step, "world_size": d.world,
        "train_tokens_per_s": (tokens_per_step * steps_run / train_time
                               if train_time > 0 else None),
        "loader_wait_s": loader_wait, "train_time_s": train_time,
        "wall_s": time.perf_counter() - t_start, "interrupted_by": interrupted,
        "domains": domains, "weight_history": history,
        "final": [p.to_dict() for p in final], "config": resolved,
    }
    if main:
        if interrupted is None:
            _save_model(model, tokenizer, out / "model", save_dtype)
        plot_metrics(out / "metrics.jsonl", out / "plots")
        tmp = out / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2, default=str))
        os.replace(tmp, out / "summary.json")
    metrics.close()
    _barrier(d)
    return TrainResult(out, step, tokens, interrupted, final, history, summary, model)


def _save_model(model: torch.nn.Module, tokenizer: Any, path: Path, dtype: torch.dtype) -> None:
    """save_pretrained + tokenizer into `path`, via a temp dir so `path` is always whole."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if dtype in (torch.bfloat16, torch.float16):
        model.to(dtype)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.rename(tmp, path)
