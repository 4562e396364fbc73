"""The training loop on a real (tiny) cache: outputs, DDK updates, methods, loss path, errors,
kill/resume identity (subprocess + real SIGKILL / SIGTERM) and DDP on 2 gloo processes."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from support.students import small_train_config, student_variant


@pytest.fixture(scope="session")
def dropout_student(tiny_student_dir, tmp_path_factory) -> Path:
    """The tiny student with attention dropout, so training consumes torch RNG (resume test)."""
    return student_variant(tiny_student_dir, tmp_path_factory.mktemp("dropout-student") / "s",
                           attention_dropout=0.1)




def _records(out: Path, kind: str) -> list[dict]:
    from ddk.cache.train.metrics import read_metrics

    return [r for r in read_metrics(out / "metrics.jsonl") if r["type"] == kind]


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs"


# -- a full ddk run ----------------------------------------------------------------------------
def test_ddk_run_writes_outputs_and_applies_the_ddk_updates(train_cache, tiny_student_dir,
                                                            tmp_path):
    from ddk.cache.train.ddk_weights import initial_weights, update_weights
    from ddk.cache.train.loop import train
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    res = train(small_train_config(train_cache, tiny_student_dir, out, gamma=0.5))
    assert res.steps == 6 and res.tokens == 6 * 2 * 32 and res.interrupted_by is None

    # a plain save_pretrained directory with the tokenizer, changed by training
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    AutoTokenizer.from_pretrained(out / "model")
    before = AutoModelForCausalLM.from_pretrained(tiny_student_dir)
    assert not torch.equal(model.lm_head.weight, before.lm_head.weight)

    steps = _records(out, "step")
    assert [r["step"] for r in steps] == list(range(6))
    for r in steps:
        assert r["loss"] == pytest.approx(r["ce"] + 0.5 * r["kl"], rel=1e-5)
        assert r["kl"] > 0 and r["tokens_per_s"] > 0 and r["grad_norm"] > 0
    assert steps[0]["lr"] == pytest.approx(1e-3 / 2)  # warm-up: 1 step (1% of 6, at least 1)
    assert steps[-1]["lr"] < steps[1]["lr"]

    # intervals at steps 0 and 3 (+ the final evaluation at 6); weights follow the formulas
    iv = _records(out, "interval")
    assert [r["step"] for r in iv] == [0, 3, 6]
    r0 = initial_weights(iv[0]["ppl_student"], iv[0]["ppl_teacher"])
    assert iv[0]["weights"] == pytest.approx(r0.tolist(), abs=1e-12)
    r1 = update_weights(r0, iv[1]["ppl_student"], iv[1]["ppl_teacher"], alpha=0.5)
    assert iv[1]["weights"] == pytest.approx(r1.tolist(), abs=1e-12)
    assert iv[2]["weights"] == iv[1]["weights"]
    assert [h["weights"] for h in res.history] == [iv[0]["weights"], iv[1]["weights"]]
    assert iv[1]["ppl_student"] != iv[0]["ppl_student"]  # re-measured after training

    for name in ("domain_weights.png", "domain_ppl.png"):
        assert (out / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and len(summary["final"]) == 3
    assert summary["final"][0]["student_ppl"] == pytest.approx(iv[2]["ppl_student"][0])


def test_kd_and_cpt_keep_a_fixed_mixture_and_cpt_is_ce_only(train_cache, tiny_student_dir,
                                                            tmp_path):
    from ddk.cache.train.loop import train
    from ddk.cache.train.training_cache import open_cache

    reader = open_cache(train_cache)
    tokens = [reader.num_tokens(d, "train") for d in reader.domains]
    natural = [t / sum(tokens) for t in tokens]
    assert max(natural) - min(natural) > 0.1  # the domains differ in size

    train(small_train_config(train_cache, tiny_student_dir, tmp_path / "kd", method="kd",
                             mixture="uniform"))
    for r in _records(tmp_path / "kd", "interval"):
        assert r["weights"] == pytest.approx([1 / 3] * 3)

    train(small_train_config(train_cache, tiny_student_dir, tmp_path / "cpt", method="cpt",
               mixture="natural", gamma=0.7))
    for r in _records(tmp_path / "cpt", "interval"):
        assert r["weights"] == pytest.approx(natural)
    for r in _records(tmp_path / "cpt", "step"):
        assert r["loss"] == r["ce"] and r["kl"] > 0  # KL is measured but not trained on


def test_max_tokens_sets_the_number_of_steps(train_cache, tiny_student_dir, tmp_path):
    from ddk.cache.train.loop import train

    # 2 sequences x 32 tokens x 2 micro-batches = 128 tokens per step; 300 tokens -> 3 steps
    res = train(small_train_config(train_cache, tiny_student_dir, tmp_path / "r", max_steps=None,
                     max_tokens=300, grad_accum=2, interval=100))
    assert res.steps == 3 and res.tokens == 384


def test_student_with_padded_vocab_trains(train_cache, tiny_student_dir, tmp_path):
    from ddk.cache.train.loop import train
    from transformers import AutoModelForCausalLM

    big = tmp_path / "big"
    shutil.copytree(tiny_student_dir, big)
    m = AutoModelForCausalLM.from_pretrained(big)
    m.resize_token_embeddings(m.config.vocab_size + 32)
    m.save_pretrained(big)
    res = train(small_train_config(train_cache, big, tmp_path / "r", max_steps=2))
    assert res.steps == 2 and all(math.isfinite(r["loss"]) for r in _records(tmp_path / "r",
                                                                              "step"))


def test_lr_schedule():
    from ddk.cache.train.step import lr_at

    lrs = [lr_at(s, max_steps=100, warmup=10, lr=3e-5, min_lr=3e-6) for s in range(101)]
    assert lrs[0] == pytest.approx(3e-5 / 11) and lrs[9] == pytest.approx(3e-5 * 10 / 11)
    assert lrs[10] == pytest.approx(3e-5)
    assert lrs[55] == pytest.approx(3e-6 + 0.5 * (3e-5 - 3e-6))  # half-way down the cosine
    assert lrs[100] == pytest.approx(3e-6)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))


# -- the loss path ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["ddk", "cpt"])
def test_micro_loss_matches_a_hand_written_ce_plus_kl(train_cache, tiny_student_dir, method):
    from ddk.cache.train.sampler import DomainSampler, read_plan
    from ddk.cache.train.step import micro_loss
    from ddk.cache.train.student import load_student
    from ddk.cache.train.training_cache import open_cache

    reader = open_cache(train_cache)
    batch = read_plan(reader, reader.domains,
                      DomainSampler([reader.num_sequences(d, "train") for d in reader.domains],
                                    [1, 1, 1], seed=0).draw(3))
    cfg = small_train_config(train_cache, tiny_student_dir, "unused", method=method, gamma=0.3,
               temperature=2.0)
    model, _ = load_student(tiny_student_dir, reader)
    loss, ce, kl = micro_loss(model, batch, cfg, torch.device("cpu"), None)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    # reference: full-vocabulary CE + T^2 * KL over the k cached ids plus one tail bucket
    T = 2.0
    ids = batch.input_ids
    z = model(input_ids=ids[:, :-1]).logits.flatten(0, 1).double()
    labels = ids[:, 1:].reshape(-1)
    ref_ce = F.cross_entropy(z, labels)
    k = batch.topk_ids.shape[-1]
    top, lp = batch.topk_ids.view(-1, k), batch.topk_logprobs.view(-1, k).double()
    # tempered (k + 1)-outcome teacher: top-k and tail bucket tempered together
    tail = batch.tail_logmass.view(-1).double()
    joint = torch.log_softmax(torch.cat([lp, tail[:, None]], 1) / T, dim=1)
    logq = torch.log_softmax(z / T, dim=1)
    logq_top = logq.gather(1, top)
    logq_tail = torch.log1p(-logq_top.exp().sum(1).clamp(max=1 - 1e-12))
    p = joint.exp()
    ref_kl = ((p[:, :k] * (joint[:, :k] - logq_top)).sum(1)
              + p[:, k] * (joint[:, k] - logq_tail)).mean()
    gamma = 0.0 if method == "cpt" else 0.3
    ref = ref_ce + gamma * T * T * ref_kl
    assert float(kl) == pytest.approx(float(ref_kl.detach()), rel=1e-4)
    assert float(ce) == pytest.approx(float(ref_ce.detach()), rel=1e-4)
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-4)
    ref.float().backward()
    for n, p_ in model.named_parameters():
        torch.testing.assert_close(grads[n], p_.grad, rtol=1e-3, atol=1e-5, msg=n)


# -- clear errors before training ------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    ({"method": "dkd"}, "--method"),
    ({"mixture": "zipf"}, "--kd-mixture"),
    ({"alpha": 1.5}, "--alpha"),
    ({"interval": 0}, "--interval"),
    ({"max_steps": 5, "max_tokens": 100}, "not both"),
    ({"lr": 1e-5, "min_lr": 1e-4}, "min-lr"),
    ({"temperature": 0.0}, "--temperature"),
    ({"grad_clip": -1.0}, "--grad-clip"),
    ({"bf16": True}, "CUDA"),
])
def test_bad_options_fail_before_training(train_cache, tiny_student_dir, tmp_path, kw, match):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.loop import train

    with pytest.raises(ConfigError, match=match):
        train(small_train_config(train_cache, tiny_student_dir, tmp_path / "r", **kw))
    assert not (tmp_path / "r" / "checkpoints").exists()
    assert not (tmp_path / "r" / "model").exists()


def test_student_cache_mismatch_fails_before_training(train_cache, tiny_student_dir, tmp_path):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.loop import train

    short = student_variant(tiny_student_dir, tmp_path / "short", max_position_embeddings=16)
    with pytest.raises(ConfigError, match="positions"):
        train(small_train_config(train_cache, short, tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_existing_run_needs_resume_and_resume_needs_same_options(train_cache, tiny_student_dir,
                                                                 tmp_path):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.loop import train

    out = tmp_path / "r"
    train(small_train_config(train_cache, tiny_student_dir, out, max_steps=4, checkpoint_every=2))
    with pytest.raises(ConfigError, match="--resume"):
        train(small_train_config(train_cache, tiny_student_dir, out, max_steps=4))
    with pytest.raises(ConfigError, match="batch_size=2"):
        train(small_train_config(train_cache, tiny_student_dir, out, max_steps=4, batch_size=3,
                                 resume=True))


# -- kill / resume identity (subprocesses) ----------------------------------------------------
RESUME_OPTS = ["--method", "ddk", "--max-steps", "40", "--interval", "4", "--grad-accum", "2",
               "--batch-size", "2", "--val-sequences", "2", "--lr", "1e-3", "--min-lr", "1e-4",
               "--checkpoint-every", "3", "--device", "cpu", "-q", "--json"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1"}


def _train_cmd(cache: Path, student: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ddk.cli.main", "train-student", "--cache", str(cache),
            "--student", str(student), "--out", str(out), *RESUME_OPTS, *extra]


def _run_until_checkpoint(cmd: list[str], out: Path, sig: int) -> subprocess.CompletedProcess:
    """Start a run, send `sig` as soon as its first checkpoint exists, return the result."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / "latest").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            o, e = proc.communicate()
            pytest.fail(f"run ended (rc {proc.returncode}) before its first checkpoint:\n{e}")
        time.sleep(0.005)
    proc.send_signal(sig)
    o, e = proc.communicate(timeout=300)
    assert not (out / "model").exists(), "the run finished before the signal: make it longer"
    return subprocess.CompletedProcess(cmd, proc.returncode, o, e)


