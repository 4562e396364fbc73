"""GPU readiness without a GPU: every Triton kernel variant compiles for sm_80 and sm_90.

bench/gpu/aot_compile.py drives the real public losses over the whole launch space, lets
Triton's JIT specialise each launch as it would on a GPU, compiles every distinct variant
ahead of time down to the cubin and reads ptxas's register and spill report. Here it runs
as CI's check (no spill, registers in hand below the ceiling), and its table in
docs/kernels.md must be the one this code produces.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu" / "aot_compile.py"


def _module():
    """The script as a module (its constants and Variant), imported once."""
    if "aot_compile" not in sys.modules:
        spec = importlib.util.spec_from_file_location("aot_compile", SCRIPT)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["aot_compile"] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)
    return sys.modules["aot_compile"]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("aot") / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    jobs = str(max(1, min(4, os.cpu_count() or 1)))
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--jobs", jobs, "--json", str(out)],
        check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert r.returncode == 0, f"aot_compile failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return json.loads(out.read_text())


@pytest.mark.slow
def test_every_kernel_compiles_for_both_targets_without_spills(report):
    mod = _module()
    variants = report["variants"]
    compiled = {(v["kernel"].rsplit(".", 1)[1], v["arch"]) for v in variants}
    assert compiled == {(k, a) for k in report["kernels"] for a in mod.ARCHS}
    for v in variants:
        assert v["error"] is None, v
        assert v["spill_stores"] == v["spill_loads"] == v["stack_frame"] == 0, v
        assert 0 < v["regs"] <= v["ceiling"] - report["headroom"], v


@pytest.mark.slow
def test_the_whole_launch_space_reached_a_compile(report):
    mod = _module()
    expected = {
        "loss": {"sparse", "fused"},
        "dtype": set(mod.LOGIT_DTYPES),
        "ids": set(mod.ID_DTYPES),
        "V": set(mod.VOCABS),
        "k": set(mod.KS),
        "labels": set(mod.LABELS),
        "T": set(mod.TEMPERATURES),
        "grad": set(mod.GRADS),
    }
    for dim, values in expected.items():
        seen = set().union(*(v["launch"][dim] for v in report["variants"]))
        assert seen == values, dim
    # every reachable constexpr combination of the forward kernel, on each target
    fwd = [v for v in report["variants"] if v["kernel"].endswith("_sparse_kl_fwd_kernel")]
    flags = ("HAS_LABELS", "HAS_CE", "UNIT_T", "COMPUTE_GRAD", "RESTORE")
    for arch in mod.ARCHS:
        combos = {tuple(v["launch"]["constexpr"][f] for f in flags) for v in fwd
                  if v["arch"] == arch}
        assert len(combos) == 3 * 2 * 3  # labels none/no CE/CE x T 1/other x grad none/buffer/in place


@pytest.mark.slow
def test_docs_table_is_the_one_this_code_produces(report):
    text = (REPO / "docs" / "kernels.md").read_text()
    mod = _module()
    assert mod.BEGIN in text and mod.END in text, "run: python bench/gpu/aot_compile.py --write-docs"
    block = text.split(mod.BEGIN, 1)[1].split(mod.END, 1)[0]
    doc_rows = [r for r in block.split("<details>", 1)[-1].splitlines() if r.startswith("| _")]
    new_rows = [r for r in report["markdown"].splitlines() if r.startswith("| _")]
    if f"triton {report['triton']} " in block:
        assert doc_rows == new_rows, "stale table: python bench/gpu/aot_compile.py --write-docs"
    else:  # another triton: registers may differ, the variants may not
        assert [r.split("|")[:11] for r in doc_rows] == [r.split("|")[:11] for r in new_rows]


def test_problems_flag_spills_errors_and_missing_headroom():
    mod = _module()
    ok = mod.Variant("k", 90, "{}", regs=64, spill_stores=0, spill_loads=0, stack_frame=0,
                     num_warps=16)
    assert ok.ceiling == 128 and ok.problems() == []
    spill = mod.Variant("k", 90, "{}", regs=40, spill_stores=4, spill_loads=4, stack_frame=8,
                        num_warps=16)
    assert "spills" in spill.problems()[0]
    tight = mod.Variant("k", 80, "{}", regs=64, spill_stores=0, spill_loads=0, stack_frame=0,
                        num_warps=32)
    assert tight.ceiling == 64 and "ceiling" in tight.problems()[0]
    broken = mod.Variant("k", 80, "{}", error="PTXASError: boom")
    assert broken.problems() == ["compile error: PTXASError: boom"]
