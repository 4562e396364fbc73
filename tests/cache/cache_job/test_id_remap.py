"""`--codec-profile pcodec-remap` end to end on a tiny real teacher: target ids stored by
their frequency rank in the packed corpus (store/id_order.py) read back as the same ids and
log-probs as a pcodec cache of the same job; the table is one for every worker and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from ddk.cache.cache_job.run import run_cache_job
from ddk.cache.corpus.packing import pack_domain
from ddk.cache.errors import StoreMismatchError
from ddk.cache.store.id_order import id_by_rank, ranked_ids
from ddk.cache.store.reader import CacheReader
from ddk.cache.teacher.model_dir import load_teacher_tokenizer

from .test_run import job, tree_bytes

REMAP = {"codec_profile": "pcodec-remap"}


def _meta(path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]["ddk"]


def _same_reads(a: CacheReader, b: CacheReader) -> None:
    for domain in a.domains:
        for split in ("train", "validation"):
            n = a.num_sequences(domain, split)
            x, y = a.read(domain, split, range(n)), b.read(domain, split, range(n))
            for name in ("input_ids", "topk_ids", "topk_logprobs", "tail_logmass"):
                assert getattr(x, name).dtype == getattr(y, name).dtype, name
                np.testing.assert_array_equal(getattr(x, name).numpy(), getattr(y, name).numpy(),
                                              err_msg=f"{domain}/{split}/{name}")


@pytest.mark.parametrize("target", [{}, {"target": "sampled", "samples": 6}])
def test_remapped_cache_reads_back_what_a_pcodec_cache_holds(tmp_path, tiny_teacher_dir,
                                                             small_corpus, target):
    plain, remap = tmp_path / "plain", tmp_path / "remap"
    run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus, output=str(plain),
                      codec_profile="pcodec", **target))
    run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus, output=str(remap), **REMAP,
                      **target))
    _same_reads(CacheReader.open(plain), CacheReader.open(remap))
    meta = _meta(remap)
    assert meta["format_version"] == 2 and _meta(plain)["format_version"] == (
        2 if target else 1)
    assert "id_order" not in _meta(plain)["encoding"]
    # what is stored is the rank of each id, not the id
    name = "sample_ids" if target else "topk_ids"
    stored = zarr.open_group(str(remap), mode="r")[f"code/train/{name}"][:]
    raw = zarr.open_group(str(plain), mode="r")[f"code/train/{name}"][:]
    table = id_by_rank(meta["encoding"]["id_order"], meta["teacher"]["vocab_size"])
    assert not np.array_equal(stored, raw)
    np.testing.assert_array_equal(table[stored], raw)
    # input_ids stay raw
    np.testing.assert_array_equal(
        zarr.open_group(str(remap), mode="r")["code/train/input_ids"][:],
        zarr.open_group(str(plain), mode="r")["code/train/input_ids"][:])


def test_id_order_is_the_packed_corpus_frequency_order(tmp_path, tiny_teacher_dir,
                                                       small_corpus):
    cfg = job(tmp_path, tiny_teacher_dir, small_corpus, **REMAP)
    run_cache_job(cfg)
    meta = _meta(tmp_path / "cache")
    tokenizer = load_teacher_tokenizer(tiny_teacher_dir)
    packed = [pack_domain(spec, tokenizer, cfg.seq_len, val_sequences=cfg.val_sequences,
                          max_train_sequences=cfg.max_train_sequences, seed=cfg.seed)
              for spec in cfg.domains]
    vocab = meta["teacher"]["vocab_size"]
    expected = ranked_ids([a for p in packed for a in (p.train, p.validation)], vocab)
    table = id_by_rank(meta["encoding"]["id_order"], vocab)
    assert meta["encoding"]["id_order"]["ranked"] == expected.size
    np.testing.assert_array_equal(table[:expected.size], expected)
    assert np.array_equal(np.sort(table), np.arange(vocab))  # a permutation


def test_two_workers_and_resume_write_the_bytes_of_one_run(tmp_path, tiny_teacher_dir,
                                                           small_corpus):
    run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus, output=str(tmp_path / "one"),
                      **REMAP))
    for i in range(2):
        run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus,
                          output=str(tmp_path / "multi"), num_workers=2, worker_index=i,
                          batch_size=3, **REMAP))
    assert tree_bytes(tmp_path / "multi") == tree_bytes(tmp_path / "one")
    # a job interrupted after its first shard (its other shards' flags and objects lost)
    # resumes into the same bytes
    resumed = tmp_path / "resumed"
    run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus, output=str(resumed), **REMAP))
    for flag in sorted(resumed.glob("*/*/shard_done/c/*"))[1:]:
        flag.write_bytes(b"\x00")
    root = zarr.open_group(str(resumed), mode="a")
    root.attrs["ddk"] = {**root.attrs["ddk"], "complete": False}
    again = run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus, output=str(resumed),
                              **REMAP))
    assert again.complete and again.shards_written > 0
    assert tree_bytes(resumed) == tree_bytes(tmp_path / "one")


def test_remap_and_raw_ids_are_different_jobs(tmp_path, tiny_teacher_dir, small_corpus):
    run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus, **REMAP))
    with pytest.raises(StoreMismatchError, match="encoding"):
        run_cache_job(job(tmp_path, tiny_teacher_dir, small_corpus, codec_profile="pcodec"))
