"""ddk.cache.teacher.loading: each backend name builds its backend; BACKENDS is the one list."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from ddk.cache.cache_job import config as cache_job_config
from ddk.cache.errors import BackendUnavailableError, ConfigError
from ddk.cache.teacher.backend import TeacherBackend
from ddk.cache.teacher.loading import BACKENDS, load_backend

OPTIONS = {"dtype": "fp32", "device": "cpu", "seed": 0, "k": 4, "batch_size": 2,
           "engine_options": {}}


def test_backends_are_single_sourced():
    assert BACKENDS == ("transformers", "vllm")
    assert cache_job_config.BACKENDS is BACKENDS


def test_transformers_backend(tiny_teacher_dir):
    backend = load_backend("transformers", tiny_teacher_dir, **OPTIONS)
    try:
        assert isinstance(backend, TeacherBackend)
        assert backend.backend_name == "transformers"
        assert str(backend.device) == "cpu"
        scores = backend.score(np.arange(2 * 8).reshape(2, 8) % backend.vocab_size, 4)
        assert scores.topk_ids.shape == (2, 7, 4)
    finally:
        backend.close()


def test_vllm_backend_without_vllm(monkeypatch, tiny_teacher_dir):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    with pytest.raises(BackendUnavailableError, match="vLLM is not installed"):
        load_backend("vllm", tiny_teacher_dir, **OPTIONS)


def test_unknown_backend_names_the_choices(tiny_teacher_dir):
    with pytest.raises(ConfigError, match="unknown backend 'onnx'; use one of transformers, vllm"):
        load_backend("onnx", tiny_teacher_dir, **OPTIONS)


def test_importing_it_loads_no_engine():
    code = ("import sys, ddk.cache.teacher.loading, ddk.cache.cache_job.config; "
            "print(sorted({'torch', 'transformers', 'vllm'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
