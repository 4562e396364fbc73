"""ddk.cache.store.verify: `inspect_cache(path, verify=N)` re-runs the teacher on stored
validation sequences of a small real cache built by run_cache_job from the tiny teacher."""

from __future__ import annotations

import shutil
from pathlib import Path

import ddk.cache.store.verify as verify_module
import pytest
from ddk.cache.cache_job.config import CacheJobConfig
from ddk.cache.cache_job.run import run_cache_job
from ddk.cache.corpus.sources import DomainSpec
from ddk.cache.errors import TeacherError
from ddk.cache.store.reader import CacheReader
from ddk.cache.store.report import inspect_cache
from ddk.cache.store.report_text import format_report
from ddk.cache.store.verify import pick_verify_sequences

SEQ_LEN, K, PER_SHARD = 32, 8, 4


def build_cache(out: Path, corpus: dict[str, Path], teacher: Path) -> Path:
    cfg = CacheJobConfig(output=str(out), teacher=str(teacher),
                         domains=[DomainSpec(n, str(p)) for n, p in corpus.items()],
                         k=K, seq_len=SEQ_LEN, val_sequences=4, max_train_sequences=10,
                         sequences_per_shard=PER_SHARD, batch_size=8, progress=False)
    run_cache_job(cfg)
    return out


def test_verify_matches_exact_teacher_within_quantisation(tmp_path, small_corpus,
                                                          tiny_teacher_dir, tiny_student_dir,
                                                          monkeypatch):
    teacher = shutil.copytree(tiny_teacher_dir, tmp_path / "teacher")
    path = build_cache(tmp_path / "cache", small_corpus, teacher)
    reader = CacheReader.open(path)
    picks = pick_verify_sequences(reader, 5)
    assert picks == pick_verify_sequences(reader, 5)  # deterministic
    assert len(set(picks)) == 5
    assert sorted(sum(1 for d, _ in picks if d == name) for name in small_corpus) == [1, 2, 2]

    monkeypatch.setattr(verify_module, "_VERIFY_BLOCK", 7)  # several position blocks
    v = inspect_cache(path, verify=5)["verify"]  # default: the teacher path in the metadata
    step = reader.encoding.logprob_step
    assert v["sequences"] == 5 and v["positions"] == 5 * (SEQ_LEN - 1)
    assert v["warnings"] == []
    assert v["quantization_bound"] == step / 2
    assert v["topk_logprob_abs_error"]["max"] <= step / 2 + 1e-5
    assert 0 < v["topk_logprob_abs_error"]["mean"] < step / 2
    assert v["topk_id_agreement"] == 1.0
    assert v["tail_logmass_abs_error"]["max"] <= step / 2 + 1e-5
    assert 0 <= v["kl_exact_vs_stored"]["mean"] <= v["kl_exact_vs_stored"]["max"] < 1e-3
    assert abs(v["teacher_loss"]["difference"]) < 1e-5  # target log-probs are stored as fp32
    assert "Verify" in format_report(inspect_cache(path, verify=2))

    # another model (the 1-layer student): a warning, and errors far above the bound
    bad = inspect_cache(path, verify=3, teacher=str(tiny_student_dir))["verify"]
    assert any("weights_fingerprint" in w for w in bad["warnings"])
    assert bad["topk_logprob_abs_error"]["max"] > 10 * step
    assert bad["kl_exact_vs_stored"]["max"] > 1e-2

    # the recorded teacher is gone: a named error that says to pass --teacher
    shutil.rmtree(teacher)
    with pytest.raises(TeacherError, match="--teacher"):
        inspect_cache(path, verify=1)
    with pytest.raises(TeacherError, match="--teacher"):
        inspect_cache(path, verify=1, teacher=str(tmp_path / "nowhere"))
    assert inspect_cache(path)["verify"] is None  # no teacher needed without --verify
