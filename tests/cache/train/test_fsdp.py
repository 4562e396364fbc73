"""`ddk train-student --fsdp` (FSDP2 on 2 gloo processes under torchrun): the same run as DDP
within fp32 tolerance, sharded checkpoints, kill + resume identity, a plain final model; and,
in-process on a 1-process group, the fused loss inside a sharded root forward."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from support.students import small_train_config, tied_student

RUN_OPTS = ["--max-steps", "8", "--interval", "3", "--val-sequences", "3", "--batch-size", "2",
            "--grad-accum", "2", "--lr", "1e-3", "--min-lr", "1e-4", "--checkpoint-every", "2",
            "--device", "cpu", "-q", "--json"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1"}


def _cmd(cache: Path, student: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2", "-m", "ddk.cli.main", "train-student", "--cache", str(cache), "--student",
            str(student), "--out", str(out), *RUN_OPTS, *extra]


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600,
                       check=False)
    assert r.returncode == 0, r.stderr[-3000:]


def _kill_job(pid: int) -> None:
    """SIGKILL a torchrun launcher and every process under it (its workers run in sessions
    of their own, so a process-group kill would miss them)."""
    def tree(p: int) -> list[int]:
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            return [p]
        return [p] + [q for k in kids for q in tree(int(k))]

    for p in tree(pid):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "model" / "model.safetensors"))


def _steps(out: Path) -> list[dict]:
    from ddk.cache.train.metrics import read_metrics

    return [r for r in read_metrics(out / "metrics.jsonl") if r["type"] == "step"]


def _intervals(out: Path) -> list[dict]:
    from ddk.cache.train.metrics import read_metrics

    return [r for r in read_metrics(out / "metrics.jsonl") if r["type"] == "interval"]


def test_fsdp_needs_a_torchrun_launch(train_cache, tiny_student_dir, tmp_path):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.loop import train

    with pytest.raises(ConfigError, match="torchrun"):
        train(small_train_config(train_cache, tiny_student_dir, tmp_path / "r", fsdp=True))
    assert not (tmp_path / "r").exists()


def test_decoder_layers_are_the_no_split_modules(tiny_student_dir):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.fsdp import decoder_layers, shard_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_student_dir)
    layers = decoder_layers(model)
    assert [type(m).__name__ for m in layers] == ["LlamaDecoderLayer"]  # the 1-layer student
    assert layers[0] is model.model.layers[0]
    with pytest.raises(ConfigError, match="no decoder layers"):
        shard_model(torch.nn.Linear(2, 2), None)


@pytest.fixture(scope="module")
def tied(tiny_student_dir, tmp_path_factory) -> Path:
    """Tied embeddings: the head weight is the embedding, one parameter in FSDP's root."""
    return tied_student(tiny_student_dir, tmp_path_factory.mktemp("tied") / "s")


@pytest.fixture(scope="module")
def fsdp_run(train_cache, tied, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp") / "run"
    _run(_cmd(train_cache, tied, out, "--fsdp"))
    return out


@pytest.mark.slow
def test_fsdp_equals_ddp_within_fp32_tolerance(train_cache, tied, fsdp_run, tmp_path):
    ddp = tmp_path / "ddp"
    _run(_cmd(train_cache, tied, ddp))
    summary = json.loads((fsdp_run / "summary.json").read_text())
    assert summary["fsdp"] is True and summary["fused_lm_head"] is True
    assert summary["world_size"] == 2
    a, b = _steps(ddp), _steps(fsdp_run)
    assert [r["step"] for r in b] == list(range(8))
    for x, y in zip(a, b, strict=True):  # measured: rel differences up to 1.2e-7
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-5)
    for x, y in zip(_intervals(ddp), _intervals(fsdp_run), strict=True):
        assert y["weights"] == pytest.approx(x["weights"], abs=1e-6)
    wd, wf = _weights(ddp), _weights(fsdp_run)
    assert sorted(wd) == sorted(wf)  # tied: the embedding saved once, as DDP saves it
    for k in wd:  # measured: max abs difference 1.3e-7
        torch.testing.assert_close(wf[k], wd[k], rtol=1e-4, atol=1e-6, msg=k)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(fsdp_run / "model")  # a plain directory
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


