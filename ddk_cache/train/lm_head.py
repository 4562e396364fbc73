"""The fused LM-head path: the student's loss straight from its hidden states and head weight.

The unfused step materialises the student's [tokens, vocab] logits (805 MB in fp32 for a
micro-batch of 8 x 512 at vocab 49152) before the loss reads them. Here the backbone runs to
its last hidden state and ddk.kernels.fused_linear_sparse_kl_loss computes CE + gamma * KL
against the head weight chunk by chunk, so only one chunk of logits ever exists. The maths is
the same, so the choice is not a resume key.

It applies only where logits == last_hidden_state @ head.weight.T: a bias-free linear head
(tied embeddings included) and a forward that adds nothing after it. `fused_head_problem`
names the first thing that breaks this (soft-capping, logit scaling, a bias, ...), checking the
config and then one small forward both ways, so an architecture it does not know is still
caught. `FusedHeadLoss` puts the loss inside a module's forward so DDP sees one forward per
micro-batch, as it does for the plain model.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from ddk.cache.errors import ConfigError

__all__ = ["FusedHeadLoss", "fused_head_problem", "is_fused_head", "use_fused_head"]

log = logging.getLogger(__name__)

#: config fields that transform the head's output in known architectures, and the value
#: (or values) at which they do nothing
_HEAD_TRANSFORMS = {
    "final_logit_softcapping": (None, 0, 0.0),   # gemma2 / gemma3
    "logit_scale": (None, 1, 1.0),                # cohere
    "logits_scaling": (None, 1, 1.0),             # granite
}
_PROBE_TOKENS = 8
_PROBE_TOL = 1e-4


def fused_head_problem(model: Any) -> str | None:
    """Why the fused path cannot reproduce this model's logits, or None if it can."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear):
        return f"its output layer is {type(head).__name__}, not a linear LM head"
    if head.bias is not None:
        return "its LM head has a bias, which the fused kernel does not take"
    for name, neutral in _HEAD_TRANSFORMS.items():
        value = getattr(model.config, name, None)
        if value not in neutral:
            return f"its config sets {name}={value}, which transforms the head's output"
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is None or decoder is model:
        return "it has no separate decoder module to run up to the hidden states"
    gap = _probe_gap(model, decoder, head)
    if gap > _PROBE_TOL:
        return (f"its forward does more than its head: logits differ from "
                f"head(last hidden state) by up to {gap:.3g}")
    return None


def _probe_gap(model: Any, decoder: torch.nn.Module, head: torch.nn.Linear) -> float:
    """Max |model logits - head(decoder hidden state)| on a few tokens, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        n = min(_PROBE_TOKENS, head.out_features)
        ids = torch.arange(n, device=head.weight.device).unsqueeze(0)
        with torch.no_grad():
            full = model(input_ids=ids, use_cache=False).logits
            hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state
            fused = head(hidden.to(head.weight.dtype))
        return float((full.float() - fused.float()).abs().max())
    finally:
        model.train(was_training)


def use_fused_head(requested: bool | None, model: Any, online_teacher: bool, *,
                   say: bool = True) -> bool:
    """Whether this run takes the fused path: requested True/False, or None for automatic.

    Automatic falls back to the unfused path with one log line saying why; a forced True
    that cannot work is a ConfigError. `say`: log the fallback (rank 0 only under torchrun).
    """
    if requested is False:
        return False
    problem = ("--online-teacher distils from the teacher's full logits, so the student's "
               "are needed too") if online_teacher else fused_head_problem(model)
    if problem is None:
        return True
    if requested:
        raise ConfigError(f"--fused-lm-head cannot be used with this student: {problem}. "
                          "Pass --no-fused-lm-head (or leave it unset to choose automatically)")
    if say:
        log.warning("ddk: training with the unfused LM head (full logits): %s", problem)
    return False


class FusedHeadLoss(torch.nn.Module):
    """The student with the fused loss as its forward: (loss, kl, ce) for one micro-batch.

    Holds the model as `model`, so its parameters (and DDP's view of them) are the model's.
    Under autocast the head runs in the autocast dtype, as the unfused Linear would.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, topk_ids: torch.Tensor,
                topk_logprobs: torch.Tensor, tail_logmass: torch.Tensor, labels: torch.Tensor,
                *, kl_weight: float, temperature: float, tail: str,
                amp: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from ddk.kernels import fused_linear_sparse_kl_loss

        hidden = self.model.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
        weight = self.model.get_output_embeddings().weight
        dtype = amp or weight.dtype
        with torch.autocast(input_ids.device.type, enabled=False):
            return fused_linear_sparse_kl_loss(
                hidden.flatten(0, 1).to(dtype), weight.to(dtype), topk_ids, topk_logprobs,
                tail_logmass, labels, kl_weight=kl_weight, ce_weight=1.0,
                temperature=temperature, tail=tail, return_components=True)


def is_fused_head(net: torch.nn.Module) -> bool:
    """Whether `net` (or the module DDP wraps) trains through FusedHeadLoss."""
    return isinstance(getattr(net, "module", net), FusedHeadLoss)
