"""DDKTrainer (transformers.Trainer): the same run as `ddk train-student`, logging through the
Trainer, save_model, refusals, kill + resume_from_checkpoint identity, and 2 gloo processes.

FSDP through the Trainer is not tested here: accelerate 1.15 turns FSDP on only for GPU-like
devices and silently runs DDP on CPU, so it is covered by bench/gpu (docs/trainer.md); the
fused head inside an FSDP2 root forward is tested on CPU through `ddk train-student --fsdp`.
"""

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
from support.students import small_train_config, student_variant

#: options of the equivalence run, as TrainConfig fields (CLI) and as TrainingArguments
STEPS, INTERVAL, BATCH, ACCUM, LR, MIN_LR = 6, 3, 2, 2, 1e-3, 1e-4


def _args_kw(out: Path, **kw) -> dict:
    """TrainingArguments (as keywords) equal to small_train_config's schedule and optimizer,
    with `warmup=0` there: cosine from LR to MIN_LR, AdamW, clip 1.0, no weight decay."""
    return {"output_dir": str(out), "max_steps": STEPS, "per_device_train_batch_size": BATCH,
            "gradient_accumulation_steps": ACCUM, "learning_rate": LR,
            "lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr": MIN_LR},
            "warmup_steps": 0, "max_grad_norm": 1.0, "weight_decay": 0.0,
            "optim": "adamw_torch", "seed": 0, "logging_steps": 1, "save_strategy": "no",
            "report_to": [], "use_cpu": True, "disable_tqdm": True, **kw}


def _args(out: Path, **kw):
    from transformers import TrainingArguments

    return TrainingArguments(**_args_kw(out, **kw))


def _student(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
            AutoTokenizer.from_pretrained(path))


def _trainer(cache: Path, student: Path, out: Path, *, ddk: dict | None = None,
             callbacks: list | None = None, **args_kw):
    """A DDKTrainer; `ddk` overrides its distillation options, `args_kw` TrainingArguments."""
    from ddk.cache.train.hf_trainer import DDKTrainer

    model, tok = _student(student)
    return DDKTrainer(model=model, args=_args(out, **args_kw), cache=str(cache),
                      processing_class=tok, callbacks=callbacks,
                      **{"interval": INTERVAL, "val_sequences": 3, **(ddk or {})})


@pytest.mark.parametrize("fused", [True, False])
def test_ddk_trainer_is_the_same_run_as_train_student(train_cache, tiny_student_dir, tmp_path,
                                                      fused):
    """Same seed and options: same weight trajectory, per-step losses and final weights.

    Tolerances: loss, grad norm and the weights exactly equal (measured: the final weights
    are bitwise identical); ce / kl rel 1e-6 (the Trainer sums them in float64, the CLI's
    loop in float32: they differ in the 8th digit).
    """
    from ddk.cache.train.loop import train
    from ddk.cache.train.metrics import read_metrics

    cli = train(small_train_config(train_cache, tiny_student_dir, tmp_path / "cli",
                                   max_steps=STEPS, interval=INTERVAL, batch_size=BATCH,
                                   grad_accum=ACCUM, lr=LR, min_lr=MIN_LR, warmup=0,
                                   fused_lm_head=fused))
    records = read_metrics(tmp_path / "cli" / "metrics.jsonl")
    cli_steps = [r for r in records if r["type"] == "step"]

    trainer = _trainer(train_cache, tiny_student_dir, tmp_path / "hf",
                       ddk={"fused_lm_head": fused})
    trainer.train()
    assert trainer.ddk_fused is fused
    hf_steps = [r for r in trainer.state.log_history if "loss" in r]
    assert len(hf_steps) == len(cli_steps) == STEPS
    for a, b in zip(cli_steps, hf_steps, strict=True):
        assert b["step"] == a["step"] + 1  # the Trainer logs after the step, the CLI before
        assert b["loss"] == a["loss"] and b["grad_norm"] == a["grad_norm"]
        assert b["learning_rate"] == pytest.approx(a["lr"], rel=1e-12)
        assert b["ce"] == pytest.approx(a["ce"], rel=1e-6)
        assert b["kl"] == pytest.approx(a["kl"], rel=1e-6)
    hist = trainer.ddk_mixture.state.history
    assert [h["step"] for h in hist] == [h["step"] for h in cli.history] == [0, 3]
    assert [h["weights"] for h in hist] == [h["weights"] for h in cli.history]
    assert [h["ppl_student"] for h in hist] == [h["ppl_student"] for h in cli.history]
    mine, theirs = trainer.model.state_dict(), cli.model.state_dict()
    for k, v in theirs.items():
        assert torch.equal(mine[k], v), k


