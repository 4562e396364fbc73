"""bench/replicate.py end to end at the `smoke` preset: tiny teacher, three small domains.

Checks the experiment's wiring, not its findings: every planned run trains and is scored on
the held-out sequences, identical configurations share one run, the report has every table,
and a re-run resumes (skips finished runs) with the same results.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest


@pytest.fixture
def rep(repo_script):
    """bench/replicate.py as a module."""
    return repo_script("bench/replicate.py")


@pytest.fixture
def corpus_dir(small_corpus, tmp_path) -> Path:
    """The small corpus as <domain>.jsonl files in one directory (the benchmark layout)."""
    out = tmp_path / "bench-corpus"
    out.mkdir()
    for name, d in small_corpus.items():
        shutil.copy(d / "docs.jsonl", out / f"{name}.jsonl")
    return out


@pytest.mark.slow
def test_smoke_preset_runs_every_group_and_resumes(rep, tiny_teacher_dir, corpus_dir, tmp_path):
    out = tmp_path / "replicate"
    argv = ["--preset", "smoke", "--teacher", str(tiny_teacher_dir), "--corpus",
            str(corpus_dir), "--out", str(out), "--skew", "code=10", "-q"]
    assert rep.main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    p = rep.PRESETS["smoke"]
    summary = result["summary"]

    assert set(summary["main"]) == set(rep.MAIN_METHODS)
    for label, v in summary["main"].items():
        assert v["seeds"] == list(p.seeds), label
    assert len(summary["ablation"]) == 5
    assert set(summary["loss"]) == {f"k={k} {t}" for k in p.loss_ks for t in ("bucket", "renorm")
                                    } | {"full vocabulary (online teacher)"} | {
        f"sampled N={n}" for n in p.loss_samples}
    for group in summary.values():
        for v in group.values():
            assert all(math.isfinite(x) and x > 0 for x in v["geo_mean_ratio"] + v["worst_ratio"])
            assert all(w >= g for w, g in zip(v["worst_ratio"], v["geo_mean_ratio"]))

    # natural = the corpus's token shares; skew: code 10, the others 1
    assert abs(sum(result["natural"].values()) - 1) < 1e-9
    assert result["skew"] == {"code": 10.0, "math": 1.0, "prose": 1.0}

    # kd-uniform at the cache's k with the tail bucket is the same run as "k=4 bucket"
    main_kd = summary["main"]["kd-uniform"]
    loss_full_k = summary["loss"][f"k={p.cache_k} bucket"]
    assert loss_full_k["geo_mean_ratio"][0] == main_kd["geo_mean_ratio"][0]
    run_dirs = [d for d in (out / "runs").iterdir() if (d / "test.json").is_file()]
    # main 2 seeds x 4, ablations 5, loss 6 minus the one shared with main
    assert len(run_dirs) == 8 + 5 + 5
    # the sampled-target run trained on its own cache, of the same sequences
    sampled = json.loads((out / "sampled-4" / "zarr.json").read_text())["attributes"]["ddk"]
    assert sampled["target"] == {"kind": "sampled", "draws": 4, "temperature": 1.0}
    assert (json.loads((out / "cache" / "zarr.json").read_text())["attributes"]["ddk"]["domains"]
            .keys() == sampled["domains"].keys())
    sampled_run = next(d for d in run_dirs if d.name.startswith("sampled-4"))
    assert json.loads((sampled_run / "summary.json").read_text())["config"]["cache"].endswith(
        "sampled-4")

    # scored on the held-out test sequences (after ddk's measuring set), not the measuring set
    for d in run_dirs:
        rec = json.loads((d / "test.json").read_text())
        assert {t["sequences"] for t in rec["test"]} == {p.val_test}
    ddk = json.loads(next(d for d in run_dirs if d.name == "method-ddk_seed-0")
                     .joinpath("test.json").read_text())
    assert len(ddk["weight_history"]) == p.steps // p.interval
    pretrain = json.loads((out / "student-pretrain" / "summary.json").read_text())
    w = pretrain["weight_history"][0]["weights"]
    assert w[pretrain["domains"].index("code")] == pytest.approx(10 / 12)

    report = (out / "results.md").read_text()
    for heading in ("Main comparison", "Per domain", "DDK ablations", "Loss on the cached target",
                    "sampled N=4"):
        assert heading in report
    assert (out / "plots" / "domain_ratios.png").stat().st_size > 0
    assert (out / "plots" / "ddk_weights.png").stat().st_size > 0

    # resume: nothing is retrained, the summary is the same
    mtimes = {d.name: (d / "test.json").stat().st_mtime_ns for d in run_dirs}
    assert rep.main(argv) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["summary"] == summary
    assert {d.name: (d / "test.json").stat().st_mtime_ns for d in run_dirs} == mtimes


def test_plan_shares_identical_runs_and_covers_the_issue(rep):
    p = rep.PRESETS["cpu"]
    runs = rep.plan_runs(p, {"a": 0.5, "b": 0.5}, "/teacher")
    main = [r for r in runs if r.group == "main"]
    assert len(main) == 4 * len(p.seeds) and len(p.seeds) >= 3
    labels = {r.label for r in runs if r.group == "loss"}
    assert labels == {f"k={k} {t}" for k in (8, 16, 64) for t in ("bucket", "renorm")} | {
        "full vocabulary (online teacher)"} | {f"sampled N={n}" for n in p.loss_samples}
    assert len(p.loss_samples) == 2  # at the bytes of top-16 and of top-64 (docs/codecs.md)
    assert all(r.cache == f"sampled-{r.label.split('=')[1]}" for r in runs
               if r.label.startswith("sampled"))
    keys = [r.key for r in runs]
    assert len(set(keys)) == len(keys) - len(p.loss_seeds)  # k=64 bucket == main kd-uniform
    assert len({r.dirname for r in runs}) == len(set(keys))  # one directory per distinct run


def test_unread_documents_are_exactly_those_after_the_cache(rep, small_corpus, tiny_teacher_dir):
    import numpy as np
    from ddk.cache.corpus.packing import document_order, pack_domain
    from ddk.cache.corpus.sources import DomainSpec, iter_documents
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    spec = DomainSpec("code", str(small_corpus["code"]))
    packed = pack_domain(spec, tok, 32, val_sequences=2, max_train_sequences=8)
    stream = np.concatenate([packed.validation.reshape(-1), packed.train.reshape(-1)])
    unread = rep.unread_documents(spec, tok, stream.size)

    docs = list(iter_documents(spec))
    order = document_order(len(docs), 0, "code")
    read = [docs[i] for i in order[:len(docs) - len(unread)]]
    ids = [t for d in read for t in tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    assert ids[:stream.size] == stream.tolist()  # the cache holds the read documents' tokens
    last = len(tok(read[-1], add_special_tokens=False)["input_ids"]) + 1
    assert len(ids) - last < stream.size  # ... and needed the last one of them
    assert unread and set(unread).isdisjoint(read)
    assert unread == [docs[i] for i in order[len(read):]]


@pytest.mark.slow
def test_paper_preset_drops_layers_heals_and_tests_on_unread_documents(
        rep, tiny_teacher_dir, corpus_dir, tmp_path):
    from transformers import AutoConfig

    out = tmp_path / "paper"
    argv = ["--preset", "paper-smoke", "--teacher", str(tiny_teacher_dir), "--corpus",
            str(corpus_dir), "--out", str(out), "-q"]
    assert rep.main(argv) == 0
    p = rep.PRESETS["paper-smoke"]
    result = json.loads((out / "results.json").read_text())
    summary = result["summary"]
    assert set(summary) == {"main", "ablation"}  # the preset's groups
    assert all(v["seeds"] == [0, 1, 2] for v in summary["main"].values())

    n = AutoConfig.from_pretrained(tiny_teacher_dir).num_hidden_layers
    assert AutoConfig.from_pretrained(out / "student").num_hidden_layers == n - len(p.drop_layers)
    heal = json.loads((out / "student-pretrain" / "summary.json").read_text())
    assert heal["method"] == "kd" and heal["steps"] == p.pretrain_steps
    assert heal["weight_history"][0]["weights"] == pytest.approx([1 / 3] * 3)  # uniform

    # the test set is its own cache, of documents the training cache never read
    assert result["test_cache"] == str(out / "test-cache")
    test_docs = {json.loads(ln)["text"] for f in (out / "test-corpus").glob("*.jsonl")
                 for ln in f.read_text().splitlines()}
    assert test_docs
    for d in (out / "runs").iterdir():
        rec = json.loads((d / "test.json").read_text())
        assert {t["sequences"] for t in rec["test"]} == {p.val_test}
        weighted = rec["options"].get("method") == "ddk"
        # ddk re-weights every K steps; the fixed mixtures are measured once, for the logs
        assert len(rec["weight_history"]) == (p.steps // rec["options"].get(
            "interval", p.interval) if weighted else 1)
    ddk = json.loads((out / "runs" / "method-ddk_seed-0" / "test.json").read_text())
    assert all("saturation" in h for h in ddk["weight_history"])
    report = (out / "results.md").read_text()
    assert "documents the training cache never read" in report
    assert "### DDK weights, seed 0" in report and "DDK ablations" in report
