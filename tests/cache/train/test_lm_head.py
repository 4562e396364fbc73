"""The fused LM-head path: same loss and gradients as the unfused one, and when it is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support.students import small_train_config, student_variant, tied_student

pytest.importorskip("transformers")


def _qwen2_tied(vocab_size: int) -> torch.nn.Module:
    """A tiny Qwen2 with tied embeddings, built in memory.

    (Saved next to the tiny tokenizer, AutoTokenizer would load it as Qwen2Tokenizer, which
    adds a token, so the student check would rightly refuse it; the loss does not care.)
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=512, tie_word_embeddings=True)
    torch.manual_seed(3)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(5.0)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return model


@pytest.fixture(scope="session")
def tied_llama_student(tiny_student_dir, tmp_path_factory) -> Path:
    """The tiny llama student with tied input/output embeddings (one weight)."""
    return tied_student(tiny_student_dir, tmp_path_factory.mktemp("tied-student") / "s")


@pytest.fixture(scope="session")
def softcapped_student(tiny_student_dir, tmp_path_factory) -> Path:
    """The tiny llama student with logit soft-capping declared in its config."""
    return student_variant(tiny_student_dir, tmp_path_factory.mktemp("softcap-student") / "s",
                           final_logit_softcapping=30.0)


def _batch(reader):
    from ddk.cache.train.sampler import DomainSampler, read_plan

    sizes = [reader.num_sequences(d, "train") for d in reader.domains]
    return read_plan(reader, reader.domains, DomainSampler(sizes, [1, 1, 1], seed=0).draw(3))


@pytest.mark.parametrize("arch", ["llama", "qwen2-tied"])
@pytest.mark.parametrize("kw", [{"method": "ddk", "gamma": 0.3, "temperature": 2.0},
                                {"method": "cpt"},
                                {"method": "kd", "kd_tail": "renorm", "kd_topk": 4}])
def test_fused_micro_loss_and_gradients_equal_the_unfused_ones(
        train_cache, tiny_student_dir, arch, kw):
    from ddk.cache.train.lm_head import fused_head_problem, install_fused_forward
    from ddk.cache.train.step import micro_loss
    from ddk.cache.train.student import load_student
    from ddk.cache.train.training_cache import open_cache

    reader = open_cache(train_cache)
    batch = _batch(reader)
    cfg = small_train_config(train_cache, tiny_student_dir, "unused", **kw)
    model = (load_student(tiny_student_dir, reader)[0] if arch == "llama"
             else _qwen2_tied(reader.vocab_size))
    assert fused_head_problem(model) is None
    results, grads = [], []
    install_fused_forward(model)
    for fused in (False, True):
        model.zero_grad()
        loss, ce, kl = micro_loss(model, batch, cfg, torch.device("cpu"), None, fused=fused)
        loss.backward()
        results.append(torch.stack([loss.detach(), ce, kl]))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("tied", [False, True])
