"""The background shard writer: the same store as sequential writes, errors in the caller's
thread, and an interrupt that leaves no flagged partial shard."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import numpy as np
import pytest
from ddk.cache.cache_job import background_writer
from ddk.cache.cache_job.background_writer import BackgroundSink, SequentialSink, shard_sink
from ddk.cache.cache_job.config import CacheJobConfig
from ddk.cache.cache_job.run import run_cache_job
from ddk.cache.corpus.sources import DomainSpec
from ddk.cache.store.integrity import check_store
from ddk.cache.store.writer import CacheWriter
from ddk.cli.main import disk_full_error, disk_full_message


def job(out: Path, teacher: Path, corpus: dict[str, Path], **kw) -> CacheJobConfig:
    return CacheJobConfig(**{
        "output": str(out), "teacher": str(teacher),
        "domains": [DomainSpec(n, str(p)) for n, p in sorted(corpus.items())],
        "k": 8, "seq_len": 48, "val_sequences": 3, "sequences_per_shard": 3,
        "batch_size": 2, "progress": False, **kw})


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _set_pending(monkeypatch, pending: int) -> None:
    """The pending bound for every teacher: the tests run a CPU teacher, which writes in
    the scoring thread by default (CPU_PENDING = 0)."""
    monkeypatch.setattr(background_writer, "MAX_PENDING", pending)
    monkeypatch.setattr(background_writer, "CPU_PENDING", pending)


def test_a_cpu_teacher_writes_in_the_scoring_thread_by_default():
    assert background_writer.CPU_PENDING == 0 and background_writer.MAX_PENDING >= 1
    assert isinstance(shard_sink(None, teacher_on_cpu=True), SequentialSink)  # type: ignore[arg-type]
    sink = shard_sink(None, teacher_on_cpu=False)  # type: ignore[arg-type]
    assert isinstance(sink, BackgroundSink)
    with sink:
        pass


@pytest.mark.parametrize("target", [{}, {"target": "sampled", "samples": 16}],
                         ids=["topk", "sampled"])
def test_background_writes_give_the_sequential_store(tmp_path, tiny_teacher_dir, small_corpus,
                                                    monkeypatch, target):
    stores = {}
    for pending in (0, 1, 2):
        _set_pending(monkeypatch, pending)
        out = tmp_path / f"pending-{pending}"
        assert run_cache_job(job(out, tiny_teacher_dir, small_corpus, **target)).complete
        stores[pending] = tree_bytes(out)
    assert stores[1] == stores[0] and stores[2] == stores[0]


def test_sink_follows_max_pending(monkeypatch):
    _set_pending(monkeypatch, 0)
    assert isinstance(shard_sink(None), SequentialSink)  # type: ignore[arg-type]
    _set_pending(monkeypatch, 2)
    assert isinstance(shard_sink(None), BackgroundSink)  # type: ignore[arg-type]


@pytest.mark.slow
def test_write_error_surfaces_as_itself_and_a_rerun_finishes_the_store(
        tmp_path, tiny_teacher_dir, small_corpus, monkeypatch):
    reference = tmp_path / "reference"
    _set_pending(monkeypatch, 0)
    run_cache_job(job(reference, tiny_teacher_dir, small_corpus))
    _set_pending(monkeypatch, 1)

    out = tmp_path / "cache"
    full = OSError(errno.ENOSPC, "No space left on device", str(out / "x" / "c" / "0"))
    real_write, calls = CacheWriter.write_shard, []

    def write_shard(self, domain, split, shard, *a, **kw):
        calls.append((domain, split, shard))
        if len(calls) == 3:
            raise full
        return real_write(self, domain, split, shard, *a, **kw)

    monkeypatch.setattr(CacheWriter, "write_shard", write_shard)
    with pytest.raises(OSError) as raised:
        run_cache_job(job(out, tiny_teacher_dir, small_corpus))
    assert raised.value is full  # the same object: the CLI prints the same line as before
    assert disk_full_message(disk_full_error(raised.value), "cache-teacher") == (
        f"error: disk full (No space left on device) writing {full.filename}; free some "
        "space, then re-run the same command: the shards already finished are kept and "
        "only the rest is scored")
    assert len(calls) == 3  # nothing was written after the failed shard
    monkeypatch.setattr(CacheWriter, "write_shard", real_write)

    assert run_cache_job(job(out, tiny_teacher_dir, small_corpus)).complete
    assert tree_bytes(out) == tree_bytes(reference)


class FakeWriter:
    """Records the shards written; `write` decides what each write does."""

    def __init__(self, write=None) -> None:
        self.written: list[int] = []
        self.write = write

    def write_shard(self, domain, split, shard, input_ids, scores) -> None:
        if self.write is not None:
            self.write(shard)
        self.written.append(shard)


def submit(sink, shard: int) -> None:
    from ddk.cache.teacher.backend import TeacherScores

    z = np.zeros((1, 2), np.float32)
    sink.submit("d", "train", shard, np.zeros((1, 3), np.int64),
                [TeacherScores(z[..., None], z[..., None], z, z)])


def test_shards_are_written_in_order_and_all_before_exit():
    writer = FakeWriter()
    with BackgroundSink(writer, max_pending=1) as sink:  # type: ignore[arg-type]
        for shard in range(6):
            submit(sink, shard)
    assert writer.written == list(range(6))
    assert not sink._thread.is_alive()


def test_error_stops_the_writes_and_reaches_the_caller():
    boom = OSError(errno.ENOSPC, "No space left on device")

    def write(shard: int) -> None:
        if shard == 1:
            raise boom

    writer = FakeWriter(write)
    with pytest.raises(OSError) as raised, \
            BackgroundSink(writer, max_pending=1) as sink:  # type: ignore[arg-type]
        for shard in range(50):  # a submit after the failure raises; it never hangs
            submit(sink, shard)
    assert raised.value is boom
    assert writer.written == [0]
    assert not sink._thread.is_alive()


def test_error_in_the_last_shard_surfaces_on_exit():
    boom = RuntimeError("write failed")

    def write(shard: int) -> None:
        if shard == 2:
            raise boom

    with pytest.raises(RuntimeError) as raised, \
            BackgroundSink(FakeWriter(write), max_pending=1) as sink:  # type: ignore[arg-type]
        for shard in range(3):
            submit(sink, shard)
    assert raised.value is boom


def test_submit_blocks_while_max_pending_shards_wait():
    release = threading.Event()
    writer = FakeWriter(lambda shard: release.wait(30))
    with BackgroundSink(writer, max_pending=1) as sink:  # type: ignore[arg-type]
        submit(sink, 0)  # taken by the thread, which waits for `release`
        submit(sink, 1)  # queued
        third = threading.Thread(target=submit, args=(sink, 2))
        third.start()
        third.join(0.2)
        blocked = third.is_alive()  # still waiting for room: memory stays bounded
        release.set()
        third.join()
    assert blocked
    assert writer.written == [0, 1, 2]


def test_interrupt_finishes_the_shard_being_written_and_drops_the_queued_ones():
    started = threading.Event()
    sink: BackgroundSink

    def write(shard: int) -> None:
        started.set()
        assert sink._abort.wait(30)  # still writing when the interrupt arrives

    writer = FakeWriter(write)
    sink = BackgroundSink(writer, max_pending=1)  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt), sink:
        submit(sink, 0)
        started.wait(30)
        submit(sink, 1)
        raise KeyboardInterrupt
    assert writer.written == [0]  # finished whole, so its flag is right; 1 never started
    assert not sink._thread.is_alive()


def test_interrupted_job_leaves_only_whole_flagged_shards(tmp_path, tiny_teacher_dir,
                                                          small_corpus, monkeypatch):
    """A Ctrl-C in the teacher's forward while a shard is being written: the job stops,
    and every shard flagged done is intact (a re-run repairs nothing)."""
    from ddk.cache.teacher.transformers_backend import TransformersTeacher

    _set_pending(monkeypatch, 1)
    real_score, scored = TransformersTeacher.score, []

    def score(self, *a, **kw):
        scored.append(1)
        if len(scored) == 5:  # shard 0 and 1 finished (2 batches each), shard 2 started
            raise KeyboardInterrupt
        return real_score(self, *a, **kw)

    monkeypatch.setattr(TransformersTeacher, "score", score)
    out = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        run_cache_job(job(out, tiny_teacher_dir, small_corpus))
    monkeypatch.undo()
    import zarr

    group = zarr.open_group(str(out), mode="r")
    report = check_store(group, group.attrs["ddk"], checksums=True, progress=False)
    assert not report.damaged_shards()
    # shard 0 is flagged; shard 1 too unless it was still queued when the interrupt came
    assert sum(int(f.sum()) for f in report.flags.values()) in (1, 2)
