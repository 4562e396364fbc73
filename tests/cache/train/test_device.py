"""resolve_device / resolve_autocast: the one device + bf16 resolver of training and `ddk eval`
(resolve_device is ddk.cache.device's, re-exported; tests/cache/test_device.py tests it)."""

from __future__ import annotations

import pytest
import torch


def test_default_device_and_autocast_follow_cuda():
    from ddk.cache.device import resolve_device
    from ddk.cache.train.device import resolve_autocast

    dev = resolve_device(None)
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    want = torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else None
    assert resolve_autocast(None, dev) == want


def test_cpu_autocast_is_off_unless_forced_and_forcing_it_is_an_error():
    from ddk.cache.device import resolve_device
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.device import resolve_autocast

    cpu = resolve_device("cpu")
    assert cpu == torch.device("cpu")
    assert resolve_autocast(None, cpu) is None
    assert resolve_autocast(False, cpu) is None
    with pytest.raises(ConfigError, match=r"--bf16 needs a CUDA device; drop it \(or pass "
                                          r"--no-bf16\) on CPU"):
        resolve_autocast(True, cpu)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_an_error():
    from ddk.cache.device import resolve_device
    from ddk.cache.errors import ConfigError

    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_evaluate_model_uses_the_same_bf16_check(train_cache, tiny_student_dir):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.evaluate import evaluate_model

    with pytest.raises(ConfigError, match=r"--bf16 needs a CUDA device; drop it \(or pass"):
        evaluate_model(tiny_student_dir, train_cache, max_sequences=1, device="cpu", bf16=True)
