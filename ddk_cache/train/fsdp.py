"""FSDP2 for `ddk train-student --fsdp`: a student sharded across the torchrun processes.

`shard_model` applies PyTorch's `fully_shard` to each decoder layer (the classes the model
names in `_no_split_modules`, as the transformers Trainer's auto-wrap does) and then to the
root, which keeps the embeddings, final norm and LM head. Parameters, gradients and AdamW
state are then 1/N per rank, so a student whose weights and optimizer state do not fit one
device trains across devices and nodes. With bf16 on (CUDA), parameters are cast to bf16 for
the forward and backward and gradients are reduced in fp32 (MixedPrecisionPolicy).

The fused LM-head loss runs inside the root's forward (lm_head.install_fused_forward), where
FSDP2 has unsharded the root's parameters, the head weight among them. Checkpoints are
sharded with torch.distributed.checkpoint (each rank writes its own shards; `save_sharded` /
`load_sharded`); the final model is gathered to rank 0 (`full_state_dict`) and saved as a plain
save_pretrained directory (checkpoint.save_model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from ddk.cache.errors import ConfigError

__all__ = ["decoder_layers", "full_state_dict", "is_sharded", "load_sharded", "save_sharded",
           "shard_model"]


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules to shard one by one: instances of the classes in `_no_split_modules`."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def shard_model(model: torch.nn.Module, amp: torch.dtype | None) -> None:
    """fully_shard every decoder layer, then the root; in place, before the optimizer exists."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    layers = decoder_layers(model)
    if not layers:
        raise ConfigError(
            f"--fsdp found no decoder layers to shard in {type(model).__name__} (its "
            "_no_split_modules names none); train it without --fsdp")
    mp = (MixedPrecisionPolicy(param_dtype=amp, reduce_dtype=torch.float32) if amp is not None
          else MixedPrecisionPolicy())
    for layer in layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model` went through shard_model (its parameters are DTensor shards)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def save_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Collective: every rank writes its shards of the model and AdamW state under `path`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(path))


def load_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Collective: the inverse of save_sharded (same number of ranks)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"])


def full_state_dict(model: torch.nn.Module) -> dict[str, Any]:
    """Collective: the whole model's state dict on rank 0's CPU (empty on the other ranks).

    Names of one parameter (tied embeddings: embed_tokens and lm_head) get one tensor, as in
    an unsharded model's state dict, so save_pretrained stores it once, as it does there.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                              cpu_offload=True))
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    for same in names.values():
        for alias in same[1:]:
            if same[0] in sd and alias in sd:
                sd[alias] = sd[same[0]]
    return sd