@pytest.fixture(scope="module")
def reference_run(train_cache, dropout_student, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    r = subprocess.run(_train_cmd(train_cache, dropout_student, out), env=_env(),
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr
    return out


def _assert_resumed_equals_reference(out: Path, ref: Path) -> None:
    _assert_same_weights(out / "model", ref / "model")
    steps = [r["step"] for r in _records(out, "step")]
    assert steps == list(range(40))  # each step logged once, across the kill
    got, want = _records(out, "interval"), _records(ref, "interval")
    assert [r["step"] for r in got] == [r["step"] for r in want]
    assert [r["weights"] for r in got] == [r["weights"] for r in want]
    assert [r["loss"] for r in _records(out, "step")] == [r["loss"] for r in
                                                          _records(ref, "step")]


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(train_cache, dropout_student,
                                                          reference_run, tmp_path):
    out = tmp_path / "run"
    killed = _run_until_checkpoint(_train_cmd(train_cache, dropout_student, out), out,
                                   signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    ckpt = (out / "checkpoints" / "latest").read_text().strip()
    r = subprocess.run(_train_cmd(train_cache, dropout_student, out, "--resume"), env=_env(),
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr
    assert int(ckpt.split("-")[1]) >= 3
    _assert_resumed_equals_reference(out, reference_run)


@pytest.mark.slow
def test_sigterm_checkpoints_exits_143_and_resumes_identically(train_cache, dropout_student,
                                                               reference_run, tmp_path):
    out = tmp_path / "run"
    stopped = _run_until_checkpoint(_train_cmd(train_cache, dropout_student, out), out,
                                    signal.SIGTERM)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert "SIGTERM" in stopped.stderr and "--resume" in stopped.stderr
    last_logged = _records(out, "step")[-1]["step"]
    ckpt = (out / "checkpoints" / "latest").read_text().strip()
    assert int(ckpt.split("-")[1]) == last_logged + 1  # checkpoint of the step it finished
    r = subprocess.run(_train_cmd(train_cache, dropout_student, out, "--resume"), env=_env(),
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr
    _assert_resumed_equals_reference(out, reference_run)


# -- DDP --------------------------------------------------------------------------------------
DDP_SCRIPT = """
import json, os, sys, torch
from ddk.cache.train.config import TrainConfig
from ddk.cache.train.loop import train
res = train(TrainConfig(**json.loads(sys.argv[1])))
# every rank saves the weights it ended with, so the test can compare the replicas
torch.save(res.model.state_dict(), os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.pt"))
print("RANK_DONE", os.environ["RANK"], res.steps, flush=True)
"""


@pytest.mark.slow
def test_ddp_two_gloo_processes(train_cache, tiny_student_dir, tmp_path):
    from ddk.cache.train.evaluate import evaluate_domains
    from ddk.cache.train.student import load_student
    from ddk.cache.train.training_cache import open_cache

    out = tmp_path / "run"
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    cfg = {"cache": str(train_cache), "student": str(tiny_student_dir), "out": str(out), "max_steps": 4,
               "interval": 2, "val_sequences": 3, "batch_size": 2, "lr": 1e-3, "min_lr": 1e-4,
               "checkpoint_every": 2, "progress": False, "device": "cpu"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", "2", str(script), json.dumps(cfg), str(tmp_path)],
                       env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("RANK_DONE") == 2

    # replicas end identical, and equal to what rank 0 saved
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    saved = _weights(out / "model")
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    for k in saved:
        assert torch.equal(saved[k], w0[k]), k

    # metrics written once (by rank 0); tokens count both ranks
    assert [r["step"] for r in _records(out, "step")] == [0, 1, 2, 3]
    assert [r["step"] for r in _records(out, "interval")] == [0, 2, 4]
    assert _records(out, "step")[-1]["tokens"] == 4 * 2 * 2 * 32

    # each rank draws its own stream: the checkpoint holds two different sampler states
    ck = torch.load(out / "checkpoints" / "step-00000002" / "state.pt", weights_only=False)
    s0, s1 = ck["samplers"]
    assert s0["rank"] == 0 and s1["rank"] == 1
    assert not torch.equal(s0["domain_gen"], s1["domain_gen"])

    # all-reduced validation perplexity (each rank scored a share) == single-process value
    reader = open_cache(train_cache)
    model, _ = load_student(tiny_student_dir, reader)
    single = evaluate_domains(model, reader, max_sequences=3)
    first = _records(out, "interval")[0]
    assert first["ppl_student"] == pytest.approx([p.student_ppl for p in single], rel=1e-5)