@pytest.mark.slow
def test_fsdp_checkpoints_are_sharded_and_resume_after_sigkill_identically(
        train_cache, tied, fsdp_run, tmp_path):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.loop import train

    ckpt = fsdp_run / "checkpoints" / "step-00000006"
    assert sorted(p.name for p in ckpt.iterdir()) == ["sharded", "state.pt"]
    assert len(list((ckpt / "sharded").glob("*.distcp"))) == 2  # one file per rank
    state = torch.load(ckpt / "state.pt", weights_only=False)
    assert state["model"] is None and state["optimizer"] is None
    assert len(state["samplers"]) == 2 and state["config"]["fsdp"] is True

    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(train_cache, tied, out, "--fsdp"), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / "latest").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill_job(proc.pid)
            pytest.fail(f"run ended before its first checkpoint:\n{proc.communicate()[1]}")
        time.sleep(0.005)
    _kill_job(proc.pid)  # the whole job at once, as a lost node would end it
    proc.communicate(timeout=60)
    assert not (out / "model").exists(), "the run finished before the kill: make it longer"
    _run(_cmd(train_cache, tied, out, "--fsdp", "--resume"))

    want, got = _weights(fsdp_run), _weights(out)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert [r["loss"] for r in _steps(out)] == [r["loss"] for r in _steps(fsdp_run)]
    assert [r["weights"] for r in _intervals(out)] == [r["weights"] for r in
                                                       _intervals(fsdp_run)]

    # a sharded checkpoint is not resumed as an unsharded one (one process, no --fsdp)
    with pytest.raises(ConfigError, match="fsdp=True"):
        train(small_train_config(train_cache, tied, out, resume=True, max_steps=8,
                                 interval=3, val_sequences=3, grad_accum=2,
                                 checkpoint_every=2))


@pytest.fixture
def one_process_group(tmp_path):
    """A 1-process gloo group in this process, so fully_shard runs in-process."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                            world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_fused_loss_runs_in_the_sharded_root_and_refuses_a_head_sharded_on_its_own(
        train_cache, tiny_student_dir, one_process_group):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.fsdp import shard_model
    from ddk.cache.train.lm_head import install_fused_forward
    from ddk.cache.train.sampler import DomainSampler, read_plan
    from ddk.cache.train.step import micro_loss
    from ddk.cache.train.training_cache import open_cache
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoModelForCausalLM

    reader = open_cache(train_cache)
    sizes = [reader.num_sequences(d, "train") for d in reader.domains]
    batch = read_plan(reader, reader.domains, DomainSampler(sizes, [1, 1, 1], seed=0).draw(2))
    cfg = small_train_config(train_cache, tiny_student_dir, "unused")
    cpu = torch.device("cpu")

    plain = AutoModelForCausalLM.from_pretrained(tiny_student_dir)
    want = micro_loss(plain, batch, cfg, cpu, None)[0]
    sharded = AutoModelForCausalLM.from_pretrained(tiny_student_dir)
    install_fused_forward(sharded)
    shard_model(sharded, None)  # the head stays in the root's unit
    got = micro_loss(sharded, batch, cfg, cpu, None, fused=True)[0]
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)

    apart = AutoModelForCausalLM.from_pretrained(tiny_student_dir)
    install_fused_forward(apart)
    fully_shard(apart.lm_head)  # a unit of its own: not gathered in the root's forward
    fully_shard(apart)
    with pytest.raises(ConfigError, match="fused_lm_head=False"):
        micro_loss(apart, batch, cfg, cpu, None, fused=True)
