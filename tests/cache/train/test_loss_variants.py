"""The trainer's loss variants and mixtures (commit c051f61), checked against independent maths.

- full_vocab_kd_loss == sparse_kl_loss with the whole vocabulary as "top-k", and a hand KL;
- truncate_topk == a top-k' built directly from the full distribution;
- explicit_weights / parse_weights and the CLI's --kd-mixture DOMAIN=W;
- wiring of kd_tail / kd_topk / online_teacher: the step-0 kl a run logs equals the KL of the
  variant recomputed here in float64 from the very batch the run drew (spied on micro_loss);
- evaluate_domains(first=...) scores the validation sequences from `first` on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from support.students import small_train_config


# -- 1. full_vocab_kd_loss ---------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("pad", [0, 5])  # student head wider than the teacher's vocabulary
def test_full_vocab_loss_equals_sparse_loss_with_the_whole_vocab_as_topk(temperature, pad):
    from ddk.cache.train.full_vocab_kd import full_vocab_kd_loss
    from ddk.kernels import sparse_kl_loss

    g = torch.Generator().manual_seed(int(10 * temperature) + pad)
    n, v = 7, 40
    z = torch.randn(n, v + pad, generator=g, dtype=torch.float64) * 3
    t_logits = torch.randn(n, v, generator=g, dtype=torch.float64) * 4
    labels = torch.randint(0, v, (n,), generator=g)
    kw = {"kl_weight": 0.3, "ce_weight": 1.0, "temperature": temperature}

    zf = z.float().requires_grad_()
    loss, kl, ce = full_vocab_kd_loss(zf, t_logits.float(), labels, **kw)
    loss.backward()

    # the whole vocabulary as "top-k", sorted by teacher log-prob, empty tail (-inf)
    t_lp = torch.log_softmax(t_logits, dim=-1)
    lp_sorted, ids = t_lp.sort(dim=-1, descending=True)
    tail = torch.full((n,), float("-inf"), dtype=torch.float64)
    zd = z.clone().requires_grad_()
    ref_loss, ref_kl, ref_ce = sparse_kl_loss(zd, ids, lp_sorted, tail, labels,
                                              return_components=True, **kw)
    ref_loss.backward()

    assert float(kl) > 0.1  # a real distance, not a trivial 0 == 0
    assert float(loss.detach()) == pytest.approx(float(ref_loss.detach()), rel=1e-5)
    assert float(kl) == pytest.approx(float(ref_kl), rel=1e-5)
    assert float(ce) == pytest.approx(float(ref_ce), rel=1e-5)
    torch.testing.assert_close(zf.grad.double(), zd.grad, rtol=1e-4, atol=1e-7)
    assert not kl.requires_grad and not ce.requires_grad


def test_full_vocab_loss_on_a_hand_computed_2x3_example():
    from ddk.cache.train.full_vocab_kd import full_vocab_kd_loss

    p1, p2 = [0.5, 0.25, 0.25], [1 / 3] * 3           # teacher rows
    q1, q2 = [1 / 3] * 3, [0.5, 0.25, 0.25]           # student rows
    teacher = torch.tensor([p1, p2]).log()
    student = torch.tensor([q1, q2]).log() + 1.7      # logits: any shift per row
    labels = torch.tensor([0, 2])

    def kl(p, q):
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))

    def temper(p, t):
        w = [pi ** (1 / t) for pi in p]
        return [wi / sum(w) for wi in w]

    ce = (math.log(3) + math.log(4)) / 2              # -log q1[0], -log q2[2]
    for t in (1.0, 2.0):
        want_kl = (kl(temper(p1, t), temper(q1, t)) + kl(temper(p2, t), temper(q2, t))) / 2
        loss, got_kl, got_ce = full_vocab_kd_loss(student, teacher, labels, kl_weight=0.5,
                                                  ce_weight=2.0, temperature=t)
        assert float(got_kl) == pytest.approx(want_kl, rel=1e-5)
        assert float(got_ce) == pytest.approx(ce, rel=1e-6)
        assert float(loss) == pytest.approx(2.0 * ce + 0.5 * t * t * want_kl, rel=1e-5)
    assert kl(p1, q1) == pytest.approx(0.5 * math.log(1.125))  # the example is what it says


def test_full_vocab_loss_ignores_rows_labelled_ignore_index_in_both_terms():
    from ddk.cache.train.full_vocab_kd import full_vocab_kd_loss

    torch.manual_seed(0)
    student, teacher = torch.randn(4, 7), torch.randn(4, 7)
    labels = torch.tensor([1, -100, 3, -100])
    keep = labels != -100
    _, kl, ce = full_vocab_kd_loss(student, teacher, labels, kl_weight=1.0)
    _, kl_kept, ce_kept = full_vocab_kd_loss(student[keep], teacher[keep], labels[keep],
                                             kl_weight=1.0)
    assert float(kl) == pytest.approx(float(kl_kept), rel=1e-6)
    assert float(ce) == pytest.approx(float(ce_kept), rel=1e-6)


def test_full_vocab_loss_refuses_a_student_narrower_than_the_teacher():
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.full_vocab_kd import full_vocab_kd_loss

    with pytest.raises(ConfigError, match="do not cover"):
        full_vocab_kd_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long),
                           kl_weight=1.0)


# -- 2. truncate_topk --------------------------------------------------------------------------
@pytest.mark.parametrize("k_new", [1, 3, 10])
def test_truncate_topk_equals_a_topk_built_directly(k_new):
    from ddk.cache.train.step import truncate_topk

    g = torch.Generator().manual_seed(k_new)
    n, v, k = 6, 50, 10
    lp_full = torch.log_softmax(torch.randn(n, v, generator=g, dtype=torch.float64) * 3, dim=-1)
    lp_sorted, ids_sorted = lp_full.sort(dim=-1, descending=True)

    def direct(kk):  # what a cache built with k = kk stores: exact top-kk and log(1 - sum p)
        lp = lp_sorted[:, :kk]
        return ids_sorted[:, :kk], lp, torch.log1p(-lp.exp().sum(-1))

    ids, lp, tail = truncate_topk(*direct(k), k_new)
    want_ids, want_lp, want_tail = direct(k_new)
    assert torch.equal(ids, want_ids)
    torch.testing.assert_close(lp, want_lp, rtol=0, atol=1e-6)
    torch.testing.assert_close(tail, want_tail, rtol=0, atol=1e-6)
    mass = lp.exp().sum(-1) + tail.exp()
    torch.testing.assert_close(mass, torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-6)
    assert ids.is_contiguous() and lp.is_contiguous()


def test_truncate_topk_in_float32_from_the_full_vocab_keeps_the_mass():
    from ddk.cache.train.step import truncate_topk

    lp, ids = torch.log_softmax(torch.randn(4, 30) * 2, dim=-1).sort(dim=-1, descending=True)
    tail = torch.full((4,), float("-inf"))  # k == V: nothing in the tail
    _, lp2, tail2 = truncate_topk(ids, lp, tail, 2)
    assert lp2.shape == (4, 2) and lp2.dtype == torch.float32
    torch.testing.assert_close(lp2.exp().sum(-1) + tail2.exp(), torch.ones(4), rtol=0,
                               atol=1e-6)


# -- 3. explicit_weights / parse_weights -------------------------------------------------------
def test_explicit_weights_normalise_and_give_unnamed_domains_zero():
    from ddk.cache.train.ddk_weights import explicit_weights

    w = explicit_weights({"c": 1.0, "a": 3.0}, ["a", "b", "c"])
    assert w.dtype == torch.float64 and w.tolist() == pytest.approx([0.75, 0.0, 0.25])
    assert explicit_weights({"b": 0.2}, ["a", "b"]).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("weights,match", [
    ({"a": 1.0, "zz": 1.0}, "unknown domain.*zz"),
    ({"a": 0.0, "b": 0.0}, "not all 0"),
    ({"a": -1.0}, ">= 0"),
    ({"a": 2.0, "b": -1.0}, ">= 0"),
    ({"a": float("nan")}, "finite"),
    ({"a": float("inf")}, "finite"),
])
def test_explicit_weights_errors(weights, match):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.ddk_weights import explicit_weights

    with pytest.raises(ConfigError, match=match):
        explicit_weights(weights, ["a", "b"])


@pytest.mark.parametrize("text,want", [
    ("a=2,b=1", {"a": 2.0, "b": 1.0}),
    (" python_code = 4 , bible=0.5 ,", {"python_code": 4.0, "bible": 0.5}),
    ("x=1e-3", {"x": 1e-3}),
])
def test_parse_weights(text, want):
    from ddk.cache.train.ddk_weights import parse_weights

    assert parse_weights(text) == want


@pytest.mark.parametrize("text", ["a", "a=x", "", " , ", "=1", "a=1,b"])
def test_parse_weights_errors_show_the_format(text):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.ddk_weights import parse_weights

    with pytest.raises(ConfigError, match="DOMAIN=WEIGHT"):
        parse_weights(text)


# -- runs on the real tiny cache ---------------------------------------------------------------
def _cfg(cache, student, out, **kw):
    base = {"method": "kd", "max_steps": 1, "interval": 1, "val_sequences": 2}
    return small_train_config(cache, student, out, **{**base, **kw})


def _records(out: Path, kind: str) -> list[dict]:
    from ddk.cache.train.metrics import read_metrics

    return [r for r in read_metrics(out / "metrics.jsonl") if r["type"] == kind]


@pytest.fixture
def drawn(monkeypatch) -> list:
    """Every micro-batch the trainer computes a loss on, in order (a spy on micro_loss)."""
    from ddk.cache.train import step

    seen, real = [], step.micro_loss

    def spy(model, batch, cfg, device, amp, teacher=None, **kw):
        seen.append(batch)
        return real(model, batch, cfg, device, amp, teacher, **kw)

    monkeypatch.setattr(step, "micro_loss", spy)
    return seen


# -- 4. explicit mixtures ----------------------------------------------------------------------
def test_domain_weights_sample_only_the_named_domain(train_cache, tiny_student_dir, tmp_path,
                                                     drawn):
    from ddk.cache.train.loop import train
    from ddk.cache.train.training_cache import open_cache

    domains = open_cache(train_cache).domains
    pick = domains[1]  # not the first one, so an index mix-up cannot pass
    res = train(_cfg(train_cache, tiny_student_dir, tmp_path / "r", max_steps=4, interval=2,
                     domain_weights={pick: 1.0}))
    assert res.steps == 4 and len(drawn) == 4
    assert torch.cat([b.domains for b in drawn]).tolist() == [1] * 8
    one_hot = [1.0 if d == pick else 0.0 for d in domains]
    assert [h["weights"] for h in res.summary["weight_history"]] == [one_hot, one_hot]
    assert [r["weights"] for r in _records(tmp_path / "r", "interval")] == [one_hot] * 3
    assert res.summary["config"]["domain_weights"] == {pick: 1.0}


def test_domain_weights_with_ddk_is_an_error(train_cache, tiny_student_dir, tmp_path):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.loop import train

    with pytest.raises(ConfigError, match="ddk"):
        train(_cfg(train_cache, tiny_student_dir, tmp_path / "r", method="ddk",
                   domain_weights={"code": 1.0}))
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_cli_kd_mixture_with_explicit_weights(train_cache, tiny_student_dir, tmp_path):
    from click.testing import CliRunner
    from ddk.cli.main import cli

    base = ["train-student", "--cache", str(train_cache), "--student", str(tiny_student_dir),
            "--max-steps", "1", "--interval", "1", "--val-sequences", "2", "--batch-size", "2",
            "--device", "cpu", "-q"]
    runner = CliRunner()
    r = runner.invoke(cli, [*base, "--out", str(tmp_path / "ok"), "--method", "cpt",
                            "--kd-mixture", "code=3,math=1", "--json"])
    assert r.exit_code == 0, r.output
    printed = json.loads(r.stdout.strip().splitlines()[-1])
    assert printed["weight_history"][0]["weights"] == pytest.approx([0.75, 0.0, 0.25])
    saved = json.loads((tmp_path / "ok" / "summary.json").read_text())
    assert saved["domains"] == ["code", "prose", "math"]
    assert saved["config"]["domain_weights"] == {"code": 3.0, "math": 1.0}
    assert saved["config"]["mixture"] == "natural"

    for args, match in [(["--kd-mixture", "code"], "DOMAIN=WEIGHT"),
                        (["--kd-mixture", "nope=1"], "unknown domain"),
                        (["--method", "ddk", "--kd-mixture", "code=1"], "ddk")]:
        r = runner.invoke(cli, [*base, "--out", str(tmp_path / "bad"), "--method", "kd", *args])
        assert r.exit_code == 1, r.output
        # the last line is the error (transformers' own "Loading weights" bar may precede it)
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and match in last


# -- 5./6. loss variants: the logged step-0 kl is the variant's KL on the drawn batch ---------
T, GAMMA = 2.0, 0.5


def _bucket_kl(z, ids, lp, tail):
    """Tempered (k+1)-outcome teacher vs full student softmax, float64 (the cache's KL)."""
    k = ids.shape[1]
    joint = torch.log_softmax(torch.cat([lp, tail[:, None]], 1) / T, dim=1)
    logq = torch.log_softmax(z / T, dim=1)
    logq_top = logq.gather(1, ids)
    logq_tail = torch.log1p(-logq_top.exp().sum(1))
    p = joint.exp()
    return ((p[:, :k] * (joint[:, :k] - logq_top)).sum(1)
            + p[:, k] * (joint[:, k] - logq_tail)).mean()


def _renorm_kl(z, ids, lp):
    """Teacher top-k renormalised (tempered), no tail; student log-probs at those ids."""
    p_log = torch.log_softmax(lp / T, dim=1)
    logq = torch.log_softmax(z / T, dim=1).gather(1, ids)
    return (p_log.exp() * (p_log - logq)).sum(1).mean()


def _full_kl(z, t_logits):
    log_p, log_q = torch.log_softmax(t_logits / T, 1), torch.log_softmax(z / T, 1)
    return (log_p.exp() * (log_p - log_q)).sum(1).mean()


def _logits(model_dir, reader, ids):
    from ddk.cache.train.student import load_student

    model, _ = load_student(model_dir, reader)
    with torch.no_grad():
        return model(input_ids=ids[:, :-1]).logits.flatten(0, 1).double()


def test_kd_variants_log_the_kl_of_their_own_target(train_cache, tiny_student_dir,
                                                    tiny_teacher_dir, tmp_path, drawn):
    from ddk.cache.train.loop import train
    from ddk.cache.train.training_cache import open_cache

    reader = open_cache(train_cache)
    variants = {"bucket": {}, "renorm": {"kd_tail": "renorm"}, "top2": {"kd_topk": 2},
                "top2renorm": {"kd_topk": 2, "kd_tail": "renorm"},
                "topk=k": {"kd_topk": reader.k},
                "online": {"online_teacher": str(tiny_teacher_dir)}}
    logged = {}
    for name, kw in variants.items():
        out = tmp_path / name
        res = train(_cfg(train_cache, tiny_student_dir, out, gamma=GAMMA, temperature=T, **kw))
        assert res.steps == 1 and (out / "model" / "config.json").exists()
        step0 = _records(out, "step")[0]
        assert step0["loss"] == pytest.approx(step0["ce"] + GAMMA * T * T * step0["kl"],
                                              rel=1e-5)
        logged[name] = step0
    assert len(drawn) == len(variants)
    batch = drawn[0]
    for b in drawn[1:]:  # same seed, same first batch for every variant
        assert torch.equal(b.input_ids, batch.input_ids)

    k = batch.topk_ids.shape[-1]
    ids = batch.topk_ids.view(-1, k)
    lp = batch.topk_logprobs.view(-1, k).double()
    tail = batch.tail_logmass.view(-1).double()
    tail2 = torch.logsumexp(torch.cat([tail[:, None], lp[:, 2:]], 1), dim=1)
    z = _logits(tiny_student_dir, reader, batch.input_ids)
    t_logits = _logits(tiny_teacher_dir, reader, batch.input_ids)
    want = {"bucket": _bucket_kl(z, ids, lp, tail), "renorm": _renorm_kl(z, ids, lp),
            "top2": _bucket_kl(z, ids[:, :2], lp[:, :2], tail2),
            "top2renorm": _renorm_kl(z, ids[:, :2], lp[:, :2]),
            "topk=k": _bucket_kl(z, ids, lp, tail), "online": _full_kl(z, t_logits)}
    for name, value in want.items():
        assert logged[name]["kl"] == pytest.approx(float(value), rel=1e-4), name
    ce0 = logged["bucket"]["ce"]
    assert all(r["ce"] == pytest.approx(ce0, rel=1e-5) for r in logged.values())
    # the variants are different targets: their KLs are apart by far more than the tolerance
    kls = [logged[n]["kl"] for n in ("bucket", "renorm", "top2", "top2renorm", "online")]
    assert all(v >= 0 and math.isfinite(v) for v in kls)
    assert min(abs(a - b) for i, a in enumerate(kls) for b in kls[i + 1:]) > 1e-3 * max(kls)


def test_kd_topk_above_the_cache_k_is_an_error(train_cache, tiny_student_dir, tmp_path):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.loop import train
    from ddk.cache.train.training_cache import open_cache

    k = open_cache(train_cache).k
    with pytest.raises(ConfigError, match="--kd-topk"):
        train(_cfg(train_cache, tiny_student_dir, tmp_path / "r", kd_topk=k + 1))
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


@pytest.mark.parametrize("kw,match", [({"kd_topk": 0}, "--kd-topk"),
                                      ({"kd_topk": -1}, "--kd-topk"),
                                      ({"kd_tail": "drop"}, "--kd-tail"),
                                      ({"online_teacher": "T", "kd_topk": 2}, "drop --kd-topk"),
                                      ({"online_teacher": "T", "kd_tail": "renorm"},
                                       "drop --kd-topk"),
                                      ({"online_teacher": "T", "method": "cpt"}, "unused")])
def test_bad_variant_options_fail_before_training(train_cache, tiny_student_dir, tmp_path, kw,
                                                  match):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.loop import train

    with pytest.raises(ConfigError, match=match):
        train(_cfg(train_cache, tiny_student_dir, tmp_path / "r", **kw))
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_online_teacher_must_be_the_cache_teacher(train_cache, tiny_student_dir, tmp_path):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.loop import train

    with pytest.raises(ConfigError, match="not the teacher"):
        train(_cfg(train_cache, tiny_student_dir, tmp_path / "r",
                   online_teacher=str(tiny_student_dir)))
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


# -- 7. held-out evaluation offset -------------------------------------------------------------
def test_evaluate_domains_from_first_scores_the_later_sequences(train_cache, tiny_student_dir):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.evaluate import evaluate_domains
    from ddk.cache.train.student import load_student
    from ddk.cache.train.training_cache import open_cache

    reader = open_cache(train_cache)
    model, _ = load_student(tiny_student_dir, reader)
    at0 = evaluate_domains(model, reader, max_sequences=2, batch_size=2)
    at1 = evaluate_domains(model, reader, max_sequences=2, batch_size=2, first=1)
    for p0, p1 in zip(at0, at1, strict=True):
        assert p1.sequences == 2
        ids = reader.read(p1.domain, "validation", [1, 2]).input_ids
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        assert p1.student_loss == pytest.approx(float(ce), rel=1e-5)
        assert p1.teacher_loss == pytest.approx(reader.teacher_loss(p1.domain, [1, 2]))
        assert p1.student_loss != pytest.approx(p0.student_loss, rel=1e-6)

    n = min(reader.num_sequences(d, "validation") for d in reader.domains)
    last = evaluate_domains(model, reader, max_sequences=5, first=n - 1)
    assert min(p.sequences for p in last) == 1  # capped at the end of the split
    with pytest.raises(ConfigError, match="validation sequences"):
        evaluate_domains(model, reader, max_sequences=1,
                         first=max(reader.num_sequences(d, "validation") for d in reader.domains))


# -- 7. a sampled-target cache ------------------------------------------------------------------
def test_kd_on_a_sampled_cache_logs_the_kl_of_the_drawn_target(sampled_train_cache,
                                                              tiny_student_dir, tmp_path,
                                                              drawn):
    """The step-0 kl is KL(q || student) with q = count / N of the stored draws, computed
    here in float64 from the raw stored counts of the very sequences the run drew."""
    import numpy as np
    from ddk.cache.train.loop import train
    from ddk.cache.train.training_cache import open_cache

    reader = open_cache(sampled_train_cache)
    assert reader.target_kind == "sampled"
    out = tmp_path / "sampled"
    res = train(_cfg(sampled_train_cache, tiny_student_dir, out, gamma=GAMMA))
    assert res.steps == 1
    step0 = _records(out, "step")[0]
    batch = drawn[0]
    # the stored arrays of the drawn sequences, found by their tokens
    q_rows, id_rows = [], []
    for seq in batch.input_ids:
        for d in reader.domains:
            stored = np.asarray(reader.group[f"{d}/train/input_ids"][:], dtype=np.int64)
            hit = np.nonzero((stored == seq.numpy()).all(-1))[0]
            if hit.size:
                i = int(hit[0])
                id_rows.append(torch.as_tensor(
                    reader.group[f"{d}/train/sample_ids"][i].astype(np.int64)))
                q_rows.append(torch.as_tensor(
                    reader.group[f"{d}/train/sample_counts"][i].astype(np.float64)) / 8)
                break
    assert len(q_rows) == batch.input_ids.shape[0]
    ids, q = torch.cat(id_rows), torch.cat(q_rows)
    z = _logits(tiny_student_dir, reader, batch.input_ids)
    logq = torch.log_softmax(z, 1).gather(1, ids)
    want = torch.where(q > 0, q * (q.log() - logq), 0.0).sum(1).mean()
    assert step0["kl"] == pytest.approx(float(want), rel=1e-4)
    assert step0["loss"] == pytest.approx(step0["ce"] + GAMMA * step0["kl"], rel=1e-5)


@pytest.mark.parametrize("kw,match", [
    ({"kd_topk": 2}, "sampled target"), ({"kd_tail": "renorm"}, "sampled target"),
    ({"temperature": 2.0}, "temperature 1"),
])
def test_top_k_options_on_a_sampled_cache_are_errors(sampled_train_cache, tiny_student_dir,
                                                     tmp_path, kw, match):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.loop import train

    with pytest.raises(ConfigError, match=match):
        train(_cfg(sampled_train_cache, tiny_student_dir, tmp_path / "r", **kw))
    assert not (tmp_path / "r" / "metrics.jsonl").exists()
