"""`TrainState`: everything a checkpoint carries, and its one mapping to and from state.pt.

The step loop advances this object and nothing else that must survive a restart, so a
resumed run is exact by construction: `to_checkpoint` writes every field, `restore` reads every
field back (and refuses a checkpoint whose run-defining options differ from this run's).
Everything else a run uses (cache reader, sampler, loader, metrics log) is rebuilt from the
config on resume; the sampler is then put back from the mixture's snapshot (mixture.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ddk.cache.errors import ConfigError
from ddk.cache.train.config import RESUME_KEYS, TrainConfig
from ddk.cache.train.mixture import MixtureState

__all__ = ["TrainState", "check_resume_options", "rng_state", "set_rng_state"]


def rng_state() -> dict[str, Any]:
    """This process's torch, python, numpy (and, once initialised, CUDA) RNG states."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back what rng_state() returned."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def check_resume_options(saved: dict[str, Any], current: dict[str, Any], source: Any,
                         keys: tuple[str, ...] = RESUME_KEYS) -> None:
    """ConfigError if any of `keys` differs between a checkpoint's config and this run's."""
    def value(config: dict[str, Any], k: str) -> Any:  # a key a checkpoint predates holds
        return config.get(k, getattr(TrainConfig, k, None))  # its field's default (fsdp=False)

    changed = [f"{k}={value(saved, k)!r}" for k in keys if value(saved, k) != value(current, k)]
    if changed:
        raise ConfigError(
            f"cannot resume {source}: options differ from the checkpoint's "
            f"({', '.join(changed)}); resume with the original options or start a new --out")


@dataclass
class TrainState:
    """The run's progress: optimizer steps and tokens, the model and optimizer they produced,
    and the domain mixture's state (weights, history, current interval, sampler snapshot)."""

    model: torch.nn.Module                 # unwrapped (not DDP): its state_dict is saved
    optimizer: torch.optim.Optimizer
    config: dict[str, Any]                 # the resolved config (max_steps, warmup, world_size)
    step: int = 0                          # optimizer steps taken
    tokens: int = 0                        # tokens trained on, all ranks
    mixture: MixtureState = field(default_factory=MixtureState)

    def to_checkpoint(self, samplers: list[Any], rng: list[Any], *,
                      sharded: bool = False) -> dict[str, Any]:
        """The dict saved as state.pt; `samplers` / `rng` hold every rank's snapshot / RNG.

        `sharded` (FSDP): model and optimizer are None here; each rank wrote its shards of
        them beside state.pt (fsdp.save_sharded), and the checkpoint loader reads them back.
        """
        m = self.mixture
        return {
            "step": self.step, "tokens": self.tokens, "weights": m.weights,
            "history": m.history,
            "interval_start": m.interval_start, "interval_len": m.interval_len,
            "samplers": samplers, "rng": rng, "config": self.config,
            "model": None if sharded else self.model.state_dict(),
            "optimizer": None if sharded else self.optimizer.state_dict(),
        }

    def restore(self, ck: dict[str, Any], rank: int, source: Path) -> None:
        """The inverse of to_checkpoint for this `rank` (its sampler snapshot and RNG).

        The checkpoint's config is compared, not loaded: ConfigError if any RESUME_KEYS option
        differs from this run's, since the stream or the maths would no longer match.
        """
        check_resume_options(ck["config"], self.config, source)
        if ck["model"] is not None:  # else sharded: loaded by checkpoint.load_checkpoint
            self.model.load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
        self.step, self.tokens = ck["step"], ck["tokens"]
        self.mixture = MixtureState(ck["weights"], ck["history"], ck["interval_start"],
                                    ck["interval_len"], ck["samplers"][rank])
        set_rng_state(ck["rng"][rank])
