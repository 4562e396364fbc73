"""One optimizer step: the LR schedule, the per-micro-batch loss, accumulation and AdamW.

Every method takes the same path: one ddk.kernels.sparse_kl_loss call per micro-batch
(CE + gamma * T^2 * KL over the cached top-k; cpt: gamma = 0), or the same loss from the
hidden states and head weight without the full logits (fused=True: the model's forward
installed by lm_head.install_fused_forward), or, with an online teacher, the full-vocabulary
loss of full_vocab_kd.py. `truncate_topk` cuts the cached top-k to fewer entries
(--kd-topk). The LR is a pure function of the step, so a checkpoint need not store it.
"""

from __future__ import annotations

import math

import torch
from ddk.cache.train.config import TrainConfig
from ddk.cache.train.distributed import Dist, grad_sync
from ddk.cache.train.full_vocab_kd import full_vocab_kd_loss
from ddk.cache.train.lm_head import FusedTarget
from ddk.cache.train.sampler import PrefetchLoader, SampledBatch

__all__ = ["lr_at", "micro_loss", "optimizer_step", "steps_for_tokens", "truncate_topk"]


def steps_for_tokens(tokens: int, tokens_per_step: int) -> int:
    """Optimizer steps that train on `tokens` (rounded up, at least 1): a token budget, or
    one pass over the cache's training tokens (the default budget, and DDKTrainer's epoch)."""
    return max(1, math.ceil(tokens / tokens_per_step))


def lr_at(step: int, *, max_steps: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warm-up to `lr` over `warmup` steps, then cosine down to `min_lr` at max_steps."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    span = max(1, max_steps - warmup)
    ratio = min(1.0, (step - warmup) / span)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def micro_loss(model: torch.nn.Module, batch: SampledBatch, cfg: TrainConfig,
               device: torch.device, amp: torch.dtype | None,
               teacher: torch.nn.Module | None = None, *, fused: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss to backprop, ce, kl) for one micro-batch, the same path for every method.

    One sparse_kl_loss call (CE + gamma * T^2 * KL; cpt: gamma = 0) writes the gradient into
    the logits buffer and returns the logged parts from the same pass (KL is computed for
    every method alike, so cpt logs how far it is from the teacher too). The returned kl is
    KL(teacher_T || student_T) itself, without the T^2 factor. With an online `teacher` the
    target is its full distribution instead (full_vocab_kd_loss, the comparison baseline).
    With `fused` (the model, however wrapped, has lm_head.install_fused_forward's forward),
    the same loss comes from the hidden states and head weight without the full logits.
    """
    from ddk.kernels import sparse_kl_loss

    ids = batch.input_ids.to(device, non_blocking=True)
    # positions 0..L-2 predict tokens 1..L-1; causal attention makes token L-1 irrelevant to them
    labels = ids[:, 1:].reshape(-1)
    kl_weight = 0.0 if cfg.method == "cpt" else cfg.gamma
    if fused:
        target = FusedTarget(*_targets(batch, cfg, device), labels, kl_weight=kl_weight,
                             temperature=cfg.temperature, tail=cfg.kd_tail, amp=amp)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss, kl, ce = model(input_ids=ids[:, :-1], ddk_target=target)
        return loss, ce, kl
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        logits = model(input_ids=ids[:, :-1], use_cache=False).logits
    logits = logits.flatten(0, 1)
    if teacher is not None:
        with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            t_logits = teacher(input_ids=ids[:, :-1], use_cache=False).logits.flatten(0, 1)
        loss, kl, ce = full_vocab_kd_loss(logits, t_logits, labels, kl_weight=kl_weight,
                                          temperature=cfg.temperature)
        return loss, ce, kl
    topk_ids, topk_lp, tail = _targets(batch, cfg, device)
    loss, kl, ce = sparse_kl_loss(logits, topk_ids, topk_lp, tail, labels, kl_weight=kl_weight,
                                  ce_weight=1.0, temperature=cfg.temperature, tail=cfg.kd_tail,
                                  inplace_grad=True,
                                  return_components=True)  # validates the cached ids/log-probs
    return loss, ce, kl


def _targets(batch: SampledBatch, cfg: TrainConfig, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cached teacher target as [N, k] ids, [N, k] log-probs, [N] tail, cut to --kd-topk."""
    k = batch.topk_ids.shape[-1]
    topk_ids = batch.topk_ids.to(device, non_blocking=True).view(-1, k)
    topk_lp = batch.topk_logprobs.to(device, non_blocking=True).view(-1, k)
    tail = batch.tail_logmass.to(device, non_blocking=True).view(-1)
    if cfg.kd_topk is not None and cfg.kd_topk < k:
        topk_ids, topk_lp, tail = truncate_topk(topk_ids, topk_lp, tail, cfg.kd_topk)
    return topk_ids, topk_lp, tail


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


def optimizer_step(net: torch.nn.Module, model: torch.nn.Module, opt: torch.optim.Optimizer,
                   loader: PrefetchLoader, cfg: TrainConfig, d: Dist,
                   amp: torch.dtype | None, lr: float,
                   teacher: torch.nn.Module | None = None, *, fused: bool = False
                   ) -> torch.Tensor:
    """grad_accum micro-batches, clip, AdamW step. Returns float64 CPU [loss, ce, kl, gnorm, 0].

    `net` is the model as trained (DDP-wrapped under torchrun, or FSDP-sharded; gradients are
    reduced only on the last micro-batch), `model` the unwrapped one whose gradients are
    clipped (under FSDP the same module; its norm is a DTensor, made whole for the log).
    """
    for group in opt.param_groups:
        group["lr"] = lr
    acc = torch.zeros(3, dtype=torch.float32, device=d.device)
    for micro in range(cfg.grad_accum):
        batch = next(loader)
        last = micro == cfg.grad_accum - 1
        with grad_sync(net, last):
            loss, ce, kl = micro_loss(net, batch, cfg, d.device, amp, teacher, fused=fused)
            (loss / cfg.grad_accum).backward()
        acc += torch.stack([loss.detach(), ce, kl]).float()
    max_norm = cfg.grad_clip if cfg.grad_clip is not None else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor
        grad_norm = grad_norm.full_tensor()
    opt.step()
    opt.zero_grad(set_to_none=True)
    out = torch.zeros(5, dtype=torch.float64)
    out[:4] = torch.cat([acc / cfg.grad_accum, grad_norm.reshape(1).float()]).double().cpu()
    return out
