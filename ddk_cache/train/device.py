"""Where a run computes and in which precision: one resolver for training and `ddk eval`.

Both the trainer and evaluate_model take a --device and a --bf16/--no-bf16 option; resolving
them here keeps the defaults (CUDA when there is one; bf16 autocast where the GPU supports it)
and the errors for impossible requests identical in both.
"""

from __future__ import annotations

import torch
from ddk.cache.errors import ConfigError

__all__ = ["resolve_autocast", "resolve_device"]


def resolve_device(device: str | None) -> torch.device:
    """`device` as a torch.device; None means cuda if available, else cpu.

    ConfigError if CUDA is requested on a machine without a CUDA GPU.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was requested but no CUDA GPU is available")
    return dev


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
