"""`cache-teacher --target sampled` end to end on a tiny real teacher: the stored draws,
their layout and seeds, the format, workers, the refusals, and training on the result."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ddk.cache.cache_job.config import CacheJobConfig
from ddk.cache.cache_job.run import run_cache_job
from ddk.cache.errors import ConfigError
from ddk.cache.store.reader import CacheReader
from ddk.cache.teacher.sampled import SampleSpec, draw_counts, sequence_seed
from ddk.cache.teacher.transformers_backend import TransformersTeacher

from .test_run import job, tree_bytes

DRAWS = 8


def sampled_job(tmp_path, teacher, corpus, **kw) -> CacheJobConfig:
    return job(tmp_path, teacher, corpus, target="sampled", samples=DRAWS, **kw)


def test_draw_layout_counts_then_padding_with_undrawn_ids():
    lp = torch.log_softmax(torch.randn(50, 30, generator=torch.Generator().manual_seed(1)) * 2,
                           -1)
    ids, counts = draw_counts(lp, DRAWS, torch.Generator().manual_seed(2))
    assert ids.shape == counts.shape == (50, DRAWS)
    assert (counts.sum(-1) == DRAWS).all()
    for row_ids, row_counts in zip(ids.tolist(), counts.tolist(), strict=True):
        assert len(set(row_ids)) == DRAWS  # padding ids are distinct too
        d = sum(c > 0 for c in row_counts)
        real, pad = row_ids[:d], row_ids[d:]
        assert row_counts[d:] == [0] * (DRAWS - d) and all(c > 0 for c in row_counts[:d])
        assert [(-c, i) for c, i in zip(row_counts[:d], real)] == sorted(
            (-c, i) for c, i in zip(row_counts[:d], real))
        assert pad == sorted(set(range(2 * DRAWS)) - set(real))[:DRAWS - d]
    again = draw_counts(lp, DRAWS, torch.Generator().manual_seed(2))
    assert torch.equal(again[0], ids) and torch.equal(again[1], counts)


def test_sequence_seeds_differ_by_every_part():
    seeds = {sequence_seed(s, d, sp, i) for s in (0, 1) for d in ("a", "b")
             for sp in ("train", "validation") for i in (0, 1)}
    assert len(seeds) == 16 and all(0 <= x < 2 ** 63 for x in seeds)


def test_sampled_cache_holds_the_seeded_draws_and_the_exact_teacher_loss(
        tmp_path, tiny_teacher_dir, small_corpus):
    assert run_cache_job(sampled_job(tmp_path, tiny_teacher_dir, small_corpus)).complete
    reader = CacheReader.open(tmp_path / "cache")
    assert reader.meta["format_version"] == 2 and reader.target_kind == "sampled"
    assert reader.sample_draws == DRAWS and reader.k == DRAWS
    teacher = TransformersTeacher(tiny_teacher_dir)
    g = reader.group["prose/validation"]
    assert sorted(g.array_keys()) == ["input_ids", "sample_counts", "sample_ids",
                                      "shard_done", "shard_manifest", "target_logprob"]
    for split in ("train", "validation"):
        n = reader.num_sequences("prose", split)
        ids = np.asarray(reader.group[f"prose/{split}/input_ids"][:], dtype=np.int64)
        seeds = tuple(sequence_seed(0, "prose", split, i) for i in range(n))
        exact = teacher.score(ids, 8, sample=SampleSpec(DRAWS, seeds))
        assert np.array_equal(reader.group[f"prose/{split}/sample_ids"][:], exact.sample_ids)
        assert np.array_equal(reader.group[f"prose/{split}/sample_counts"][:],
                              exact.sample_counts)
    batch = reader.read("prose", "train", [1, 0])
    torch.testing.assert_close(batch.topk_logprobs.exp().sum(-1),
                               torch.ones(batch.topk_logprobs.shape[:-1]))
    assert torch.isneginf(batch.tail_logmass).all()
    # the validation teacher loss is exact, as for a top-k cache
    val = reader.read("prose", "validation", range(3))
    exact = teacher.score(val.input_ids.numpy(), 8)
    assert reader.teacher_loss("prose") == pytest.approx(
        float(-exact.target_logprob.astype(np.float64).mean()), rel=1e-6)


def test_topk_store_stays_format_1(tmp_path, tiny_teacher_dir, small_corpus):
    """Top-k caches are written as before the sampled target, so older ddk reads them and
    caches built before resume as the same job."""
    run_cache_job(job(tmp_path, tiny_teacher_dir, {"code": small_corpus["code"]}))
    meta = json.loads((tmp_path / "cache" / "zarr.json").read_text())["attributes"]["ddk"]
    assert meta["format_version"] == 1 and "target" not in meta
    assert CacheReader.open(tmp_path / "cache").target_kind == "topk"


def test_two_workers_draw_what_one_draws(tmp_path, tiny_teacher_dir, small_corpus):
    run_cache_job(sampled_job(tmp_path, tiny_teacher_dir, small_corpus,
                              output=str(tmp_path / "single")))
    for i in range(2):
        run_cache_job(sampled_job(tmp_path, tiny_teacher_dir, small_corpus,
                                  output=str(tmp_path / "multi"), num_workers=2,
                                  worker_index=i, batch_size=3))
    assert tree_bytes(tmp_path / "multi") == tree_bytes(tmp_path / "single")


def test_other_draw_count_is_another_job(tmp_path, tiny_teacher_dir, small_corpus):
    from ddk.cache.errors import StoreMismatchError

    corpus = {"code": small_corpus["code"]}
    run_cache_job(sampled_job(tmp_path, tiny_teacher_dir, corpus))
    with pytest.raises(StoreMismatchError, match="target"):
        run_cache_job(job(tmp_path, tiny_teacher_dir, corpus, target="sampled", samples=4))
    with pytest.raises(StoreMismatchError):
        run_cache_job(job(tmp_path, tiny_teacher_dir, corpus))


@pytest.mark.parametrize("kw,match", [
    ({"samples": 4}, "applies to --target sampled only"),
    ({"target": "sampled", "samples": 256}, "<= 255"),
    ({"target": "sampled", "samples": 0}, ">= 1"),
    ({"target": "sampled", "backend": "vllm"}, "vLLM backend does not return"),
    ({"target": "draws"}, "--target must be one of topk, sampled"),
])
def test_bad_sampled_options(tmp_path, tiny_teacher_dir, small_corpus, kw, match):
    with pytest.raises(ConfigError, match=match):
        run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus, **kw))
    assert not (tmp_path / "cache").exists()


def test_default_draw_count_applies(tmp_path, tiny_teacher_dir, small_corpus):
    from ddk.cache.cache_job.config import DEFAULT_SAMPLES

    run_cache_job(job(tmp_path, tiny_teacher_dir, {"code": small_corpus["code"]},
                      target="sampled"))
    assert CacheReader.open(tmp_path / "cache").sample_draws == DEFAULT_SAMPLES


def test_crash_and_resume_draws_the_same_tokens(tmp_path, tiny_teacher_dir, small_corpus,
                                                monkeypatch):
    """A job that dies after a few shards, re-run, gives the store of an uninterrupted run
    byte for byte: the draws depend on the sequence, not on what ran before (the SIGKILL
    version of this for top-k is in test_run.py)."""
    from ddk.cache.store.writer import CacheWriter

    corpus = {"code": small_corpus["code"]}
    run_cache_job(sampled_job(tmp_path, tiny_teacher_dir, corpus,
                              output=str(tmp_path / "reference")))
    real, written = CacheWriter.write_shard, []

    def dying(self, *args, **kw):
        if len(written) == 2:
            raise KeyboardInterrupt  # the process dies here
        real(self, *args, **kw)
        written.append(args[:3])

    monkeypatch.setattr(CacheWriter, "write_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        run_cache_job(sampled_job(tmp_path, tiny_teacher_dir, corpus,
                                  output=str(tmp_path / "resumed")))
    monkeypatch.setattr(CacheWriter, "write_shard", real)
    result = run_cache_job(sampled_job(tmp_path, tiny_teacher_dir, corpus,
                                       output=str(tmp_path / "resumed")))
    assert len(written) == 2 and result.complete
    shards = len(list((tmp_path / "reference").glob("*/*/shard_done/c/*")))
    assert result.shards_written == shards - 2  # all but the two written before the crash
    assert tree_bytes(tmp_path / "resumed") == tree_bytes(tmp_path / "reference")
