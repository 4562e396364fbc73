"""The domain mixture over a run: which weights each re-weighting interval draws by.

Every `interval` optimizer steps a run measures each domain (student vs teacher perplexity on
the cached validation split) and sets the weights the next interval's sequences are drawn by:
DDK's update for method ddk (ddk_weights.py), a fixed mixture for kd and cpt (measured on the
same schedule, so their logs compare with ddk's). Both training loops drive one
`DomainMixture`: `ddk train-student`'s fit (loop.py) and the transformers `Trainer`
integration (hf_trainer.py), so the schedule, the weight maths and the draws are one piece of
code.

`MixtureState` is what a checkpoint carries of it. A loader is built per interval for exactly
that interval's micro-batches; built in the middle of an interval (a resume), it replays the
interval's draws up to that step without reading them, from the sampler as it was at the
interval's start (`snapshot`), so a resumed run draws what an uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from ddk.cache.train.config import TrainConfig
from ddk.cache.train.ddk_weights import (
    explicit_weights,
    fixed_weights,
    initial_weights,
    update_weights,
)
from ddk.cache.train.evaluate import DomainPerplexity
from ddk.cache.train.sampler import DomainSampler, PrefetchLoader
from ddk.cache.train.saturation import diagnose

__all__ = ["DomainMixture", "MixtureState", "fixed_mixture", "next_weights"]


@dataclass
class MixtureState:
    """The mixture's progress. Steps [interval_start, interval_start + interval_len) are drawn
    with `weights`; `snapshot` is this rank's sampler state at interval_start."""

    weights: torch.Tensor | None = None    # the current domain weights (None before step 0)
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per interval
    interval_start: int = 0
    interval_len: int = 0
    snapshot: dict[str, Any] | None = None  # DomainSampler.state_dict() at interval_start


def fixed_mixture(cfg: TrainConfig, reader: Any) -> torch.Tensor | None:
    """The kd / cpt domain weights (explicit, or natural / uniform); None for ddk."""
    if cfg.method == "ddk":
        return None
    if cfg.domain_weights is not None:
        return explicit_weights(cfg.domain_weights, reader.domains)
    return fixed_weights(cfg.mixture, [reader.num_tokens(d, "train") for d in reader.domains])


def next_weights(cfg: TrainConfig, prev: torch.Tensor | None, ppl: list[DomainPerplexity],
                 fixed: torch.Tensor | None) -> torch.Tensor:
    """The weights for the next interval: r_0 or the DDK update (ddk), else `fixed`."""
    if cfg.method != "ddk":
        return fixed
    s = [p.student_ppl for p in ppl]
    t = [p.teacher_ppl for p in ppl]
    return initial_weights(s, t) if prev is None else update_weights(prev, s, t, cfg.alpha)


class DomainMixture:
    """This rank's sampler and the interval schedule over it; advances a MixtureState.

    Built after any checkpoint has been restored into `state`: a resumed run's sampler is put
    back as it was at the start of the checkpoint's interval.
    """

    def __init__(self, cfg: TrainConfig, reader: Any, state: MixtureState, *, rank: int,
                 pin_memory: bool) -> None:
        self.cfg, self.reader, self.state = cfg, reader, state
        self.domains = list(reader.domains)
        self.pin_memory = pin_memory
        self.fixed = fixed_mixture(cfg, reader)
        self.sampler = DomainSampler([reader.num_sequences(d, "train") for d in self.domains],
                                     [1.0] * len(self.domains), seed=cfg.seed, rank=rank)
        if state.snapshot is not None:
            self.sampler.load_state_dict(state.snapshot)

    def due(self, step: int) -> bool:
        """Whether `step` starts a new interval (measure, then re-weight)."""
        return step == self.state.interval_start + self.state.interval_len

    def start_interval(self, step: int, ppl: list[DomainPerplexity],
                       max_steps: int) -> dict[str, Any]:
        """Set the weights for steps [step, step + interval) from `ppl`; returns the record
        (for ddk with the saturation diagnosis of the ratios it used, saturation.py)."""
        s = self.state
        prev = s.weights
        s.weights = next_weights(self.cfg, prev, ppl, self.fixed)
        rec: dict[str, Any] = {"step": step, "weights": s.weights.tolist(),
                               "ppl_student": [p.student_ppl for p in ppl],
                               "ppl_teacher": [p.teacher_ppl for p in ppl]}
        if self.cfg.method == "ddk":
            rec["saturation"] = diagnose(self.domains, [p.ratio for p in ppl], prev).to_dict()
        s.history.append(rec)
        self.sampler.set_weights(s.weights)
        s.snapshot = self.sampler.state_dict()
        s.interval_start = step
        s.interval_len = min(self.cfg.interval, max_steps - step)
        return rec

    def loader_for(self, step: int, current: PrefetchLoader | None,
                   start: Callable[[int], None]) -> PrefetchLoader:
        """The loader that serves optimizer step `step`: `current`, or a new one (closing it).

        A resumed run's first loader (no `current`, a snapshot restored) replays its
        interval's draws up to `step`, so the sampler stands where an uninterrupted run's
        would, even when `step` starts the next interval. At an interval's first step
        `start(step)` measures the domains and calls start_interval before the new loader
        is built. Both training loops call this once per step.
        """
        if current is None and self.state.snapshot is not None:
            current = self.loader(step)
        if self.due(step):
            if current is not None:
                current.close()
            start(step)
            current = self.loader(step)
        return current

    def loader(self, step: int) -> PrefetchLoader:
        """A loader for the rest of the current interval's micro-batches, from `step` on."""
        s, cfg = self.state, self.cfg
        return PrefetchLoader(self.reader, self.domains, self.sampler, cfg.batch_size,
                              s.interval_len * cfg.grad_accum,
                              skip=(step - s.interval_start) * cfg.grad_accum,
                              depth=cfg.prefetch, pin_memory=self.pin_memory)
