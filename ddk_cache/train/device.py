"""In which precision a run computes: one autocast resolver for training and `ddk eval`.

Both the trainer and evaluate_model take a --bf16/--no-bf16 option; resolving it here keeps
the default (bf16 autocast where the CUDA GPU supports it) and the error for an impossible
request identical in both. The device itself is resolved by ddk.cache.device, which the
teacher side uses too.
"""

from __future__ import annotations

import torch
from ddk.cache.errors import ConfigError

__all__ = ["resolve_autocast"]


def resolve_autocast(bf16: bool | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bfloat16 or None (no autocast).

    bf16=None: on iff `device` is CUDA and the GPU supports bf16; True: on (ConfigError on a
    non-CUDA device); False: off.
    """
    if bf16 and device.type != "cuda":
        raise ConfigError("--bf16 needs a CUDA device; drop it (or pass --no-bf16) on CPU")
    if bf16 is None:
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16 else None
