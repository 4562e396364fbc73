"""Domain-weighted sequence sampling and the background loader that reads what it picks.

DomainSampler decides *which* cached training sequences come next: each sequence's domain is
drawn by the current domain weights (torch.multinomial, with replacement); within a domain the
sequences are visited in a random permutation without replacement, and a fresh permutation is
drawn when the domain is exhausted. Every random choice comes from torch.Generators seeded from
(seed, rank[, domain]), and all of it (generator states, permutations, positions, weights) is in
state_dict(), so a resumed run draws exactly what an uninterrupted one would have.

PrefetchLoader reads the chosen sequences from the cache in the background (a feeder thread
that draws plans in order, a small pool of reader threads) into a bounded queue, so the
accelerator never waits on storage. The feeder is the only caller of the sampler while it runs
and the loader is built for a fixed number of micro-batches (one re-weighting interval), so the
sequence stream is deterministic no matter how the threads are scheduled.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ddk.cache.errors import ConfigError

__all__ = ["DomainSampler", "PrefetchLoader", "SampledBatch", "read_plan"]


def _seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from a tuple of ints (seed, rank, domain...)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(
        2, dtype=np.uint32).view(np.uint64)[0] >> np.uint64(1))


class DomainSampler:
    """Draws (domain index, sequence index) pairs by domain weight; see module doc."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float] | torch.Tensor,
                 seed: int, rank: int = 0) -> None:
        self.sizes = [int(s) for s in sizes]
        if not self.sizes or min(self.sizes) <= 0:
            raise ConfigError(f"every domain needs at least one training sequence, got {self.sizes}")
        self.seed, self.rank = int(seed), int(rank)
        self._domain_gen = torch.Generator().manual_seed(_seed(self.seed, self.rank, 1 << 30))
        self._perm_gens = [torch.Generator().manual_seed(_seed(self.seed, self.rank, d))
                           for d in range(len(self.sizes))]
        self._perms: list[torch.Tensor | None] = [None] * len(self.sizes)
        self._pos = [0] * len(self.sizes)
        self.epochs = [0] * len(self.sizes)  # completed passes over each domain
        self.set_weights(weights)

    @property
    def num_domains(self) -> int:
        return len(self.sizes)

    def set_weights(self, weights: Sequence[float] | torch.Tensor) -> None:
        w = torch.as_tensor(weights, dtype=torch.float64).detach().cpu().reshape(-1).clone()
        if w.numel() != len(self.sizes):
            raise ConfigError(f"got {w.numel()} weights for {len(self.sizes)} domains")
        if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ConfigError(f"domain weights must be finite, >= 0 and not all 0: {w.tolist()}")
        self.weights = w / w.sum()

    def _next_index(self, d: int) -> int:
        perm = self._perms[d]
        if perm is None or self._pos[d] >= len(perm):
            if perm is not None:
                self.epochs[d] += 1
            perm = self._perms[d] = torch.randperm(self.sizes[d], generator=self._perm_gens[d])
            self._pos[d] = 0
        self._pos[d] += 1
        return int(perm[self._pos[d] - 1])

    def draw(self, n: int) -> list[tuple[int, int]]:
        """The next n (domain, sequence) pairs of this rank's stream."""
        domains = torch.multinomial(self.weights, n, replacement=True, generator=self._domain_gen)
        return [(int(d), self._next_index(int(d))) for d in domains]

    def state_dict(self) -> dict[str, Any]:
        return {
            "sizes": list(self.sizes), "seed": self.seed, "rank": self.rank,
            "weights": self.weights.clone(),
            "domain_gen": self._domain_gen.get_state(),
            "perm_gens": [g.get_state() for g in self._perm_gens],
            "perms": [None if p is None else p.clone() for p in self._perms],
            "pos": list(self._pos), "epochs": list(self.epochs),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["sizes"]) != self.sizes:
            raise ConfigError(f"sampler state is for domain sizes {state['sizes']}, "
                              f"this cache has {self.sizes}: resume with the same cache")
        self.seed, self.rank = int(state["seed"]), int(state["rank"])
        self.weights = state["weights"].clone()
        self._domain_gen.set_state(state["domain_gen"])
        for g, s in zip(self._perm_gens, state["perm_gens"], strict=True):
            g.set_state(s)
        self._perms = [None if p is None else p.clone() for p in state["perms"]]
        self._pos, self.epochs = list(state["pos"]), list(state["epochs"])