def test_weights_and_perplexities_reach_the_trainers_loggers(train_cache, tiny_student_dir,
                                                             tmp_path):
    from transformers import TrainerCallback

    seen: list[dict] = []

    class Spy(TrainerCallback):  # what TensorBoard / W&B callbacks receive: on_log's logs
        def on_log(self, args, state, control, logs=None, **kw):
            seen.append(dict(logs))

    trainer = _trainer(train_cache, tiny_student_dir, tmp_path / "hf", callbacks=[Spy()])
    trainer.train()
    intervals = [r for r in seen if "ddk/weight/code" in r]
    assert len(intervals) == 2
    for rec, hist in zip(intervals, trainer.ddk_mixture.state.history, strict=True):
        assert [rec[f"ddk/weight/{d}"] for d in ("code", "prose", "math")] == hist["weights"]
        assert rec["ddk/ratio/math"] == pytest.approx(
            hist["ppl_student"][2] / hist["ppl_teacher"][2])
    losses = [r for r in seen if "loss" in r]
    assert len(losses) == STEPS and all(r["kl"] > 0 and r["ce"] > 0 for r in losses)

    metrics = trainer.evaluate()
    assert set(metrics) >= {"eval_code_ppl", "eval_prose_ratio", "eval_math_ppl"}
    assert seen[-1]["eval_code_ppl"] == metrics["eval_code_ppl"]


