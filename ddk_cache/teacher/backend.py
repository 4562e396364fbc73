"""The contract every teacher backend (transformers, vLLM) fulfils.

Position alignment, identical for all backends: for a packed sequence of L tokens the
teacher is scored at positions 0..L-2, and row j holds the teacher's distribution over
token j+1 given tokens 0..j. The last position (which would predict the first token of
the *next* sequence) is not stored, so every stored distribution has a label in the
sequence and the student's logits[:, :-1] line up with it one to one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class TeacherScores:
    """Teacher output for a batch of B sequences of length L (T = L - 1 scored positions).

    topk_ids:       [B, T, k] int32, in descending log-prob order (rank 0 = most likely).
    topk_logprobs:  [B, T, k] float32, full-vocabulary log-probs of those ids (temperature 1).
    tail_logmass:   [B, T] float32, log(1 - sum exp(topk_logprobs)); -inf when k == vocab.
    target_logprob: [B, T] float32, log-prob of the actual next token input_ids[:, 1:]
                    (its negation is the teacher's exact full-vocabulary CE per token).
    """

    topk_ids: np.ndarray
    topk_logprobs: np.ndarray
    tail_logmass: np.ndarray
    target_logprob: np.ndarray

    @classmethod
    def concat(cls, parts: Sequence[TeacherScores]) -> TeacherScores:
        """Stack the scores of consecutive batches along the sequence axis."""
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))


@runtime_checkable
class TeacherBackend(Protocol):
    """A loaded teacher that scores packed token sequences.

    Implementations convert their engine's output into TeacherScores in exactly one place.
    """

    #: short backend name recorded in the store ("transformers", "vllm").
    backend_name: str
    #: number of rows of the teacher's output layer (ids are < vocab_size).
    vocab_size: int
    #: longest sequence the teacher accepts, or None if unknown.
    max_seq_len: int | None
    #: identity recorded in the store metadata: name/path, config hash, weights fingerprint.
    identity: dict[str, Any]

    def score(self, input_ids: np.ndarray, k: int) -> TeacherScores:
        """Score a [B, L] int array of token ids; returns positions 0..L-2 (see module doc)."""
        ...

    def close(self) -> None:
        """Release the engine (GPU memory, worker processes)."""
        ...
