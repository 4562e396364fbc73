"""The trainer's view of torch.distributed: rank, world size, device, and three collectives.

Under torchrun (WORLD_SIZE > 1) `init_distributed` joins the process group (nccl on GPU, gloo
on CPU) and pins each rank to its local GPU; in a single process it does nothing, and the
collectives below are no-ops, so the trainer has one code path for both.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from ddk.cache.device import resolve_device

__all__ = ["Dist", "all_reduce", "barrier", "close_distributed", "gather", "grad_sync",
           "init_distributed"]


@dataclass
class Dist:
    """This process's place in the run."""

    rank: int
    world: int
    device: torch.device
    owns_group: bool  # True if init_distributed created the process group (so closes it)


def init_distributed(device: str | None) -> Dist:
    """Resolve the device and, under torchrun, join (or reuse) the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world <= 1:
        return Dist(0, 1, dev, False)
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), dev, owns)


def close_distributed(d: Dist) -> None:
    """Destroy the process group if init_distributed created it."""
    if d.owns_group:
        import torch.distributed as dist

        dist.destroy_process_group()


def all_reduce(t: torch.Tensor, d: Dist, op: str = "sum") -> torch.Tensor:
    """Sum (or max) of a CPU tensor over ranks, returned on the CPU."""
    if d.world == 1:
        return t
    import torch.distributed as dist

    x = t.to(d.device)
    dist.all_reduce(x, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return x.cpu()


def gather(obj: Any, d: Dist) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if d.world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


@contextlib.contextmanager
def grad_sync(net: torch.nn.Module, sync: bool) -> Iterator[None]:
    """Reduce gradients across ranks in this backward (`sync`), or only accumulate them.

    DDP's no_sync and FSDP2's set_requires_gradient_sync behind one switch, so gradient
    accumulation reduces once per optimizer step; a single-process model has neither.
    """
    if sync:
        yield
    elif hasattr(net, "no_sync"):  # DDP
        with net.no_sync():
            yield
    elif hasattr(net, "set_requires_gradient_sync"):  # FSDP2
        net.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            net.set_requires_gradient_sync(True)
    else:
        yield


def barrier(d: Dist) -> None:
    """Wait for every rank."""
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()
