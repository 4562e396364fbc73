"""Per-domain perplexity on a real cache, cache checks, and student-vs-cache checks."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from support.students import student_variant


def test_perplexities_match_a_direct_computation(train_cache, tiny_student_dir):
    from ddk.cache.train.evaluate import evaluate_domains
    from ddk.cache.train.student import load_student
    from ddk.cache.train.training_cache import open_cache

    reader = open_cache(train_cache)
    model, _ = load_student(tiny_student_dir, reader)
    got = evaluate_domains(model, reader, max_sequences=4, batch_size=3)
    assert [p.domain for p in got] == reader.domains
    for p in got:
        ids = reader.read(p.domain, "validation", [0, 1, 2, 3]).input_ids
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        assert p.sequences == 4 and p.tokens == 4 * (reader.seq_len - 1)
        assert p.student_loss == pytest.approx(float(ce), rel=1e-5)
        assert p.student_ppl == pytest.approx(math.exp(float(ce)), rel=1e-5)
        assert p.teacher_loss == pytest.approx(reader.teacher_loss(p.domain, [0, 1, 2, 3]))
        assert p.ratio == pytest.approx(p.student_ppl / p.teacher_ppl)


def test_val_sequences_are_capped_and_batching_does_not_matter(train_cache, tiny_student_dir):
    from ddk.cache.train.evaluate import evaluate_domains
    from ddk.cache.train.student import load_student
    from ddk.cache.train.training_cache import open_cache

    reader = open_cache(train_cache)
    model, _ = load_student(tiny_student_dir, reader)
    a = evaluate_domains(model, reader, max_sequences=10_000, batch_size=1)
    b = evaluate_domains(model, reader, max_sequences=10_000, batch_size=5)
    for x, y in zip(a, b, strict=True):
        assert x.sequences == reader.num_sequences(x.domain, "validation")
        assert x.student_loss == pytest.approx(y.student_loss, rel=1e-5)
        # all validation sequences: the teacher loss is the one the cache recorded
        assert x.teacher_loss == pytest.approx(reader.teacher_loss(x.domain), rel=1e-6)


def test_evaluate_model_api(train_cache, tiny_student_dir):
    from ddk.cache.train.evaluate import evaluate_model

    rows = evaluate_model(tiny_student_dir, train_cache, max_sequences=2, device="cpu")
    assert len(rows) == 3 and all(r.student_ppl > 1 and r.teacher_ppl > 1 for r in rows)


# -- clear errors ----------------------------------------------------------------------------
def _break_cache(src: Path, dst: Path, how: str) -> Path:
    import zarr

    shutil.copytree(src, dst)
    g = zarr.open_group(str(dst), mode="a")
    if how == "incomplete":
        meta = dict(g.attrs["ddk"])
        meta["complete"] = False
        g.attrs["ddk"] = meta
        g["code/train/shard_done"][0] = 0
    elif how == "no-teacher-loss":
        del g["math/validation"].attrs["teacher"]
    elif how == "missing-domain":
        shutil.rmtree(dst / "prose")
    return dst


@pytest.mark.parametrize("how,error,match", [
    ("incomplete", "IncompleteCacheError", "incomplete"),
    ("no-teacher-loss", "IncompleteCacheError", "teacher validation loss"),
    ("missing-domain", "DamagedCacheError", "prose/zarr.json: the whole domain is missing"),
])
def test_broken_caches_raise_a_named_error(train_cache, tmp_path, how, error, match):
    from ddk.cache import errors
    from ddk.cache.train.training_cache import open_cache

    broken = _break_cache(train_cache, tmp_path / "broken", how)
    with pytest.raises(getattr(errors, error), match=match):
        open_cache(broken)


def test_not_a_cache_raises_store_error(tmp_path):
    from ddk.cache.errors import StoreError
    from ddk.cache.train.training_cache import open_cache

    with pytest.raises(StoreError):
        open_cache(tmp_path / "nothing-here")


def test_student_with_other_tokenizer_is_refused(train_cache, tiny_student_dir, tmp_path):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.student import load_student
    from ddk.cache.train.training_cache import open_cache
    from transformers import AutoTokenizer

    other = student_variant(tiny_student_dir, tmp_path / "other-tok")
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<extra_token>"])
    tok.save_pretrained(other)
    with pytest.raises(ConfigError, match="tokenizer differs"):
        load_student(other, open_cache(train_cache))


def test_student_vocab_smaller_than_teacher_is_refused(train_cache, tiny_student_dir, tmp_path):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.student import load_student
    from ddk.cache.train.training_cache import open_cache
    from transformers import AutoModelForCausalLM

    reader = open_cache(train_cache)
    small = tmp_path / "small-vocab"
    shutil.copytree(tiny_student_dir, small)
    model = AutoModelForCausalLM.from_pretrained(small)
    model.resize_token_embeddings(reader.vocab_size - 8)
    model.save_pretrained(small)
    with pytest.raises(ConfigError, match="smaller than the teacher"):
        load_student(small, reader)


def test_student_vocab_padded_larger_is_accepted(train_cache, tiny_student_dir, tmp_path):
    from ddk.cache.train.evaluate import evaluate_domains
    from ddk.cache.train.student import load_student
    from ddk.cache.train.training_cache import open_cache
    from transformers import AutoModelForCausalLM

    reader = open_cache(train_cache)
    big = tmp_path / "big-vocab"
    shutil.copytree(tiny_student_dir, big)
    model = AutoModelForCausalLM.from_pretrained(big)
    model.resize_token_embeddings(reader.vocab_size + 64)
    model.save_pretrained(big)
    loaded, _ = load_student(big, reader)
    assert loaded.config.vocab_size == reader.vocab_size + 64
    assert all(math.isfinite(p.student_ppl) for p in evaluate_domains(loaded, reader,
                                                                      max_sequences=2))


def test_seq_len_beyond_student_positions_is_refused(train_cache, tiny_student_dir, tmp_path):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.student import load_student
    from ddk.cache.train.training_cache import open_cache

    short = student_variant(tiny_student_dir, tmp_path / "short", max_position_embeddings=16)
    with pytest.raises(ConfigError, match="at most 16 positions"):
        load_student(short, open_cache(train_cache))


def test_not_a_model_dir_is_refused(train_cache, tmp_path):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.student import load_student
    from ddk.cache.train.training_cache import open_cache

    with pytest.raises(ConfigError, match="not a local transformers model directory"):
        load_student(tmp_path, open_cache(train_cache))
