"""Where a job computes: the one resolver of `--device` for every verb.

cache-teacher (the transformers backend), inspect-cache --verify, train-student and eval all
take a --device and resolve it here, so they accept the same strings and refuse an
impossible one with the same one-line ConfigError before any model is loaded. torch is
imported only when a device is resolved, so importing this module stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ddk.cache.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["resolve_device"]

_CHOICES = "use auto, cpu, cuda or cuda:N"


def resolve_device(device: str | None = "auto") -> torch.device:
    """`device` as a torch.device: "auto" or None mean cuda if available, else cpu.

    Any torch device string is accepted. ConfigError if it does not parse, or names a CUDA
    GPU (or MPS) this machine does not have; the message says how many GPUs there are.
    """
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"--device {device}: not a device; {_CHOICES}") from None
    if dev.type == "cuda":
        _check_cuda(device, dev)
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: MPS is not available on this machine; use "
                          "--device cpu or auto")
    return dev


def _check_cuda(device: str, dev: torch.device) -> None:
    """ConfigError unless this machine has the CUDA GPU `dev` names."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"--device {device}: no CUDA GPU is available on this machine "
                          "(0 GPUs visible); use --device cpu or auto")
    if dev.index is not None and dev.index >= count:
        gpus = ("1 CUDA GPU (cuda:0)" if count == 1
                else f"{count} CUDA GPUs (cuda:0 to cuda:{count - 1})")
        raise ConfigError(f"--device {device}: this machine has {gpus}; use one of them, "
                          "cuda or auto")
