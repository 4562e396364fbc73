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
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from ddk.cache.teacher.sampled import SampleSpec


@dataclass(frozen=True)
class TeacherScores:
    """Teacher output for a batch of B sequences of length L (T = L - 1 scored positions).

    topk_ids:       [B, T, k] int32, in descending log-prob order (rank 0 = most likely).
    topk_logprobs:  [B, T, k] float32, full-vocabulary log-probs of those ids (temperature 1).
    tail_logmass:   [B, T] float32, log(1 - sum exp(topk_logprobs)); -inf when k == vocab.
    target_logprob: [B, T] float32, log-prob of the actual next token input_ids[:, 1:]
                    (its negation is the teacher's exact full-vocabulary CE per token).
    sample_ids, sample_counts: [B, T, N] int32 / uint8, the sampled target instead of the
                    three top-k fields (teacher/sampled.py); None for a top-k target.
    """

    topk_ids: np.ndarray | None
    topk_logprobs: np.ndarray | None
    tail_logmass: np.ndarray | None
    target_logprob: np.ndarray
    sample_ids: np.ndarray | None = None
    sample_counts: np.ndarray | None = None

    @classmethod
    def concat(cls, parts: Sequence[TeacherScores]) -> TeacherScores:
        """Stack the scores of consecutive batches along the sequence axis."""
        if len(parts) == 1:
            return parts[0]

        def stacked(name: str) -> np.ndarray | None:
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else np.concatenate(values)

        return cls(**{f.name: stacked(f.name) for f in fields(cls)})


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

    def score(self, input_ids: np.ndarray, k: int, *, sample: SampleSpec | None = None
              ) -> TeacherScores:
        """Score a [B, L] int array of token ids; returns positions 0..L-2 (see module doc).

        With `sample` the sampled target is returned instead of the top-k (backends that
        see full logits; vLLM refuses it at config time, cache_job/config.py).
        """
        ...

    def close(self) -> None:
        """Release the engine (GPU memory, worker processes)."""
        ...
