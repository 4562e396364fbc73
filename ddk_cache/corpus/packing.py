"""Tokenise a domain and pack it into fixed-length sequences with a train/validation split.

Pipeline for one domain (all steps deterministic, so the same inputs, tokenizer, seq_len
and seed always give identical arrays):

1. Read every document (corpus.iter_documents) into memory.
2. Shuffle the document order with a generator seeded from (seed, domain name) through
   sha256, never Python's salted hash(): splits are representative of the whole domain
   rather than of its first files, yet reproducible across runs and machines.
3. Tokenise each document with ``tokenizer(text, add_special_tokens=False)`` (batched
   through the fast tokenizer) and append the EOS id after it, so the teacher and student
   see where one document ends and the next begins.
4. Concatenate and cut into consecutive, non-overlapping windows of seq_len tokens; the
   final partial window is dropped. A document may straddle two windows.
5. The first n_val windows are validation, the rest train, with
   n_val = min(val_sequences, n_total // 2) (the DDK paper uses 500); train is then
   truncated to max_train_sequences if given. Validation is never truncated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from ddk.cache.corpus.sources import DomainSpec, iter_documents
from ddk.cache.errors import ConfigError, CorpusError
from tqdm.auto import tqdm

# Tokenizer calls are batched up to this many documents or characters, whichever first.
_BATCH_DOCS = 256
_BATCH_CHARS = 4_000_000
_SHUFFLE_TAG = "ddk-pack-shuffle-v1"


@dataclass(frozen=True)
class PackedDomain:
    """One domain's packed token sequences.

    train / validation: [n, seq_len] read-only arrays of token ids, int32 (int64 if the
        vocabulary has more than 2**31-1 entries).
    num_documents: documents in the domain (after skipping empty ones).
    num_tokens_total: tokens (EOS included) produced by tokenisation before the final
        partial window and the train cap were dropped. When max_train_sequences lets
        packing stop early it counts only the documents actually tokenised.
    num_documents_tokenized: how many of the shuffled documents were tokenised (equals
        num_documents unless packing stopped early).
    """

    name: str
    train: np.ndarray
    validation: np.ndarray
    num_documents: int
    num_tokens_total: int
    num_documents_tokenized: int | None = None

    @property
    def seq_len(self) -> int:
        """Tokens per packed sequence."""
        return int(self.validation.shape[1])


def document_order(num_documents: int, seed: int, name: str) -> np.ndarray:
    """The shuffled document order for a domain: a permutation of range(num_documents).

    Uses raw 64-bit outputs of PCG64 (seeded via SeedSequence from sha256(seed, name)) as
    sort keys, which numpy keeps bit-stable across releases, unlike Generator.permutation's
    algorithm.
    """
    digest = hashlib.sha256(f"{_SHUFFLE_TAG}\0{int(seed)}\0{name}".encode()).digest()
    entropy = [int(w) for w in np.frombuffer(digest, dtype="<u4")]
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))
    keys = rng.bit_generator.random_raw(num_documents)
    return np.argsort(keys, kind="stable")


def _id_dtype(tokenizer: Any, eos_id: int) -> np.dtype:
    """int32 token ids, or int64 when the vocabulary does not fit in int32."""
    try:
        vocab = len(tokenizer)
    except TypeError:
        vocab = int(getattr(tokenizer, "vocab_size", 0))
    vocab = max(vocab, eos_id + 1)
    return np.dtype(np.int32) if vocab <= np.iinfo(np.int32).max else np.dtype(np.int64)


def _check_args(seq_len: int, val_sequences: int, max_train_sequences: int | None) -> None:
    """ConfigError for a sequence length or split size out of range."""
    if not isinstance(seq_len, int) or seq_len < 2:
        raise ConfigError(f"--seq-len must be an integer >= 2, got {seq_len!r}")
    if not isinstance(val_sequences, int) or val_sequences < 0:
        raise ConfigError(f"the number of validation sequences must be >= 0, got {val_sequences!r}")
    if max_train_sequences is not None and (
        not isinstance(max_train_sequences, int) or max_train_sequences < 1
    ):
        raise ConfigError(
            f"the maximum number of train sequences must be >= 1, got {max_train_sequences!r}"
        )


def _eos_id(tokenizer: Any) -> int:
    """The EOS id appended after every document; ConfigError if the tokenizer has none."""
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if eos_id is None:
        raise ConfigError(
            "the teacher's tokenizer has no EOS token, which separates packed documents; "
            "set eos_token in its tokenizer_config.json"
        )
    return int(eos_id)


def _read_texts(spec: DomainSpec) -> list[str]:
    """Every document of the domain, in file order; CorpusError if there are none."""
    texts = list(iter_documents(spec))
    if not texts:
        raise CorpusError(
            f"domain {spec.name!r} (source {spec.source!r}) has no text: all its documents "
            "are empty; add text or remove the domain"
        )
    return texts


def _tokens_needed(seq_len: int, val_sequences: int, max_train_sequences: int | None) -> int | None:
    """Tokens after which tokenising more cannot change the result (None: all are needed).

    With a train cap, this many sequences are enough that the split in _split_sequences
    cannot differ from the split of the whole domain.
    """
    if max_train_sequences is None:
        return None
    need_seqs = max(val_sequences + max_train_sequences, 2 * val_sequences, 2)
    return need_seqs * seq_len


def _document_batches(texts: list[str], order: np.ndarray) -> Iterator[tuple[int, int]]:
    """Consecutive [start, stop) ranges of `order` for one tokenizer call each: up to
    _BATCH_DOCS documents or _BATCH_CHARS characters, whichever comes first (at least
    one document per batch)."""
    start = 0
    while start < len(order):
        stop, chars = start, 0
        while (
            stop < len(order)
            and stop - start < _BATCH_DOCS
            and (stop == start or chars < _BATCH_CHARS)
        ):
            chars += len(texts[order[stop]])
            stop += 1
        yield start, stop
        start = stop


def _tokenize(
    texts: list[str],
    order: np.ndarray,
    tokenizer: Any,
    eos_id: int,
    dtype: np.dtype,
    need_tokens: int | None,
    bar: Any,
) -> tuple[np.ndarray, int, int]:
    """(token stream, its length, documents tokenised) for the documents in `order`.

    Each document's tokens are followed by `eos_id`. Stops after the document that brings
    the stream to `need_tokens` tokens, if given. `bar` advances by documents.
    """
    chunks: list[np.ndarray] = []
    total = 0
    used = 0
    for start, stop in _document_batches(texts, order):
        batch = [texts[i] for i in order[start:stop]]
        encoded = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
        flat: list[int] = []
        done = False
        for ids in encoded:
            flat.extend(ids)
            flat.append(eos_id)
            total += len(ids) + 1
            used += 1
            if need_tokens is not None and total >= need_tokens:
                done = True
                break
        chunks.append(np.asarray(flat, dtype=dtype))
        bar.update(used - start)  # the documents of this batch that were tokenised
        if done:
            break
    return np.concatenate(chunks), total, used


def _split_sequences(
    stream: np.ndarray,
    seq_len: int,
    val_sequences: int,
    max_train_sequences: int | None,
    name: str,
) -> tuple[np.ndarray, np.ndarray]:
    """(validation, train) windows of `stream`, read-only (steps 4-5 of the module docstring)."""
    n_total = stream.size // seq_len
    if n_total < 2:
        raise CorpusError(
            f"domain {name!r} yields only {n_total} sequences of seq_len {seq_len} "
            f"({stream.size} tokens); add text or lower --seq-len"
        )
    n_val = min(val_sequences, n_total // 2)
    n_train = n_total - n_val
    if max_train_sequences is not None:
        n_train = min(n_train, max_train_sequences)

    validation = stream[: n_val * seq_len].reshape(n_val, seq_len).copy()
    train = stream[n_val * seq_len : (n_val + n_train) * seq_len].reshape(n_train, seq_len)
    if train.size < stream.size // 2:  # don't keep a large unused buffer alive
        train = train.copy()
    validation.flags.writeable = False
    train.flags.writeable = False
    return validation, train


def pack_domain(
    spec: DomainSpec,
    tokenizer: Any,
    seq_len: int,
    *,
    val_sequences: int = 500,
    max_train_sequences: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> PackedDomain:
    """Tokenise, EOS-join, pack and split one domain (see the module docstring).

    tokenizer: a Hugging Face tokenizer (fast preferred) with an EOS token.
    seq_len: tokens per sequence (>= 2).
    val_sequences: wanted validation sequences; the split takes
        min(val_sequences, n_total // 2) so at least half the domain stays for training.
    max_train_sequences: cap on train sequences. Tokenisation stops once enough tokens
        exist for the result, which is identical to tokenising everything and truncating.
    seed: with the domain name, fixes the document shuffle.
    progress: show a tqdm bar over documents (docs/s).

    Raises CorpusError if the domain has no text or yields fewer than 2 sequences,
    ConfigError if the tokenizer has no EOS token or an argument is out of range.
    """
    _check_args(seq_len, val_sequences, max_train_sequences)
    eos_id = _eos_id(tokenizer)
    dtype = _id_dtype(tokenizer, eos_id)
    texts = _read_texts(spec)
    order = document_order(len(texts), seed, spec.name)
    need_tokens = _tokens_needed(seq_len, val_sequences, max_train_sequences)
    bar = tqdm(total=len(texts), unit="docs", desc=f"tokenize {spec.name}",
               disable=not progress, leave=False)
    try:
        stream, total, used = _tokenize(texts, order, tokenizer, eos_id, dtype, need_tokens, bar)
    finally:
        bar.close()
    validation, train = _split_sequences(stream, seq_len, val_sequences, max_train_sequences,
                                         spec.name)
    return PackedDomain(
        name=spec.name,
        train=train,
        validation=validation,
        num_documents=len(texts),
        num_tokens_total=total,
        num_documents_tokenized=used,
    )
