"""ddk.cache.store.report (and report_text) on small real caches built by run_cache_job from the
tiny teacher; --verify is tested in test_verify.py."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import zarr
from ddk.cache.cache_job.config import CacheJobConfig
from ddk.cache.cache_job.run import run_cache_job
from ddk.cache.corpus.sources import DomainSpec
from ddk.cache.errors import StoreError
from ddk.cache.store.layout import SPLITS
from ddk.cache.store.reader import CacheReader
from ddk.cache.store.report import MASS_SAMPLE_SEQUENCES, inspect_cache
from ddk.cache.store.report_text import format_report, human_bytes
from ddk.cache.store.selection import spread

SEQ_LEN, K, PER_SHARD = 32, 8, 4


def build_cache(out: Path, corpus: dict[str, Path], teacher: Path, **kw) -> Path:
    cfg = CacheJobConfig(output=str(out), teacher=str(teacher),
                         domains=[DomainSpec(n, str(p)) for n, p in corpus.items()],
                         k=K, seq_len=SEQ_LEN, val_sequences=4, max_train_sequences=10,
                         sequences_per_shard=PER_SHARD, batch_size=8, progress=False, **kw)
    run_cache_job(cfg)
    return out


def dir_bytes(path: Path) -> int:
    return sum((Path(root) / f).stat().st_size for root, _, files in os.walk(path)
               for f in files)


def test_report_storage_fidelity_layout(tmp_path, small_corpus, tiny_teacher_dir):
    path = build_cache(tmp_path / "cache", small_corpus, tiny_teacher_dir)
    report = inspect_cache(path)
    assert json.loads(json.dumps(report)) == report  # JSON-able as is
    reader = CacheReader.open(path)
    assert report["integrity"]["ok"] and not report["integrity"]["damaged"]
    assert report["completeness"] == {"complete": True, "missing_shards": {},
                                      "damaged_shards": {},
                                      "shards_total": report["completeness"]["shards_total"],
                                      "shards_done": report["completeness"]["shards_total"]}
    assert set(report["domains"]) == set(small_corpus)

    tokens = stored = logical = 0
    for domain, splits in report["domains"].items():
        for split in SPLITS:
            e = splits[split]
            n = reader.num_sequences(domain, split)
            assert e["sequences"] == e["sequences_done"] == n > 0
            assert e["tokens"] == n * (SEQ_LEN - 1)
            # stored bytes are the files under each array's directory, input_ids included
            for name, a in e["arrays"].items():
                assert a["stored_bytes"] == dir_bytes(path / domain / split / name) > 0
            assert e["stored_bytes"] == sum(a["stored_bytes"] for a in e["arrays"].values())
            assert "input_ids" in e["arrays"]
            assert ("target_logprob" in e["arrays"]) == (split == "validation")
            assert e["arrays"]["input_ids"]["logical_bytes"] == n * SEQ_LEN * 4
            assert e["arrays"]["topk_logprobs"]["logical_bytes"] == n * (SEQ_LEN - 1) * K * 4
            assert e["compression_ratio"] == pytest.approx(e["logical_bytes"] / e["stored_bytes"])
            assert e["bytes_per_token"] == pytest.approx(e["stored_bytes"] / e["tokens"])
            assert e["bytes_per_token"] > 0
            topk = e["arrays"]["topk_ids"]["stored_bytes"] + e["arrays"]["topk_logprobs"][
                "stored_bytes"]
            assert e["bytes_per_topk_entry"] == pytest.approx(topk / (e["tokens"] * K))
            tokens += e["tokens"]
            stored += e["stored_bytes"]
            logical += e["logical_bytes"]

            # top-k mass: every sequence is sampled here (< 64), so it equals a direct read
            batch = reader.read(domain, split, range(n))
            mass = batch.topk_logprobs.double().exp().sum(-1).numpy().ravel()
            m = e["topk_mass"]
            assert m["sampled_sequences"] == n and m["positions"] == mass.size
            assert m["mean"] == pytest.approx(mass.mean())
            assert m["p5"] == pytest.approx(np.percentile(mass, 5))
            assert 0 < m["p5"] <= m["mean"] <= 1.0 + K * 0.01

        teacher = splits["validation"]["teacher"]
        assert teacher["loss"] == pytest.approx(reader.teacher_loss(domain))
        assert teacher["ppl"] == pytest.approx(math.exp(teacher["loss"]))
        assert "teacher" not in splits["train"]

    tot = report["totals"]
    assert (tot["tokens"], tot["stored_bytes"], tot["logical_bytes"]) == (tokens, stored, logical)
    assert tot["store_bytes"] == dir_bytes(path)
    assert tot["overhead_bytes"] == tot["store_bytes"] - tot["stored_bytes"] > 0
    assert tot["compression_ratio"] == pytest.approx(logical / stored)
    assert sum(a["stored_bytes"] for a in tot["arrays"].values()) == stored

    lay = report["layout"]
    assert (lay["k"], lay["seq_len"], lay["sequences_per_shard"]) == (K, SEQ_LEN, PER_SHARD)
    assert lay["encoding"]["logprob_max_abs_error"] == lay["encoding"]["logprob_step"] / 2
    topk = lay["arrays"]["topk_logprobs"]
    assert topk["chunk_shape"] == [1, SEQ_LEN - 1, K]
    assert topk["shard_shape"] == [PER_SHARD, SEQ_LEN - 1, K]
    assert topk["codecs"][-1]["name"] == "crc32c"
    assert report["teacher"]["weights_fingerprint"] == reader.teacher["weights_fingerprint"]
    assert report["tokenizer"]["fingerprint"] == reader.tokenizer_fingerprint
    assert report["verify"] is None

    text = format_report(report)
    for domain in small_corpus:
        assert domain in text
    assert "INCOMPLETE" not in text

    # a lost shard flag object shows up as a missing shard even though the root says complete
    os.remove(path / "code" / "train" / "shard_done" / "c" / "1")
    report = inspect_cache(path)
    assert report["completeness"]["missing_shards"] == {"code/train": [1]}
    assert report["completeness"]["shards_done"] == report["completeness"]["shards_total"] - 1
    train = report["domains"]["code"]["train"]
    assert train["sequences_done"] == train["sequences"] - PER_SHARD


def test_incomplete_store_is_reported_not_refused(tmp_path, small_corpus, tiny_teacher_dir):
    path = build_cache(tmp_path / "cache", small_corpus, tiny_teacher_dir,
                       num_workers=2, worker_index=0)
    reader = CacheReader.open(path, require_complete=False)
    expected = {f"{d}/{s}": v for (d, s), v in reader.missing_shards().items()}
    assert expected  # worker 1 never ran
    report = inspect_cache(path)
    comp = report["completeness"]
    assert comp["complete"] is False
    assert comp["missing_shards"] == expected
    assert comp["shards_done"] == comp["shards_total"] - sum(map(len, expected.values()))
    for domain, splits in report["domains"].items():
        assert splits["validation"]["teacher"] == "missing"
        for split, e in splits.items():
            missing = expected.get(f"{domain}/{split}", [])
            n_missing = sum(min(PER_SHARD, e["sequences"] - i * PER_SHARD) for i in missing)
            assert e["sequences_done"] == e["sequences"] - n_missing
            assert e["tokens"] == e["sequences_done"] * (SEQ_LEN - 1)
            if e["sequences_done"]:  # mass is measured on finished shards only
                assert 0 < e["topk_mass"]["mean"] <= 1.0 + K * 0.01
    text = format_report(report)
    assert "INCOMPLETE" in text and "missing shards" in text and "missing" in text


def test_not_a_cache_is_a_store_error(tmp_path):
    with pytest.raises(StoreError, match="no cache"):
        inspect_cache(tmp_path / "missing")
    zarr.open_group(str(tmp_path / "plain"), mode="w").create_group("x")
    with pytest.raises(StoreError, match="not a ddk cache"):
        inspect_cache(tmp_path / "plain")


def test_human_bytes_uses_binary_units():
    assert [human_bytes(n) for n in (None, 0, 1023, 1536, 5 * 1024**2, 3 * 1024**4)] == [
        "-", "0 B", "1023 B", "1.5 KiB", "5.0 MiB", "3.0 TiB"]


def test_sampled_cache_report_and_verify(sampled_train_cache, tiny_teacher_dir):
    """inspect-cache on a sampled cache: its target, distinct ids per position, bytes per
    entry, and --verify re-drawing the same tokens from the re-run teacher."""
    report = inspect_cache(sampled_train_cache, verify=3, teacher=str(tiny_teacher_dir),
                           progress=False)
    assert report["format_version"] == 2
    assert report["layout"]["target"] == {"kind": "sampled", "draws": 8}
    assert set(report["layout"]["arrays"]) == {"input_ids", "sample_ids", "sample_counts",
                                               "target_logprob", "shard_done"}
    reader = CacheReader.open(sampled_train_cache)
    for domain, splits in report["domains"].items():
        for split, e in splits.items():
            assert e["topk_mass"] is None
            d = e["sample_distinct"]
            counts = np.asarray(reader.group[f"{domain}/{split}/sample_counts"][:])
            distinct = (counts > 0).sum(-1)
            picked = spread(np.arange(counts.shape[0]), MASS_SAMPLE_SEQUENCES)
            assert d["sampled_sequences"] == picked.size
            assert d["mean"] == pytest.approx(float(distinct[picked].mean()))
            assert 1 <= d["mean"] <= d["p95"] <= d["max"] <= 8
            target = sum(e["arrays"][n]["stored_bytes"] for n in ("sample_ids",
                                                                   "sample_counts"))
            entries = distinct[picked].mean() * distinct.size  # estimated from the picked
            assert d["bytes_per_entry"] == pytest.approx(target / entries)
    v = report["verify"]
    assert v["target"] == "sampled" and v["draws_identical"] == 1.0
    assert 0 < v["drawn_teacher_mass"]["p5"] <= v["drawn_teacher_mass"]["mean"] <= 1
    assert abs(v["teacher_loss"]["difference"]) < 1e-6
    text = format_report(report)
    assert "sampled target, 8 draws per position" in text
    assert "draws identical on re-draw  1.0000" in text
    json.dumps(report)  # JSON-able as --json prints it
