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
caught. `install_fused_forward` puts the loss inside the model's own forward (taken when a
`FusedTarget` is passed), so DDP, FSDP2 and the transformers Trainer's wrappers see one
ordinary forward per micro-batch, as they do for the unfused path.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from ddk.cache.errors import ConfigError

__all__ = ["FusedTarget", "fused_head_problem", "install_fused_forward", "use_fused_head"]

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


#: why a run with an online teacher cannot take the fused path (a `blocker` of use_fused_head)
ONLINE_TEACHER_NEEDS_LOGITS = ("--online-teacher distils from the teacher's full logits, so "
                               "the student's are needed too")


def use_fused_head(requested: bool | None, model: Any, *, blocker: str | None = None,
                   say: bool = True) -> bool:
    """Whether this run takes the fused path: requested True/False, or None for automatic.

    Automatic falls back to the unfused path with one log line saying why; a forced True
    that cannot work is a ConfigError. `blocker`: a reason outside the model that rules the
    fused path out (an online teacher, a head sharded beyond the forward's reach), checked
    before the model. `say`: log the fallback (rank 0 only under torchrun).
    """
    if requested is False:
        return False
    problem = blocker or fused_head_problem(model)
    if problem is None:
        return True
    if requested:
        raise ConfigError(f"--fused-lm-head cannot be used with this student: {problem}. "
                          "Pass --no-fused-lm-head (fused_lm_head=False in Python), or leave "
                          "it unset to choose automatically")
    if say:
        log.warning("ddk: training with the unfused LM head (full logits): %s", problem)
    return False


class FusedTarget:
    """One micro-batch's cached teacher target and loss options, for the fused forward.

    A plain object, not a tensor container, so that wrappers which cast or move a forward's
    tensor arguments (FSDP2's mixed-precision input cast, DDP's device move) leave the
    teacher log-probs in fp32; its tensors are already on the model's device.
    """

    __slots__ = ("amp", "kl_weight", "labels", "tail", "tail_logmass", "temperature",
                 "topk_ids", "topk_logprobs")

    def __init__(self, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor,
                 tail_logmass: torch.Tensor, labels: torch.Tensor, *, kl_weight: float,
                 temperature: float, tail: str, amp: torch.dtype | None) -> None:
        self.topk_ids, self.topk_logprobs, self.tail_logmass = topk_ids, topk_logprobs, tail_logmass
        self.labels, self.kl_weight, self.temperature = labels, kl_weight, temperature
        self.tail, self.amp = tail, amp


def install_fused_forward(model: torch.nn.Module) -> None:
    """Give `model` a forward that takes `ddk_target=FusedTarget(...)` and returns the loss.

    `model(input_ids=ids, ddk_target=t)` runs the decoder to its last hidden state and returns
    (loss, kl, ce) from fused_linear_sparse_kl_loss against the head weight; without
    `ddk_target` the model's own forward runs unchanged (evaluation, generation, the probe).
    The loss runs inside the model's own forward, as Liger's model patches do, so whatever
    wraps the model sees one ordinary forward per micro-batch: DDP syncs its gradients, and
    FSDP2 has unsharded the root's parameters (the head weight among them) when it runs.
    Installed once per model; it stays installed (it changes nothing without `ddk_target`).
    """
    if getattr(model, "_ddk_fused_forward", False):
        return
    original = model.forward

    def forward(*args: Any, ddk_target: FusedTarget | None = None, **kwargs: Any) -> Any:
        if ddk_target is None:
            return original(*args, **kwargs)
        return _fused_loss(model, kwargs["input_ids"], ddk_target)

    model.forward = forward
    model._ddk_fused_forward = True


def _fused_loss(model: torch.nn.Module, input_ids: torch.Tensor,
                t: FusedTarget) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, kl, ce) for one micro-batch from the hidden states and the head weight.

    Under autocast the head runs in the autocast dtype, as the unfused Linear would.
    """
    from ddk.kernels import fused_linear_sparse_kl_loss

    hidden = model.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
    weight = model.get_output_embeddings().weight
    if (type(weight).__name__ == "DTensor" or weight.dim() != 2
            or weight.shape[1] != hidden.shape[-1]):
        raise ConfigError(
            f"the LM head weight is {tuple(weight.shape)} inside the model's forward, not the "
            "full [vocab, hidden] matrix (a sharding wrapper that gathers it only inside the "
            "head's own forward?); train with --no-fused-lm-head (fused_lm_head=False)")
    dtype = t.amp or weight.dtype
    with torch.autocast(input_ids.device.type, enabled=False):
        return fused_linear_sparse_kl_loss(
            hidden.flatten(0, 1).to(dtype), weight.to(dtype), t.topk_ids, t.topk_logprobs,
            t.tail_logmass, t.labels, kl_weight=t.kl_weight, ce_weight=1.0,
            temperature=t.temperature, tail=t.tail, return_components=True)
