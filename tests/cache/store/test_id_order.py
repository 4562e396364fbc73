"""ddk.cache.store.id_order: the frequency order of `pcodec-remap`, and the read side
(CacheReader, inspect-cache, --verify) on remapped caches built from the tiny teacher."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from ddk.cache.cache_job.config import CacheJobConfig
from ddk.cache.cache_job.run import run_cache_job
from ddk.cache.corpus.sources import DomainSpec
from ddk.cache.errors import DamagedCacheError
from ddk.cache.store.id_order import (
    corpus_id_order,
    id_by_rank,
    id_order_json,
    rank_of_id,
    ranked_ids,
)
from ddk.cache.store.reader import CacheReader
from ddk.cache.store.report import inspect_cache
from ddk.cache.store.report_text import format_report


def test_ranked_ids_by_count_then_id():
    seqs = [np.array([[5, 3, 3, 9], [9, 3, 5, 0]]), np.array([[7, 7, 9]])]
    # counts: 3 -> 3, 9 -> 3, 5 -> 2, 7 -> 2, 0 -> 1
    np.testing.assert_array_equal(ranked_ids(seqs, 12), [3, 9, 5, 7, 0])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ranked_ids([np.array([12])], 12)


@pytest.mark.parametrize("id_dtype", ["uint16", "int32"])
def test_table_round_trips_through_the_metadata(id_dtype):
    order = id_order_json(np.array([3, 9, 5, 7, 0]), id_dtype)
    order = json.loads(json.dumps(order))  # as stored in zarr.json
    table = id_by_rank(order, 12)
    np.testing.assert_array_equal(table, [3, 9, 5, 7, 0, 1, 2, 4, 6, 8, 10, 11])
    rank = rank_of_id(table)
    ids = np.random.default_rng(0).integers(0, 12, size=(4, 6))
    np.testing.assert_array_equal(table[rank[ids]], ids)
    assert rank[3] == 0 and rank[11] == 11


def test_altered_table_is_refused():
    order = id_order_json(np.array([3, 9, 5]), "uint16")
    order["ranked_ids"] = id_order_json(np.array([9, 3, 5]), "uint16")["ranked_ids"]
    with pytest.raises(DamagedCacheError, match="CRC-32"):
        id_by_rank(order, 12)


def test_only_remap_profiles_get_an_id_order():
    seqs = [np.array([[1, 2, 2]])]
    assert corpus_id_order("pcodec", seqs, 8, "uint16") is None
    assert corpus_id_order("pcodec-remap", seqs, 8, "uint16")["ranked"] == 2


def _build(out: Path, corpus: dict[str, Path], teacher: Path, **kw) -> Path:
    cfg = CacheJobConfig(output=str(out), teacher=str(teacher),
                         domains=[DomainSpec(n, str(p)) for n, p in corpus.items()],
                         k=8, seq_len=32, val_sequences=4, max_train_sequences=6,
                         sequences_per_shard=4, batch_size=8, progress=False, **kw)
    assert run_cache_job(cfg).complete
    return out


def test_report_and_verify_on_a_remapped_topk_cache(tmp_path, small_corpus, tiny_teacher_dir):
    path = _build(tmp_path / "cache", small_corpus, tiny_teacher_dir,
                  codec_profile="pcodec-remap")
    report = inspect_cache(path, verify=3, teacher=str(tiny_teacher_dir))
    assert report["format_version"] == 2 and report["integrity"]["ok"]
    order = report["layout"]["encoding"]["id_order"]
    assert order["kind"] == "corpus-frequency" and order["ranked"] > 0
    v = report["verify"]
    step = CacheReader.open(path).encoding.logprob_step
    # ranks read as ids would fail both: the stored ids are decoded before comparing
    assert v["topk_id_agreement"] == 1.0
    assert v["topk_logprob_abs_error"]["max"] <= step / 2 + 1e-5
    text = format_report(report)
    assert "target ids by frequency rank" in text and "pcodec-remap" in text
    plain = inspect_cache(_build(tmp_path / "plain", small_corpus, tiny_teacher_dir,
                                 codec_profile="pcodec"))
    assert plain["layout"]["encoding"]["id_order"] is None
    assert "frequency rank" not in format_report(plain)


def test_verify_redraws_a_remapped_sampled_cache(tmp_path, small_corpus, tiny_teacher_dir):
    path = _build(tmp_path / "cache", small_corpus, tiny_teacher_dir,
                  codec_profile="pcodec-remap", target="sampled", samples=6)
    v = inspect_cache(path, verify=3, teacher=str(tiny_teacher_dir))["verify"]
    assert v["target"] == "sampled" and v["draws_identical"] == 1.0


def test_damaged_table_in_the_metadata_is_refused_on_open(tmp_path, small_corpus,
                                                          tiny_teacher_dir):
    path = _build(tmp_path / "cache", {"code": small_corpus["code"]}, tiny_teacher_dir,
                  codec_profile="pcodec-remap")
    root = zarr.open_group(str(path), mode="a")
    meta = root.attrs["ddk"]
    order = meta["encoding"]["id_order"]
    order["crc"] = (order["crc"] + 1) % 2**32
    root.attrs["ddk"] = meta
    with pytest.raises(DamagedCacheError, match="id order"):
        CacheReader.open(path)
