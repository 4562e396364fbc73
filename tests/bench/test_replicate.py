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
                                    } | {"full vocabulary (online teacher)"}
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
    assert len(run_dirs) == 8 + 5 + 4  # main 2 seeds x 4, ablations 5, loss 5 minus the shared one

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
    for heading in ("Main comparison", "Per domain", "DDK ablations", "Loss on the cached top-k"):
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
        "full vocabulary (online teacher)"}
    keys = [r.key for r in runs]
    assert len(set(keys)) == len(keys) - len(p.loss_seeds)  # k=64 bucket == main kd-uniform
    assert len({r.dirname for r in runs}) == len(set(keys))  # one directory per distinct run