def test_training_fused_and_unfused_gives_the_same_run(train_cache, tiny_student_dir,
                                                       tied_llama_student, tmp_path, tied):
    from ddk.cache.train.loop import train
    from ddk.cache.train.metrics import read_metrics
    from safetensors.torch import load_file

    student = tied_llama_student if tied else tiny_student_dir
    if tied:  # the head really is the embedding, so its gradient has two sources
        from transformers import AutoModelForCausalLM

        m = AutoModelForCausalLM.from_pretrained(student)
        assert m.get_output_embeddings().weight is m.get_input_embeddings().weight
    runs = {}
    for fused in (True, False):
        out = tmp_path / f"fused-{fused}"
        res = train(small_train_config(train_cache, student, out, fused_lm_head=fused))
        assert res.summary["fused_lm_head"] is fused
        records = read_metrics(out / "metrics.jsonl")
        runs[fused] = ([r["loss"] for r in records if r["type"] == "step"],
                       [r["weights"] for r in records if r["type"] == "interval"],
                       load_file(str(out / "model" / "model.safetensors")))
    (loss_f, w_f, m_f), (loss_u, w_u, m_u) = runs[True], runs[False]
    assert len(loss_f) == 6
    assert loss_f == pytest.approx(loss_u, rel=1e-5)
    assert len(w_f) == 3  # at steps 0, 3 and the final evaluation
    for a, b in zip(w_f, w_u):
        assert a == pytest.approx(b, abs=1e-6)
    for name in m_u:
        torch.testing.assert_close(m_f[name], m_u[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_plain_linear_head_is_fused_by_default(train_cache, tiny_student_dir, tmp_path):
    from ddk.cache.train.loop import train

    res = train(small_train_config(train_cache, tiny_student_dir, tmp_path / "run", max_steps=1))
    assert res.summary["fused_lm_head"] is True


def test_problems_are_named_by_config_by_bias_and_by_a_forward_that_rescales(
        train_cache, tiny_student_dir, softcapped_student):
    from ddk.cache.train.lm_head import fused_head_problem
    from ddk.cache.train.student import load_student
    from ddk.cache.train.training_cache import open_cache

    reader = open_cache(train_cache)
    capped, _ = load_student(softcapped_student, reader)
    assert "final_logit_softcapping=30.0" in fused_head_problem(capped)

    biased, _ = load_student(tiny_student_dir, reader)
    old = biased.lm_head
    biased.lm_head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    assert "bias" in fused_head_problem(biased)

    scaled, _ = load_student(tiny_student_dir, reader)
    plain_forward = scaled.forward

    def forward_that_scales(*args, **kwargs):  # an architecture the config check cannot know
        out = plain_forward(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out

    scaled.forward = forward_that_scales
    scaled.train()
    assert "forward does more than its head" in fused_head_problem(scaled)
    assert scaled.training  # the probe restores train mode


def test_auto_falls_back_with_one_log_line_and_forced_on_is_refused(
        train_cache, softcapped_student, tmp_path, caplog):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.loop import train

    with caplog.at_level("WARNING", logger="ddk.cache.train.lm_head"):
        res = train(small_train_config(train_cache, softcapped_student, tmp_path / "auto",
                                       max_steps=1))
    assert res.summary["fused_lm_head"] is False
    lines = [r.getMessage() for r in caplog.records if r.name == "ddk.cache.train.lm_head"]
    assert len(lines) == 1 and "final_logit_softcapping" in lines[0]
    with pytest.raises(ConfigError, match="--no-fused-lm-head"):
        train(small_train_config(train_cache, softcapped_student, tmp_path / "forced", max_steps=1,
                   fused_lm_head=True))
    assert not (tmp_path / "forced").exists()


def test_an_online_teacher_needs_the_full_logits(tiny_student_dir):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.lm_head import ONLINE_TEACHER_NEEDS_LOGITS as ONLINE
    from ddk.cache.train.lm_head import use_fused_head
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_student_dir)
    assert use_fused_head(None, model) is True
    assert use_fused_head(None, model, blocker=ONLINE, say=False) is False
    assert use_fused_head(False, model) is False
    with pytest.raises(ConfigError, match="online-teacher"):
        use_fused_head(True, model, blocker=ONLINE)


def test_cli_forced_fused_head_on_an_unfit_student_is_one_line(train_cache, softcapped_student,
                                                               tmp_path):
    from click.testing import CliRunner
    from ddk.cli.main import cli

    res = CliRunner().invoke(cli, [
        "train-student", "--cache", str(train_cache), "--student", str(softcapped_student),
        "--out", str(tmp_path / "run"), "--max-steps", "1", "--device", "cpu", "-q",
        "--fused-lm-head"])
    assert res.exit_code != 0
    assert "Traceback" not in res.output
    assert "final_logit_softcapping" in res.output and "--no-fused-lm-head" in res.output
