"""Constructing a teacher backend by name: the one place that knows each backend's options.

Light to import (no torch, transformers or vLLM until a backend is loaded), so the CLI can
read BACKENDS for its `--backend` choices at start-up through cache_job.config.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ddk.cache.errors import ConfigError
from ddk.cache.teacher.backend import TeacherBackend

#: the teacher backends a cache job can use (recorded in the store as teacher.backend).
BACKENDS = ("transformers", "vllm")
#: teacher compute dtypes (`--dtype` of cache-teacher and inspect-cache); auto: bf16 on GPU
TEACHER_DTYPES = ("fp32", "bf16", "fp16", "auto")


def load_backend(name: str, path: str | Path, *, dtype: str, device: str, seed: int, k: int,
                 batch_size: int, engine_options: Mapping[str, Any],
                 progress: bool = True) -> TeacherBackend:
    """Load the teacher at `path` on backend `name` (one of BACKENDS).

    transformers uses `dtype`, `device` and `progress` (False: no weight-loading bar). vLLM
    uses `dtype`, `seed`, `batch_size` (sequences per generate call), `progress` (False:
    vLLM logs errors only), caps its prompt log-probs at `k`, and takes every
    `engine_options` entry as a vLLM engine argument (it places the model itself, so
    `device` does not apply; on CPU it fills its own defaults, see vllm_backend). Each backend is imported only
    here, when it is chosen.
    """
    if name == "vllm":
        from ddk.cache.teacher.vllm_backend import VLLMTeacher

        return VLLMTeacher(str(path), dtype=dtype, seed=seed, max_logprobs=k,
                           batch_size=batch_size, progress=progress, **engine_options)
    if name == "transformers":
        from ddk.cache.teacher.transformers_backend import TransformersTeacher

        return TransformersTeacher(path, dtype=dtype, device=device, progress=progress)
    raise ConfigError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
