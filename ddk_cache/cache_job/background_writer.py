"""Writing finished shards on one background thread while the teacher scores the next ones.

`shard_sink(writer)` returns a context manager with `submit(domain, split, shard, input_ids,
parts)` and `check()`. Shards are written by `CacheWriter.write_shard`, one at a time and in
submission order, so the store is byte for byte the one the sequential loop writes, and a
shard's done flag is still set only after all its arrays and its manifest row.

Memory is bounded: `submit` blocks while `MAX_PENDING` shards wait behind the one being
written, so at most MAX_PENDING + 2 shards of scores are alive (one being scored, one being
written, MAX_PENDING queued). An error raised by a write (a full disk, say) is re-raised,
as the same exception object, in the caller's thread: by the next `submit` or `check`
(the loop checks after every batch) or on leaving the `with` block. Leaving the block on
an exception (a forward error, KeyboardInterrupt) drops the queued shards, lets the shard
being written finish (it is whole, so its flag is correct), and joins the thread. A
SIGTERM or SIGKILL ends both threads at once; as in the sequential loop, a shard cut off
mid-write has no flag and is redone by the next run.

MAX_PENDING = 0 writes in the caller's thread, as the loop did before (bench_cache_job.py
measures both). A teacher on the CPU gets CPU_PENDING (0) instead: there the forward
already uses every core, and the thread measured slower.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import numpy as np
from ddk.cache.store.writer import CacheWriter
from ddk.cache.teacher.backend import TeacherScores

#: finished shards that may wait behind the one being written (0: no background thread)
MAX_PENDING = 1
#: the same when the teacher runs on the CPU: 0, writes in the scoring thread. Measured on
#: 2 cores (bench/bench_cache_job.py, docs/benchmarks.md) the forward uses every core and a
#: writer thread only competes with it: the whole job took 1.68x the bare forward with it,
#: 1.52x without.
CPU_PENDING = 0

_Shard = tuple[str, str, int, np.ndarray, Sequence[TeacherScores]]


class SequentialSink:
    """Writes each shard in the caller's thread as it is submitted."""

    def __init__(self, writer: CacheWriter) -> None:
        self.writer = writer

    def submit(self, domain: str, split: str, shard: int, input_ids: np.ndarray,
               parts: Sequence[TeacherScores]) -> None:
        self.writer.write_shard(domain, split, shard, input_ids, TeacherScores.concat(parts))

    def check(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class BackgroundSink:
    """Writes submitted shards, in order, on one daemon thread (module docstring)."""

    def __init__(self, writer: CacheWriter, max_pending: int) -> None:
        self.writer = writer
        self._queue: queue.Queue[_Shard | None] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._abort = threading.Event()
        # daemon: a second Ctrl-C while waiting for the last write still ends the process
        self._thread = threading.Thread(target=self._work, name="ddk-shard-writer",
                                        daemon=True)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None or self._abort.is_set():
                continue  # drain, so that a blocked submit() wakes up and sees the error
            domain, split, shard, input_ids, parts = item
            try:
                self.writer.write_shard(domain, split, shard, input_ids,
                                        TeacherScores.concat(parts))
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = e

    def check(self) -> None:
        """Re-raise the first error of a background write, if there was one."""
        if self._error is not None:
            raise self._error

    def submit(self, domain: str, split: str, shard: int, input_ids: np.ndarray,
               parts: Sequence[TeacherScores]) -> None:
        self.check()
        self._queue.put((domain, split, shard, input_ids, parts))  # blocks while full
        self.check()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self._abort.set()  # drop what is queued; the shard being written finishes
        self._queue.put(None)
        self._thread.join()
        if exc_type is None:
            self.check()


def shard_sink(writer: CacheWriter, *, teacher_on_cpu: bool = False
               ) -> SequentialSink | BackgroundSink:
    """Where `_score_shards` hands finished shards: a background writer unless the pending
    bound (MAX_PENDING, or CPU_PENDING for a teacher on the CPU) is 0."""
    pending = CPU_PENDING if teacher_on_cpu else MAX_PENDING
    return SequentialSink(writer) if pending <= 0 else BackgroundSink(writer, pending)
