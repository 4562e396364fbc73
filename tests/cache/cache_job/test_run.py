"""The cache job end to end on a tiny real teacher: values, resume, workers, errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ddk.cache.cache_job.config import CacheJobConfig
from ddk.cache.cache_job.run import run_cache_job
from ddk.cache.corpus.sources import DomainSpec
from ddk.cache.errors import ConfigError, IncompleteCacheError, StoreError, StoreMismatchError
from ddk.cache.store.encoding import DEFAULT_LOGPROB_STEP as STEP
from ddk.cache.store.reader import CacheReader
from ddk.cache.teacher.transformers_backend import TransformersTeacher


def job(tmp_path: Path, teacher: Path, corpus: dict[str, Path], **kw) -> CacheJobConfig:
    defaults = {"output": str(tmp_path / "cache"), "teacher": str(teacher),
                "domains": [DomainSpec(n, str(p)) for n, p in sorted(corpus.items())],
                "k": 8, "seq_len": 48, "val_sequences": 3, "sequences_per_shard": 3,
                "batch_size": 2, "progress": False}
    defaults.update(kw)
    return CacheJobConfig(**defaults)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_cache_matches_teacher_and_records_loss(tmp_path, tiny_teacher_dir, small_corpus):
    result = run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus))
    assert result.complete and result.shards_written > 0
    reader = CacheReader.open(tmp_path / "cache")
    assert reader.domains == ["code", "math", "prose"]
    teacher = TransformersTeacher(tiny_teacher_dir)
    for domain in reader.domains:
        n_val = reader.num_sequences(domain, "validation")
        assert n_val == 3
        batch = reader.read(domain, "validation", list(range(n_val))[::-1])
        exact = teacher.score(batch.input_ids.numpy(), 8)
        assert batch.topk_ids.shape == (n_val, 47, 8)
        assert np.array_equal(batch.topk_ids.numpy(), exact.topk_ids)
        err = np.abs(batch.topk_logprobs.numpy() - exact.topk_logprobs).max()
        assert err <= STEP / 2 + 1e-6
        assert np.abs(batch.tail_logmass.numpy() - exact.tail_logmass).max() <= STEP / 2 + 1e-6
        # teacher loss recorded = exact mean CE over all validation tokens
        full = reader.read(domain, "validation", range(n_val))
        exact_all = teacher.score(full.input_ids.numpy(), 8)
        expected = float(-exact_all.target_logprob.astype(np.float64).mean())
        assert reader.teacher_loss(domain) == pytest.approx(expected, rel=1e-6)
        assert reader.teacher_loss(domain, [0]) == pytest.approx(
            float(-exact_all.target_logprob[0].astype(np.float64).mean()), rel=1e-6)


def test_tail_bucket_is_exact_mass_outside_topk(tmp_path, tiny_teacher_dir, small_corpus):
    run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus))
    reader = CacheReader.open(tmp_path / "cache")
    b = reader.read("prose", "train", [0, 1])
    mass = torch.exp(b.topk_logprobs).sum(-1) + torch.exp(b.tail_logmass)
    assert torch.allclose(mass, torch.ones_like(mass), atol=64 * STEP)


def test_rerun_of_finished_job_does_nothing(tmp_path, tiny_teacher_dir, small_corpus):
    cfg = job(tmp_path, tiny_teacher_dir, small_corpus)
    run_cache_job(cfg)
    before = tree_bytes(tmp_path / "cache")
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*")}
    again = run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus))
    assert again.shards_written == 0 and again.complete
    assert tree_bytes(tmp_path / "cache") == before
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*")} == mtimes


@pytest.mark.slow
@pytest.mark.parametrize("change", [{"k": 4}, {"seq_len": 40}, {"val_sequences": 2},
                                    {"logprob_step": 1 / 128}, {"codec_profile": "zstd"}])
def test_different_parameters_refused_unless_overwrite(tmp_path, tiny_teacher_dir,
                                                       small_corpus, change):
    run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus))
    before = tree_bytes(tmp_path / "cache")
    with pytest.raises(StoreMismatchError, match="--overwrite"):
        run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus, **change))
    assert tree_bytes(tmp_path / "cache") == before  # nothing lost
    result = run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus, overwrite=True,
                               **change))
    assert result.complete


def test_changed_source_or_teacher_refused(tmp_path, tiny_teacher_dir, small_corpus,
                                           tmp_path_factory):
    run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus))
    with open(small_corpus["code"] / "docs.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"text": "one more document"}) + "\n")
    with pytest.raises(StoreMismatchError, match="source_fingerprint"):
        run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus))


def test_other_teacher_refused(tmp_path, tiny_teacher_dir, tiny_student_dir, small_corpus):
    run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus))
    with pytest.raises(StoreMismatchError, match="teacher"):
        run_cache_job(job(tmp_path, tiny_student_dir, small_corpus))


@pytest.mark.slow
def test_two_workers_fill_one_store_identically(tmp_path, tiny_teacher_dir, small_corpus):
    single = job(tmp_path, tiny_teacher_dir, small_corpus, output=str(tmp_path / "single"))
    run_cache_job(single)
    out = str(tmp_path / "multi")
    first = run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus, output=out,
                              num_workers=2, worker_index=0))
    assert not first.complete
    with pytest.raises(IncompleteCacheError, match="re-run"):
        CacheReader.open(out)
    second = run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus, output=out,
                               num_workers=2, worker_index=1))
    assert second.complete
    assert first.shards_written + second.shards_written > 0
    assert tree_bytes(tmp_path / "multi") == tree_bytes(tmp_path / "single")


def test_worker_index_out_of_range(tmp_path, tiny_teacher_dir, small_corpus):
    with pytest.raises(ConfigError, match="worker-index"):
        run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus, num_workers=2,
                          worker_index=2))


def test_k_larger_than_vocab(tmp_path, tiny_teacher_dir, small_corpus):
    with pytest.raises(ConfigError, match="vocabulary"):
        run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus, k=10_000))


def test_seq_len_beyond_teacher_maximum(tmp_path, tiny_teacher_dir, small_corpus):
    with pytest.raises(ConfigError, match="maximum sequence length"):
        run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus, seq_len=4096))


def test_missing_teacher(tmp_path, small_corpus):
    from ddk.cache.errors import TeacherError

    with pytest.raises(TeacherError, match="not found"):
        run_cache_job(job(tmp_path, tmp_path / "nope", small_corpus))


def test_missing_output_parent(tmp_path, tiny_teacher_dir, small_corpus):
    with pytest.raises(StoreError, match="does not exist"):
        run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus,
                          output=str(tmp_path / "no" / "such" / "cache")))


def test_read_only_output(tmp_path, tiny_teacher_dir, small_corpus, monkeypatch):
    """The writability check goes through os.access; CI runs as root, for whom chmod does
    not make a directory read-only, so the denial is simulated at os.access."""
    real_access = os.access
    ro = tmp_path / "ro"
    ro.mkdir()

    def access(path, mode, *a, **kw):
        if Path(path) == ro and mode & os.W_OK:
            return False
        return real_access(path, mode, *a, **kw)

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(StoreError, match="not writable"):
        run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus, output=str(ro / "c")))


def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "ddk"
    return subprocess.Popen([str(exe), *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _cli_args(teacher: Path, corpus: dict[str, Path], out: Path) -> list[str]:
    args = ["cache-teacher", "--teacher", str(teacher), "-o", str(out), "--k", "8",
            "--seq-len", "32", "--val-sequences", "3", "--sequences-per-shard", "2",
            "--batch-size", "1", "-q"]
    for name, path in sorted(corpus.items()):
        args += ["--domain", f"{name}={path}"]
    return args


@pytest.mark.slow
def test_sigkill_and_resume_is_bitwise_identical(tmp_path, tiny_teacher_dir, small_corpus):
    reference = tmp_path / "reference"
    p = _cli(*_cli_args(tiny_teacher_dir, small_corpus, reference), cwd=tmp_path)
    assert p.wait(timeout=300) == 0, p.stderr.read()

    killed = tmp_path / "killed"
    p = _cli(*_cli_args(tiny_teacher_dir, small_corpus, killed), cwd=tmp_path)
    deadline = time.monotonic() + 120
    flags = []
    while time.monotonic() < deadline and p.poll() is None:
        flags = list(killed.glob("*/*/shard_done/c/*"))
        if len(flags) >= 3:
            break
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert len(flags) >= 3, "the job never wrote a shard before the deadline"
    root_meta = json.loads((killed / "zarr.json").read_text())
    assert root_meta["attributes"]["ddk"]["complete"] is False, "killed too late to test resume"
    with pytest.raises(IncompleteCacheError):
        CacheReader.open(killed)

    p = _cli(*_cli_args(tiny_teacher_dir, small_corpus, killed), cwd=tmp_path)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    assert tree_bytes(killed) == tree_bytes(reference)


@pytest.mark.slow
def test_cli_user_error_is_one_line(tmp_path, small_corpus):
    p = _cli("cache-teacher", "--teacher", str(tmp_path / "missing"), "-o",
             str(tmp_path / "c"), "--domain", f"code={small_corpus['code']}", cwd=tmp_path)
    _out, err = p.communicate(timeout=120)
    assert p.returncode == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: teacher not found"), err
    assert "Traceback" not in err


@pytest.mark.parametrize("scheme", ["file://", "memory://"])
def test_fsspec_urls(tmp_path, tiny_teacher_dir, small_corpus, scheme):
    url = scheme + (str(tmp_path / "url-cache") if scheme == "file://" else "ddk-test-cache")
    result = run_cache_job(job(tmp_path, tiny_teacher_dir, {"code": small_corpus["code"]},
                               output=url))
    assert result.complete
    reader = CacheReader.open(url)
    assert reader.read("code", "train", [1, 0]).topk_ids.shape == (2, 47, 8)
    assert reader.teacher_loss("code") > 0


@pytest.mark.slow
def test_workers_started_together_race_safely(tmp_path, tiny_teacher_dir, small_corpus):
    """Three workers opening a new store at the same moment all succeed and complete it."""
    out = tmp_path / "raced"
    procs = [_cli(*_cli_args(tiny_teacher_dir, small_corpus, out), "--num-workers", "3",
                  "--worker-index", str(i), cwd=tmp_path) for i in range(3)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    reference = tmp_path / "reference"
    p = _cli(*_cli_args(tiny_teacher_dir, small_corpus, reference), cwd=tmp_path)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    assert tree_bytes(out) == tree_bytes(reference)


@pytest.mark.slow
def test_moved_teacher_and_sources_still_resume(tmp_path, tiny_teacher_dir, small_corpus):
    """Where files live is not part of a cache's identity; their content is."""
    run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus))
    moved_teacher = shutil.copytree(tiny_teacher_dir, tmp_path / "elsewhere" / "renamed")
    moved = {n: shutil.copytree(p, tmp_path / "moved" / n) for n, p in small_corpus.items()}
    again = run_cache_job(job(tmp_path, moved_teacher, moved))
    assert again.shards_written == 0 and again.complete
