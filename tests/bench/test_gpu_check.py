"""bench/gpu/check.sh --dry-run: the one-call GPU check runs every stage on CPU.

The dry run uses tiny shapes and the Triton interpreter, so its figures mean nothing; what
it shows is that the script and everything it drives (pytest, aot_compile.py, the three
benchmarks, the trainer) still run and report in the shape check.md / check.json promise.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = ["env", "kernel_tests", "aot", "loss", "fused_head", "trainer"]


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_dry_run_runs_every_stage_and_reports(tmp_path):
    out = tmp_path / "check"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")
    argv = ["bash", str(REPO / "bench/gpu/check.sh"), "--dry-run", "--out", str(out)]
    proc = subprocess.run(argv, check=False, cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]

    report = json.loads((out / "check.json").read_text())
    assert {"command", "dry_run", "budget_s", "started", "versions", "stages"} <= report.keys()
    assert report["dry_run"] is True and "--dry-run" in report["command"]
    assert list(report["stages"]) == STAGES
    for name, s in report["stages"].items():
        assert {"status", "reason", "seconds", "figures"} <= s.keys(), name
        assert s["status"] == "ok", (name, s["reason"])  # nothing is impossible on CPU
        assert s["seconds"] > 0
    assert report["versions"]["torch"] and report["versions"]["triton"]

    fig = {n: s["figures"] for n, s in report["stages"].items()}
    assert fig["env"]["dry_run"] is True and fig["env"]["cuda"] is False
    assert _positive(fig["kernel_tests"]["passed"]) and fig["kernel_tests"]["failed"] == 0
    assert _positive(fig["aot"]["variants"]) and _positive(fig["aot"]["max_registers"])
    assert fig["aot"]["spilling_variants"] == 0

    loss = fig["loss"]
    assert _positive(loss["copy_bandwidth_bytes_per_s"])
    assert {r["bench"] for r in loss["rows"]} == {"logits", "fused"}
    for r in loss["rows"]:
        assert _positive(r["min_bytes"]) and _positive(r["floor_ms"])
        if r["status"] == "ok":
            assert _positive(r["ms"]) and _positive(r["floor_fraction"])
            assert r["extra_peak_bytes"] is None  # no peak memory on CPU
        else:  # torch.compile (too slow to build on CPU) and Liger (needs CUDA)
            assert r["status"] == "skipped" and r["reason"], r
    ran = {r["method"] for r in loss["rows"] if r["status"] == "ok"}
    assert {"ours (Triton, in-place grad)", "ours (Triton, separate grad)",
            "torch eager reference", "ours fused_linear_sparse_kl_loss"} <= ran

    assert _positive(fig["fused_head"]["fused"]["tokens_per_s"])
    assert _positive(fig["fused_head"]["unfused"]["tokens_per_s"])
    assert _positive(fig["fused_head"]["tokens_per_s_ratio"])

    tr = fig["trainer"]
    assert set(tr["tokens_per_s"]) == {"ddk/unfused", "cpt/unfused", "ddk/fused", "cpt/fused"}
    assert all(_positive(v) for v in tr["tokens_per_s"].values())
    assert all(_positive(v) for v in [*tr["ddk_over_cpt"].values(),
                                      *tr["fused_over_unfused"].values()])
    assert tr["runs"]["fused"]["methods"]["ddk"]["fused_lm_head"] is True
    assert tr["runs"]["unfused"]["methods"]["ddk"]["fused_lm_head"] is False

    md = (out / "check.md").read_text()
    for name in STAGES:
        section = md.split(f"## {name}: ok", 1)[1].split("\n## ", 1)[0]
        assert "\n|---" in section, f"no table in check.md for {name}"
