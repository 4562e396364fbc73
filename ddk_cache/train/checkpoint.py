"""Checkpoint and model files: atomic writes, the `latest` pointer, collective save and load.

A checkpoint is checkpoints/step-NNNNNNNN/state.pt, the dict of TrainState.to_checkpoint
(model, optimizer, step, tokens, domain weights and history, interval bounds, and every rank's
sampler snapshot and RNG state). Under FSDP the model and optimizer are instead in
step-NNNNNNNN/sharded/, written by every rank with torch.distributed.checkpoint (fsdp.py).
The checkpoint is written to a temp dir and renamed, then the `latest` pointer is replaced, so
a kill mid-write never corrupts the latest one. `save_checkpoint` and `load_checkpoint` are the
pair the trainer uses; the model directory written at the end of a run (save_pretrained +
tokenizer) goes through a temp dir the same way.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from ddk.cache.errors import ConfigError
from ddk.cache.train.distributed import Dist, barrier, gather
from ddk.cache.train.fsdp import is_sharded, load_sharded, save_sharded
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


def _begin_checkpoint(ckpt_dir: Path, step: int) -> Path:
    """A fresh temp dir for step `step`'s checkpoint (stale ones from kills removed first)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for stale in ckpt_dir.glob(".tmp-*"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    for stale in ckpt_dir.glob(".latest-*"):
        stale.unlink(missing_ok=True)
    tmp = ckpt_dir / f".tmp-step-{step:08d}-{os.getpid()}"
    tmp.mkdir()
    return tmp


def _write_state(path: Path, state: dict[str, Any]) -> None:
    """torch.save + fsync. An OS error (a full disk...) is raised as an OSError naming `path`:
    torch.save reports a failed write as a RuntimeError, the OSError as its context."""
    try:
        with open(path, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:
        os_error = e if isinstance(e, OSError) else e.__context__
        if not isinstance(os_error, OSError) or os_error.errno is None:
            raise
        raise OSError(os_error.errno, os_error.strerror, str(path)) from e


def _commit_checkpoint(ckpt_dir: Path, tmp: Path, step: int, state: dict[str, Any],
                       keep: int) -> Path:
    """state.pt into `tmp`, `tmp` renamed into place, then `latest` replaced; prune old ones.

    A failed write (say, the disk is full) removes `tmp` and leaves `latest` and the
    checkpoint it names untouched.
    """
    try:
        _write_state(tmp / "state.pt", state)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    name = f"step-{step:08d}"
    final = ckpt_dir / name
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    pointer_tmp = ckpt_dir / f".latest-{os.getpid()}"
    try:
        pointer_tmp.write_text(name + "\n")
        os.replace(pointer_tmp, ckpt_dir / "latest")
    except BaseException:  # `latest` still names the previous checkpoint, which is kept
        pointer_tmp.unlink(missing_ok=True)
        raise
    for old in sorted(p for p in ckpt_dir.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_checkpoint(ckpt_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """state.pt in a temp dir, renamed into place, then `latest` replaced: atomic on POSIX."""
    return _commit_checkpoint(ckpt_dir, _begin_checkpoint(ckpt_dir, step), step, state, keep)


def save_checkpoint(state: TrainState, ckpt_dir: Path, d: Dist, keep: int) -> None:
    """Collective: gather every rank's RNG and sampler snapshot; rank 0 writes; all wait.

    Sharded (FSDP): rank 0 makes the temp dir, every rank writes its shards into it, then
    rank 0 adds state.pt and renames the whole into place.
    """
    rng = gather(rng_state(), d)
    samplers = gather(state.mixture.snapshot, d)
    if not is_sharded(state.model):
        if d.rank == 0:
            write_checkpoint(ckpt_dir, state.step, state.to_checkpoint(samplers, rng), keep)
        barrier(d)
        return
    tmp = gather(_begin_checkpoint(ckpt_dir, state.step) if d.rank == 0 else None, d)[0]
    save_sharded(state.model, state.optimizer, tmp / "sharded")
    barrier(d)
    if d.rank == 0:
        _commit_checkpoint(ckpt_dir, tmp, state.step,
                           state.to_checkpoint(samplers, rng, sharded=True), keep)
    barrier(d)


def load_checkpoint(state: TrainState, path: Path, d: Dist) -> None:
    """Restore `state` (model, optimizer, progress, this rank's RNG) from checkpoint `path`."""
    ck = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    state.restore(ck, d.rank, path)  # refuses a checkpoint of the other kind (the fsdp key)
    if ck["model"] is None:
        if not (path / "sharded").is_dir():
            raise ConfigError(f"checkpoint {path} has no sharded/ model; resume from an "
                              "earlier checkpoint or start a new --out")
        load_sharded(state.model, state.optimizer, path / "sharded")


def save_model(model: torch.nn.Module, tokenizer: Any, path: Path, dtype: torch.dtype,
               state_dict: dict[str, Any] | None = None) -> None:
    """save_pretrained + tokenizer into `path`, via a temp dir so `path` is always whole.

    `state_dict`: the weights to save instead of the model's own (a sharded model's, gathered
    by fsdp.full_state_dict); cast to `dtype` as the model itself would be.
    """
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    half = dtype in (torch.bfloat16, torch.float16)
    if state_dict is not None and half:
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v
                      for k, v in state_dict.items()}
    elif half:
        model.to(dtype)
    model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.rename(tmp, path)
