"""ddk.cache.device.resolve_device: the one --device resolver of every verb."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from ddk.cache.device import resolve_device
from ddk.cache.errors import ConfigError


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this machine has `n` CUDA GPUs (only what resolve_device asks torch)."""
    def set_count(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return set_count


@pytest.mark.parametrize("device", ["auto", None])
def test_auto_and_none_pick_cuda_when_there_is_one(device, gpus):
    gpus(0)
    assert resolve_device(device) == torch.device("cpu")
    gpus(2)
    assert resolve_device(device) == torch.device("cuda")


@pytest.mark.parametrize("device", ["cpu", "cpu:0", "meta"])
def test_any_torch_device_string_is_accepted(device, gpus):
    gpus(0)
    assert resolve_device(device) == torch.device(device)


@pytest.mark.parametrize("device", ["banana", "CUDA", "cuda:x", "cuda:-1", "", " cpu"])
def test_an_unparsable_string_names_the_choices(device):
    with pytest.raises(ConfigError) as e:
        resolve_device(device)
    assert str(e.value) == f"--device {device}: not a device; use auto, cpu, cuda or cuda:N"


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_on_a_machine_without_a_gpu(device, gpus):
    gpus(0)
    with pytest.raises(ConfigError) as e:
        resolve_device(device)
    assert str(e.value) == (f"--device {device}: no CUDA GPU is available on this machine "
                            "(0 GPUs visible); use --device cpu or auto")


def test_a_gpu_index_that_is_not_there_says_how_many_there_are(gpus):
    gpus(2)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError) as e:
        resolve_device("cuda:2")
    assert str(e.value) == ("--device cuda:2: this machine has 2 CUDA GPUs (cuda:0 to cuda:1); "
                            "use one of them, cuda or auto")
    gpus(1)
    with pytest.raises(ConfigError, match=r"has 1 CUDA GPU \(cuda:0\); use one of them"):
        resolve_device("cuda:3")


def test_every_user_resolves_through_this_one():
    from ddk.cache.cache_job import run
    from ddk.cache.teacher import transformers_backend
    from ddk.cache.train import distributed, evaluate

    for user in (run, transformers_backend, distributed, evaluate):
        assert user.resolve_device is resolve_device, user.__name__


def test_the_transformers_teacher_refuses_a_bad_device_before_loading(tiny_teacher_dir):
    from ddk.cache.teacher.transformers_backend import TransformersTeacher

    with pytest.raises(ConfigError, match="--device banana: not a device"):
        TransformersTeacher(tiny_teacher_dir, device="banana")


def test_importing_it_loads_no_torch():
    code = "import sys, ddk.cache.device; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