@dataclass
class SampledBatch:
    """One micro-batch in draw order (CPU tensors; pinned when the loader pins)."""

    input_ids: torch.Tensor      # int64 [B, L]
    topk_ids: torch.Tensor       # int64 [B, L-1, k]
    topk_logprobs: torch.Tensor  # float32 [B, L-1, k]
    tail_logmass: torch.Tensor   # float32 [B, L-1]
    domains: torch.Tensor        # int64 [B], index into the domain list

    def pin_memory(self) -> SampledBatch:
        return SampledBatch(*(t.pin_memory() for t in (
            self.input_ids, self.topk_ids, self.topk_logprobs, self.tail_logmass, self.domains)))


def read_plan(reader: Any, domain_names: Sequence[str], plan: Sequence[tuple[int, int]],
              split: str = "train") -> SampledBatch:
    """Read the sequences of `plan` (one reader.read per domain) and return them in plan order."""
    by_domain: dict[int, list[int]] = {}
    slots: dict[int, list[int]] = {}
    for slot, (d, i) in enumerate(plan):
        by_domain.setdefault(d, []).append(i)
        slots.setdefault(d, []).append(slot)
    parts, order = [], []
    for d in sorted(by_domain):
        parts.append(reader.read(domain_names[d], split, by_domain[d]))
        order.extend(slots[d])
    inv = torch.empty(len(order), dtype=torch.long)
    inv[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))

    def cat(field: str) -> torch.Tensor:
        return torch.cat([getattr(p, field) for p in parts])[inv]

    return SampledBatch(cat("input_ids").long(), cat("topk_ids").long(), cat("topk_logprobs"),
                        cat("tail_logmass"), torch.tensor([d for d, _ in plan], dtype=torch.long))


class PrefetchLoader:
    """Iterator over `num_batches` micro-batches of `batch_size` sequences, read ahead.

    A feeder thread draws the plans from the sampler in order (the only sampler caller while the
    loader runs, so the stream is deterministic) and hands each to a pool of `workers` reader
    threads; batches come out in plan order, at most `depth` ahead of the consumer. The first
    `skip` batches are drawn but not read (used to fast-forward a resumed run to the middle of
    an interval). Iterate it once; close() stops the threads.
    """

    _DONE = object()

    def __init__(self, reader: Any, domain_names: Sequence[str], sampler: DomainSampler,
                 batch_size: int, num_batches: int, *, skip: int = 0, depth: int = 4,
                 workers: int = 2, pin_memory: bool = False, split: str = "train") -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.reader, self.domain_names, self.sampler = reader, list(domain_names), sampler
        self.batch_size, self.num_batches, self.split = batch_size, num_batches, split
        self.pin_memory = pin_memory
        for _ in range(skip):
            sampler.draw(batch_size)
        self._remaining = num_batches - skip
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="ddk-read")
        self._finished = False
        self.wait_s = 0.0  # time the consumer spent blocked waiting for data (stalls)
        self._thread = threading.Thread(target=self._feed, name="ddk-prefetch", daemon=True)
        self._thread.start()

    def _read(self, plan: list[tuple[int, int]]) -> SampledBatch:
        batch = read_plan(self.reader, self.domain_names, plan, self.split)
        return batch.pin_memory() if self.pin_memory else batch

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _feed(self) -> None:
        try:
            for _ in range(self._remaining):
                if self._stop.is_set():
                    return
                plan = self.sampler.draw(self.batch_size)
                if not self._put(self._pool.submit(self._read, plan)):
                    return
            self._put(self._DONE)
        except BaseException as e:  # noqa: BLE001  (re-raised in the consumer thread)
            self._put(e)

    def __iter__(self) -> PrefetchLoader:
        return self

    def __next__(self) -> SampledBatch:
        if self._finished:
            raise StopIteration
        t0 = time.perf_counter()
        item = self._queue.get()
        try:
            if item is self._DONE or isinstance(item, BaseException):
                self._finished = True
                self._thread.join()
                if item is self._DONE:
                    raise StopIteration
                raise item
            try:
                return item.result()
            except BaseException:
                self._finished = True
                raise
        finally:
            self.wait_s += time.perf_counter() - t0

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