def test_save_model_is_a_plain_save_pretrained_directory(train_cache, tiny_student_dir,
                                                         tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer = _trainer(train_cache, tiny_student_dir, tmp_path / "hf", max_steps=2)
    trainer.train()
    trainer.save_model(str(tmp_path / "model"))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    AutoTokenizer.from_pretrained(tmp_path / "model")
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    ids = torch.arange(8).unsqueeze(0)  # the installed fused forward is not saved with it
    assert loaded(input_ids=ids).logits.shape == (1, 8, loaded.config.vocab_size)


def test_one_epoch_is_one_pass_over_the_cache(train_cache, tiny_student_dir, tmp_path):
    from ddk.cache.train.training_cache import open_cache

    reader = open_cache(train_cache)
    tokens = sum(reader.num_tokens(d, "train") for d in reader.domains)
    trainer = _trainer(train_cache, tiny_student_dir, tmp_path / "hf", max_steps=-1,
                       num_train_epochs=1, ddk={"interval": 100})
    out = trainer.train()
    assert out.global_step == -(-tokens // (BATCH * ACCUM * reader.seq_len))


@pytest.mark.parametrize("kw,match", [
    ({"train_dataset": [1]}, "train_dataset"),
    ({"model_init": lambda: None}, "model_init"),
    ({"method": "dkd"}, "--method"),
    ({"kd_topk": 99}, "kd-topk 99 exceeds the cache's k = 8"),
    ({"alpha": 2.0}, "--alpha"),
])
def test_bad_arguments_are_one_clear_error(train_cache, tiny_student_dir, tmp_path, kw, match):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.hf_trainer import DDKTrainer

    model, tok = _student(tiny_student_dir)
    with pytest.raises(ConfigError, match=match):
        DDKTrainer(model=model, args=_args(tmp_path / "hf"), cache=str(train_cache),
                   processing_class=tok, **kw)


def test_a_student_with_another_tokenizer_is_refused(train_cache, tiny_student_dir, tmp_path):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.hf_trainer import DDKTrainer

    model, tok = _student(tiny_student_dir)
    tok.add_tokens(["<extra>"])
    with pytest.raises(ConfigError, match="tokenizer"):
        DDKTrainer(model=model, args=_args(tmp_path / "hf"), cache=str(train_cache),
                   processing_class=tok)


def test_zero3_turns_the_fused_head_off_with_one_log_line(train_cache, tiny_student_dir,
                                                          tmp_path, monkeypatch, caplog):
    """The wiring of the ZeRO-3 fallback (DeepSpeed itself does not run on this CPU)."""
    from ddk.cache.train.hf_trainer import DDKTrainer

    monkeypatch.setattr(DDKTrainer, "_zero3", lambda self: True)
    with caplog.at_level("WARNING", logger="ddk.cache.train.lm_head"):
        trainer = _trainer(train_cache, tiny_student_dir, tmp_path / "hf", max_steps=1)
    assert trainer.ddk_fused is False
    assert any("ZeRO-3" in r.getMessage() for r in caplog.records)


def test_resume_refuses_a_checkpoint_without_ddk_state_or_with_other_options(
        train_cache, tiny_student_dir, tmp_path):
    from ddk.cache.errors import ConfigError

    out = tmp_path / "hf"
    _trainer(train_cache, tiny_student_dir, out, max_steps=2, save_strategy="steps",
             save_steps=2).train()
    ckpt = out / "checkpoint-2"
    assert (ckpt / "ddk_state.pt").exists()
    with pytest.raises(ConfigError, match="interval=3"):
        _trainer(train_cache, tiny_student_dir, out, max_steps=4,
                 ddk={"interval": 2}).train(resume_from_checkpoint=str(ckpt))
    (ckpt / "ddk_state.pt").unlink()
    with pytest.raises(ConfigError, match="no ddk_state.pt"):
        _trainer(train_cache, tiny_student_dir, out, max_steps=4).train(
            resume_from_checkpoint=str(ckpt))
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        _trainer(train_cache, tiny_student_dir, out, max_steps=4).train(
            resume_from_checkpoint=True)


# -- subprocesses: kill + resume, two processes ---------------------------------------------------
HF_SCRIPT = """
import json, os, sys, torch
from ddk.cache.train.hf_trainer import DDKTrainer
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments
opts = json.loads(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(opts["student"], dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(opts["student"])
trainer = DDKTrainer(model=model, args=TrainingArguments(**opts["args"]), cache=opts["cache"],
                     processing_class=tok, **opts["ddk"])
trainer.train(resume_from_checkpoint=opts.get("resume"))
rank = int(os.environ.get("RANK", "0"))
torch.save(trainer.model.state_dict(), os.path.join(opts["args"]["output_dir"], f"rank{rank}.pt"))
with open(os.path.join(opts["args"]["output_dir"], f"rank{rank}.json"), "w") as f:
    json.dump({"history": trainer.ddk_mixture.state.history,
               "loss": [r["loss"] for r in trainer.state.log_history if "loss" in r]}, f)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1"}


def _opts(cache: Path, student: Path, out: Path, **args_kw) -> dict:
    """HF_SCRIPT's argument: the student, the cache, TrainingArguments and DDK options."""
    return {"student": str(student), "cache": str(cache), "args": _args_kw(out, **args_kw),
            "ddk": {"interval": INTERVAL, "val_sequences": 3}}


def _run(script: Path, opts: dict, *, nproc: int = 1) -> subprocess.CompletedProcess:
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(nproc)] if nproc > 1 else [sys.executable])
    r = subprocess.run([*launch, str(script), json.dumps(opts)], env=_env(),
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture
def hf_script(tmp_path) -> Path:
    path = tmp_path / "hf_train.py"
    path.write_text(HF_SCRIPT)
    return path


@pytest.mark.slow
def test_sigkill_then_resume_from_checkpoint_matches_an_uninterrupted_run(
        train_cache, tiny_student_dir, tmp_path, hf_script):
    """Dropout on, so the Trainer's RNG restore matters too; killed at any point after the
    first complete checkpoint, resumed with resume_from_checkpoint=True."""
    student = student_variant(tiny_student_dir, tmp_path / "dropout", attention_dropout=0.1)
    long = {"max_steps": 16, "save_strategy": "steps", "save_steps": 3}
    ref = _opts(train_cache, student, tmp_path / "ref", **long)
    _run(hf_script, ref)

    out = tmp_path / "run"
    opts = _opts(train_cache, student, out, **long)
    proc = subprocess.Popen([sys.executable, str(hf_script), json.dumps(opts)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint-3" / "trainer_state.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"run ended before its first checkpoint:\n{proc.communicate()[1]}")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not (out / "rank0.pt").exists(), "the run finished before the kill: make it longer"
    _run(hf_script, {**opts, "resume": True})

    want = torch.load(tmp_path / "ref" / "rank0.pt", weights_only=True)
    got = torch.load(out / "rank0.pt", weights_only=True)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    ref_log = json.loads((tmp_path / "ref" / "rank0.json").read_text())
    run_log = json.loads((out / "rank0.json").read_text())
    assert run_log["history"] == ref_log["history"]  # weights, ppl: the whole trajectory
    assert run_log["loss"] == ref_log["loss"]  # log_history: restored steps + the resumed ones
    assert len(run_log["loss"]) == 16


DDP_CLI_SCRIPT = """
import json, os, sys, torch
from ddk.cache.train.config import TrainConfig
from ddk.cache.train.loop import train
res = train(TrainConfig(**json.loads(sys.argv[1])))
torch.save(res.model.state_dict(), os.path.join(sys.argv[2], f"cli-rank{os.environ['RANK']}.pt"))
"""


@pytest.mark.slow
def test_two_gloo_processes_match_train_student_under_torchrun(train_cache, tiny_student_dir,
                                                               tmp_path, hf_script):
    from ddk.cache.train.metrics import read_metrics

    out = tmp_path / "hf"
    _run(hf_script, _opts(train_cache, tiny_student_dir, out), nproc=2)
    logs = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    weights = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert logs[0]["history"] == logs[1]["history"]  # all-reduced ppl: the same weights
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k

    cli_script = tmp_path / "cli_train.py"
    cli_script.write_text(DDP_CLI_SCRIPT)
    cfg = vars(small_train_config(train_cache, tiny_student_dir, tmp_path / "cli",
                                  max_steps=STEPS, interval=INTERVAL, batch_size=BATCH,
                                  grad_accum=ACCUM, lr=LR, min_lr=MIN_LR, warmup=0))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", "2", str(cli_script), json.dumps(cfg),
                        str(tmp_path)], env=_env(), capture_output=True, text=True,
                       timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    records = read_metrics(tmp_path / "cli" / "metrics.jsonl")
    cli_iv = [x for x in records if x["type"] == "interval"][:2]
    assert [x["weights"] for x in cli_iv] == [h["weights"] for h in logs[0]["history"]]
    cli_loss = [x["loss"] for x in records if x["type"] == "step"]
    assert logs[0]["loss"] == pytest.approx(cli_loss, rel=1e-6)  # mean over ranks, both
    cli_weights = torch.load(tmp_path / "cli-rank0.pt", weights_only=True)
    for k in cli_weights:
        torch.testing.assert_close(weights[0][k], cli_weights[k], rtol=1e-5, atol=1e-7, msg=k)


def test_a_saturated_reweighting_is_logged_as_a_warning(train_cache, tiny_student_dir, tmp_path,
                                                         caplog):
    from support.students import far_behind_student

    far = far_behind_student(tiny_student_dir, tmp_path / "far")
    with caplog.at_level("WARNING", logger="ddk.cache.train.hf_trainer"):
        trainer = _trainer(train_cache, far, tmp_path / "hf", max_steps=1)
        trainer.train()
    warned = [r.getMessage() for r in caplog.records if "discrepancy-driven" in r.getMessage()]
    assert warned and warned[0].startswith("step 0: ") and "one-hot" in warned[0]
    assert trainer.ddk_mixture.state.history[0]["saturation"]["saturated"] is True


def test_ddk_trainer_on_a_sampled_cache_is_the_same_run_as_train_student(
        sampled_train_cache, tiny_student_dir, tmp_path):
    """The Trainer picks the target kind from the cache as train-student does: same losses
    and final weights on a sampled-target cache, through the fused LM head; and it refuses
    the top-k shaping options there."""
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.hf_trainer import DDKTrainer
    from ddk.cache.train.loop import train
    from ddk.cache.train.metrics import read_metrics

    cli = train(small_train_config(sampled_train_cache, tiny_student_dir, tmp_path / "cli",
                                   max_steps=3, interval=INTERVAL, batch_size=BATCH,
                                   grad_accum=ACCUM, lr=LR, min_lr=MIN_LR, warmup=0,
                                   fused_lm_head=True))
    cli_steps = [r for r in read_metrics(tmp_path / "cli" / "metrics.jsonl")
                 if r["type"] == "step"]
    trainer = _trainer(sampled_train_cache, tiny_student_dir, tmp_path / "hf", max_steps=3,
                       ddk={"fused_lm_head": True})
    trainer.train()
    hf_steps = [r for r in trainer.state.log_history if "loss" in r]
    assert [b["loss"] for b in hf_steps] == [a["loss"] for a in cli_steps]
    assert all(a["kl"] > 0 for a in cli_steps)
    mine, theirs = trainer.model.state_dict(), cli.model.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in theirs.items())
    model, tok = _student(tiny_student_dir)
    with pytest.raises(ConfigError, match="sampled target"):
        DDKTrainer(model=model, args=_args(tmp_path / "bad"), cache=str(sampled_train_cache),
                   processing_class=tok, kd_topk=2)
