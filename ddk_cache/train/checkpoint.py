"""Checkpoint and model files: atomic writes, the `latest` pointer, collective save and load.

A checkpoint is checkpoints/step-NNNNNNNN/state.pt, the dict of TrainState.to_checkpoint
(model, optimizer, step, tokens, domain weights and history, interval bounds, and every rank's
sampler snapshot and RNG state). It is written to a temp dir and renamed, then the `latest`
pointer is replaced, so a kill mid-write never corrupts the latest one. `save_checkpoint` and
`load_checkpoint` are the pair the trainer uses; the model directory written at the end of a
run (save_pretrained + tokenizer) goes through a temp dir the same way.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from ddk.cache.train.distributed import Dist, barrier, gather
from ddk.cache.train.state import TrainState, rng_state

__all__ = [
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "save_model",
    "write_checkpoint",
]


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The directory named by checkpoints/latest, if it exists."""
    pointer = ckpt_dir / "latest"
    if not pointer.exists():
        return None
    path = ckpt_dir / pointer.read_text().strip()
    return path if (path / "state.pt").exists() else None


def write_checkpoint(ckpt_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
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


def save_checkpoint(state: TrainState, ckpt_dir: Path, d: Dist, keep: int) -> None:
    """Collective: gather every rank's RNG and sampler snapshot; rank 0 writes; all wait."""
    rng = gather(rng_state(), d)
    samplers = gather(state.mixture.snapshot, d)
    if d.rank == 0:
        write_checkpoint(ckpt_dir, state.step, state.to_checkpoint(samplers, rng), keep)
    barrier(d)


def load_checkpoint(state: TrainState, path: Path, d: Dist) -> None:
    """Restore `state` (model, optimizer, progress, this rank's RNG) from checkpoint `path`."""
    ck = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    state.restore(ck, d.rank, path)


def save_model(model: torch.nn.Module, tokenizer: Any, path: Path, dtype: torch.dtype) -> None:
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
