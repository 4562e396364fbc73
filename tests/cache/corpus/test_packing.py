"""Packing: EOS joining, fixed-length windows, deterministic shuffle, split sizes and caps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ddk.cache.corpus.packing import PackedDomain, document_order, pack_domain
from ddk.cache.corpus.sources import DomainSpec, iter_documents
from ddk.cache.errors import ConfigError, CorpusError


@pytest.fixture(scope="module")
def tok(tiny_teacher_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_teacher_dir)


def jsonl_domain(root: Path, name: str, docs: list[str]) -> DomainSpec:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "docs.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": doc}) + "\n" for doc in docs)
    return DomainSpec(name, str(root))


def expected_stream(spec: DomainSpec, tok, seed: int) -> list[int]:
    """Reference packing input, one document at a time (no batching)."""
    docs = list(iter_documents(spec))
    stream: list[int] = []
    for i in document_order(len(docs), seed, spec.name):
        stream += tok(docs[i], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return stream


DOCS = [f"Doc {i}: the quick brown fox jumps over {i} lazy dogs." for i in range(200)]


def test_packing_matches_reference_stream(tmp_path, tok):
    spec = jsonl_domain(tmp_path / "d", "prose", DOCS)
    seq_len = 32
    packed = pack_domain(spec, tok, seq_len, val_sequences=5, seed=3)
    ref = expected_stream(spec, tok, seed=3)
    n_total = len(ref) // seq_len
    assert packed.num_tokens_total == len(ref)
    assert packed.num_documents == packed.num_documents_tokenized == len(DOCS)
    assert packed.validation.shape == (5, seq_len)
    assert packed.train.shape == (n_total - 5, seq_len)
    assert packed.validation.dtype == np.int32 and packed.train.dtype == np.int32
    got = np.concatenate([packed.validation.ravel(), packed.train.ravel()])
    # Consecutive windows of the stream; only the final partial window is dropped.
    np.testing.assert_array_equal(got, np.asarray(ref[: n_total * seq_len]))
    assert len(ref) - got.size < seq_len
    assert packed.seq_len == seq_len
    assert not packed.train.flags.writeable


def test_each_document_is_followed_by_eos(tmp_path, tok):
    spec = jsonl_domain(tmp_path / "d", "prose", DOCS)
    packed = pack_domain(spec, tok, 16, val_sequences=0, seed=0)
    assert packed.validation.shape == (0, 16)
    stream = packed.train.ravel().tolist()
    eos = tok.eos_token_id
    pieces = []
    start = 0
    for pos, t in enumerate(stream):
        if t == eos:
            pieces.append(stream[start:pos])
            start = pos + 1
    order = document_order(len(DOCS), 0, "prose")
    # Each complete piece decodes to the next document in shuffled order.
    assert len(pieces) >= len(DOCS) - 2
    for piece, i in zip(pieces, order):
        assert piece == tok(DOCS[i], add_special_tokens=False)["input_ids"]
        assert tok.decode(piece) == DOCS[i]
    assert eos not in tok(DOCS[0], add_special_tokens=False)["input_ids"]


def test_deterministic_and_seed_dependent(tmp_path, tok):
    spec = jsonl_domain(tmp_path / "d", "prose", DOCS)
    a = pack_domain(spec, tok, 32, val_sequences=4, seed=0)
    b = pack_domain(spec, tok, 32, val_sequences=4, seed=0)
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.validation, b.validation)
    c = pack_domain(spec, tok, 32, val_sequences=4, seed=1)
    assert c.num_tokens_total == a.num_tokens_total  # same documents ...
    assert not np.array_equal(c.validation, a.validation)  # ... in another order
    # The domain name is part of the shuffle seed (stable hash, not Python's hash()).
    other = pack_domain(DomainSpec("prose2", spec.source), tok, 32, val_sequences=4, seed=0)
    assert not np.array_equal(other.validation, a.validation)


def test_document_order_is_a_fixed_permutation():
    order = document_order(10, 0, "code")
    assert sorted(order.tolist()) == list(range(10))
    # Pinned: guards against an accidental change of the shuffle (store resumes rely on it).
    assert order.tolist() == [2, 9, 0, 3, 5, 4, 6, 1, 8, 7]
    assert document_order(10, 1, "code").tolist() != order.tolist()
    assert document_order(0, 0, "code").size == 0


def test_validation_is_drawn_from_the_whole_domain(tmp_path, tok):
    root = tmp_path / "d"
    root.mkdir()
    (root / "a.jsonl").write_text(
        "".join(json.dumps({"text": f"alpha {i}"}) + "\n" for i in range(100))
    )
    (root / "b.jsonl").write_text(
        "".join(json.dumps({"text": f"beta {i}"}) + "\n" for i in range(100))
    )
    packed = pack_domain(DomainSpec("mix", str(root)), tok, 16, val_sequences=4)
    text = tok.decode(packed.validation.ravel().tolist())
    assert "alpha" in text and "beta" in text


def test_split_sizes_default_and_caps(tmp_path, tok):
    spec = jsonl_domain(tmp_path / "d", "prose", DOCS)
    full = pack_domain(spec, tok, 32)  # default 500 validation, capped at n_total // 2
    n_total = full.num_tokens_total // 32
    assert full.validation.shape[0] == n_total // 2 < 500
    assert full.train.shape[0] == n_total - n_total // 2

    few = pack_domain(spec, tok, 32, val_sequences=3)
    assert few.validation.shape[0] == 3 and few.train.shape[0] == n_total - 3
    np.testing.assert_array_equal(few.validation, full.validation[:3])

    capped = pack_domain(spec, tok, 32, val_sequences=3, max_train_sequences=2)
    assert capped.train.shape == (2, 32)
    np.testing.assert_array_equal(capped.validation, few.validation)  # validation untouched
    np.testing.assert_array_equal(capped.train, few.train[:2])


def test_cap_stops_tokenising_early_with_identical_result(tmp_path, tok):
    docs = [f"Sentence number {i} about the lazy dog." for i in range(3000)]
    spec = jsonl_domain(tmp_path / "d", "big", docs)
    full = pack_domain(spec, tok, 32, val_sequences=10)
    early = pack_domain(spec, tok, 32, val_sequences=10, max_train_sequences=5)
    assert early.num_documents == full.num_documents == 3000
    assert early.num_documents_tokenized < 3000
    assert early.num_tokens_total < full.num_tokens_total
    assert early.num_tokens_total >= (10 + 5) * 32
    np.testing.assert_array_equal(early.validation, full.validation)
    np.testing.assert_array_equal(early.train, full.train[:5])
    # With a cap smaller than val_sequences, validation still gets all val_sequences.
    small = pack_domain(spec, tok, 32, val_sequences=50, max_train_sequences=1)
    assert small.validation.shape[0] == 50 and small.train.shape[0] == 1
    np.testing.assert_array_equal(
        small.validation, pack_domain(spec, tok, 32, val_sequences=50).validation
    )


def test_too_little_text_for_two_sequences(tmp_path, tok):
    spec = jsonl_domain(tmp_path / "d", "tiny", ["short text", "more"])
    with pytest.raises(CorpusError, match=r"domain 'tiny' yields only \d sequences of seq_len 512"):
        pack_domain(spec, tok, 512)
    packed = pack_domain(spec, tok, 4)  # enough for a lower seq_len
    assert packed.validation.shape[0] >= 1 and packed.train.shape[0] >= 1


def test_empty_domain_names_domain_and_source(tmp_path, tok):
    spec = jsonl_domain(tmp_path / "d", "blank", ["", "   ", "\n"])
    with pytest.raises(CorpusError, match=r"domain 'blank' \(source '.*d'\) has no text"):
        pack_domain(spec, tok, 8)
    (tmp_path / "e").mkdir()
    with pytest.raises(CorpusError, match=r"domain 'none' .* is empty"):
        pack_domain(DomainSpec("none", str(tmp_path / "e")), tok, 8)


def test_tokenizer_without_eos_is_rejected(tmp_path, tok):
    class NoEos:
        eos_token_id = None

        def __call__(self, texts, **kwargs):
            return tok(texts, **kwargs)

    spec = jsonl_domain(tmp_path / "d", "prose", DOCS)
    with pytest.raises(ConfigError, match="no EOS token"):
        pack_domain(spec, NoEos(), 32)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seq_len": 1}, "seq-len must be an integer >= 2"),
        ({"seq_len": 32, "val_sequences": -1}, "validation sequences must be >= 0"),
        ({"seq_len": 32, "max_train_sequences": 0}, "train sequences must be >= 1"),
    ],
)
def test_bad_arguments(tmp_path, tok, kwargs, message):
    spec = jsonl_domain(tmp_path / "d", "prose", DOCS)
    with pytest.raises(ConfigError, match=message):
        pack_domain(spec, tok, **kwargs)


def test_progress_bar_reports_docs(tmp_path, tok, capsys):
    spec = jsonl_domain(tmp_path / "d", "prose", DOCS)
    quiet = pack_domain(spec, tok, 32, val_sequences=2)
    assert "docs" not in capsys.readouterr().err
    loud = pack_domain(spec, tok, 32, val_sequences=2, progress=True)
    assert "docs" in capsys.readouterr().err
    np.testing.assert_array_equal(quiet.train, loud.train)
    assert isinstance(loud, PackedDomain)


def test_small_corpus_fixture_packs(small_corpus, tok):
    for name, path in small_corpus.items():
        packed = pack_domain(DomainSpec(name, str(path)), tok, 64, val_sequences=4)
        assert packed.validation.shape == (4, 64)
        assert packed.train.shape[0] >= 4
        assert packed.train.max() < len(tok) and packed.train.min() >= 0
