"""Teacher backend on plain transformers: batched forward in inference mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from ddk.cache.device import resolve_device
from ddk.cache.errors import TeacherError
from ddk.cache.teacher.backend import TeacherScores
from ddk.cache.teacher.identity import teacher_identity
from ddk.cache.teacher.model_dir import describe_error, model_load_errors, transformers_progress
from ddk.cache.teacher.sampled import SampleSpec
from ddk.cache.teacher.topk import ScratchBuffer, sampled_scores_from_logits, scores_from_logits

_DTYPES = {"fp32": torch.float32, "float32": torch.float32,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}


def resolve_dtype(dtype: str, device: torch.device | None = None) -> torch.dtype:
    """'auto' is bf16 on GPU and fp32 on CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device is not None and device.type == "cuda" else torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise TeacherError(f"unknown dtype {dtype!r}: use one of auto, fp32, bf16, fp16") from None


class TransformersTeacher:
    """`AutoModelForCausalLM` from a local directory; logits -> TeacherScores in fp32.

    `max_batch_tokens` bounds B*L per forward pass (the [B, L, V] fp32 logits dominate
    memory), so a batch given to `score` is split into sub-batches when needed.
    `device` is resolved by ddk.cache.device (ConfigError for one this machine lacks);
    `progress` False loads without transformers' "Loading weights" bar.
    """

    backend_name = "transformers"

    def __init__(self, model_path: str | Path, *, dtype: str = "fp32", device: str = "auto",
                 max_batch_tokens: int = 8192, progress: bool = True) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM

        path = Path(model_path)
        if not (path / "config.json").is_file():
            raise TeacherError(
                f"teacher not found: {path} has no config.json; pass --teacher with a local "
                "transformers model directory (or omit it to use the embedded default)")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        try:
            with transformers_progress(progress):
                config = AutoConfig.from_pretrained(path)
                self.model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype)
        except model_load_errors() as e:
            raise TeacherError(f"cannot load the teacher from {path} ({describe_error(e)}); "
                               "repair the model directory or copy it again") from e
        self.model.to(self.device).eval()
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.max_seq_len = getattr(config, "max_position_embeddings", None)
        self.identity: dict[str, Any] = teacher_identity(path)
        self.max_batch_tokens = max_batch_tokens
        self._scratch = ScratchBuffer()  # one extraction temporary for every batch

    @torch.inference_mode()
    def score(self, input_ids: np.ndarray, k: int, *, sample: SampleSpec | None = None
              ) -> TeacherScores:
        ids = torch.as_tensor(np.asarray(input_ids, dtype=np.int64))
        rows = max(1, self.max_batch_tokens // ids.shape[1])
        parts = []
        for start in range(0, ids.shape[0], rows):
            batch = ids[start:start + rows].to(self.device)
            logits = self.model(input_ids=batch, use_cache=False).logits
            if sample is None:
                parts.append(scores_from_logits(logits, batch, k, self._scratch))
            else:
                parts.append(sampled_scores_from_logits(
                    logits, batch, sample.rows(start, start + batch.shape[0])))
            del logits
        return TeacherScores.concat(parts)

    def close(self) -> None:
        del self.model
        self._scratch = ScratchBuffer()  # its memory goes with the model's
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
