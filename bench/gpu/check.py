"""One-call GPU check: kernel tests, AOT compile, loss / fused-head / trainer benchmarks.

    python bench/gpu/check.py [--dry-run] [--out DIR] [--budget SECONDS]

(`bash bench/gpu/check.sh` is the entry point: on the GPU machine it installs the carried
wheels first; see bench/gpu/README.md.) Stages, in this order, each in its own subprocess
with its own timeout; a stage that fails or times out is recorded (status, reason, seconds)
and the next one runs:

    env           device, capability, torch / triton / transformers versions
    kernel_tests  pytest tests/kernels (on a GPU: the real-shape checks vs float64 too)
    aot           bench/gpu/aot_compile.py: every kernel variant, registers and spills
    loss          bench/bench_loss.py: ours vs torch eager / torch.compile / Liger, memory
    fused_head    bench/bench_fused_head.py: fused vs unfused LM-head training step
    trainer       bench/bench_train.py: trainer tokens/s, ddk vs cpt, fused vs unfused head
    backends      bench/bench_backends.py: the transformers and the vLLM teacher backend on
                  the default teacher (when converted here; else the tests' tiny random one):
                  tok/s steady and end to end, load, host peak RSS, output agreement. vLLM
                  comes from $DDK_VLLM_PYTHON (default: this interpreter); where it does not
                  import, transformers is measured alone and the stage fails saying so.
                  The dry run leaves this stage out unless asked (--stages backends): it
                  starts vLLM on CPU, which takes minutes.

It writes DIR/check.json (every stage's raw figures, versions, the command) and DIR/check.md
(one table per stage, ratios against the baselines of this same run) after every stage, so
a kill leaves what was measured. Exit status 1 if any stage failed.

`--dry-run` runs every stage on CPU at tiny shapes, the Triton kernels through the
interpreter (TRITON_INTERPRET=1): it checks that this script and the ones it drives still
run (tests/bench/test_gpu_check.py), not how fast anything is.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
GiB, MiB = 1024**3, 1024**2

# Shapes. GPU: docs/benchmarks.md's loss shapes; the rest sized so the whole check stays
# well inside 8 minutes of one H100/H200. DRY: the smallest that still runs every path.
GPU = {
    "loss": ["--n", "8192", "--vocabs", "151936,49152", "--ks", "64", "--hidden", "2048",
             "--fused-vocab", "151936", "--reps", "10", "--warmup", "3"],
    "fused_head": ["--device", "cuda", "--vocab", "151936", "--hidden", "2048", "--layers", "2",
                   "--batch", "4", "--seq-len", "1024", "--k", "64", "--steps", "5",
                   "--repeats", "1"],
    "trainer": {"vocab": 49152, "teacher_hidden": 256, "teacher_layers": 2,
                "student_hidden": 512, "student_layers": 4, "seq_len": 512, "k": 64,
                "docs": 2500, "train_sequences": 96, "val_sequences": 4, "batch": 16,
                "steps": 30, "skip": 5, "device": "cuda"},
    "backends": ["--sequences", "512", "--seq-len", "512", "--k", "64", "--batch-size", "64",
                 "--dtype", "bf16", "--device", "cuda"],
}
DRY = {
    "loss": ["--dry-run"],
    "fused_head": ["--device", "cpu", "--vocab", "1000", "--hidden", "64", "--layers", "1",
                   "--batch", "2", "--seq-len", "16", "--k", "8", "--steps", "1",
                   "--repeats", "1"],
    "trainer": {"vocab": 0, "teacher_hidden": 64, "teacher_layers": 1, "student_hidden": 64,
                "student_layers": 1, "seq_len": 32, "k": 8, "docs": 40,
                "train_sequences": 8, "val_sequences": 2, "batch": 2, "steps": 3, "skip": 1,
                "device": "cpu"},
    "backends": ["--sequences", "8", "--seq-len", "32", "--k", "8", "--batch-size", "4",
                 "--dtype", "fp32", "--device", "cpu"],
}
# The kernel tests: every file but the AOT one (that is the `aot` stage). The dry run keeps
# two files (the GPU one skips on CPU, the other runs the interpreter; the whole folder runs
# in CI anyway) to stay short.
KERNEL_TESTS_IGNORE = ["--ignore", "tests/kernels/test_aot_compile.py"]
KERNEL_TESTS_DRY = ["tests/kernels/test_sparse_kl_gpu.py", "tests/kernels/test_fused_linear.py"]
# name: (timeout on the GPU, timeout in the dry run), seconds
TIMEOUTS = {"env": (60, 60), "kernel_tests": (100, 60), "aot": (100, 60), "loss": (150, 60),
            "fused_head": (90, 60), "trainer": (150, 90), "backends": (240, 300)}
#: stages a dry run leaves out unless --stages names them
NOT_IN_DRY_RUN = ("backends",)


class Skipped(Exception):
    """The stage cannot run here; the message says why."""


class Failed(Exception):
    """The stage ran and failed; `figures` keeps what it measured anyway."""

    def __init__(self, reason: str, figures: dict | None = None):
        super().__init__(reason)
        self.figures = figures or {}


@dataclass
class Ctx:
    dry: bool
    out: Path
    work: Path

    def env(self, interpret: bool = True) -> dict:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("TRITON_INTERPRET", None)
        if self.dry:
            env["CUDA_VISIBLE_DEVICES"] = ""
            if interpret:
                env["TRITON_INTERPRET"] = "1"
        return env


def sh(ctx: Ctx, argv: list[str], timeout: float, interpret: bool = True) -> tuple[int, str]:
    """Run argv from the repository root, echoing its output as it comes; (status, output).
    Past `timeout` its whole process group is killed and Failed raised."""
    print(f"  $ {' '.join(argv)}", flush=True)
    proc = subprocess.Popen(argv, cwd=REPO, env=ctx.env(interpret), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line)
            print("  | " + line, end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(5)
        raise Failed(f"timed out after {timeout:.0f} s") from None
    reader.join(5)
    return proc.returncode, "".join(lines)


def _tail(text: str, n: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-n:])


# -- stages: each returns its figures, or raises Skipped / Failed -----------------------------

def stage_env(ctx: Ctx, timeout: float) -> dict:
    f = ctx.work / "env.json"
    rc, out = sh(ctx, [sys.executable, __file__, "--stage", "env", "--json", str(f)]
                 + ["--dry-run"] * ctx.dry, timeout)
    if rc or not f.exists():
        raise Failed(f"exit {rc}: {_tail(out)}")
    figures = json.loads(f.read_text())
    if not ctx.dry and not figures["cuda"]:
        raise Failed("no CUDA device visible (on CPU use --dry-run)", figures)
    return figures


def env_info(dry: bool) -> dict:
    """Runs in the stage's subprocess: what this check measured on."""
    import torch
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "cuda": torch.cuda.is_available(),
            "torch_cuda": torch.version.cuda, "cpu_count": os.cpu_count(),
            "dry_run": dry, "triton_interpret": os.environ.get("TRITON_INTERPRET")}
    for mod in ("triton", "liger_kernel", "zarr"):
        try:
            m = importlib.import_module(mod)
            info[mod] = getattr(m, "__version__", None) or _dist_version(mod)
        except ImportError:
            info[mod] = None
    if info["cuda"]:
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, capability=f"{p.major}.{p.minor}",
                    memory_gib=round(p.total_memory / GiB, 1),
                    multiprocessors=p.multi_processor_count)
    else:
        info.update(device=f"CPU ({platform.processor() or platform.machine()})",
                    capability=None, memory_gib=None, multiprocessors=None)
    return info


def _dist_version(mod: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(mod.replace("_", "-"))
    except PackageNotFoundError:
        return None


def stage_kernel_tests(ctx: Ctx, timeout: float) -> dict:
    xml = ctx.work / "kernel_tests.xml"
    what = KERNEL_TESTS_DRY if ctx.dry else ["tests/kernels", *KERNEL_TESTS_IGNORE]
    rc, out = sh(ctx, [sys.executable, "-m", "pytest", "-q", *what, "-p", "no:cacheprovider",
                       f"--junitxml={xml}"], timeout, interpret=False)  # conftest sets it
    if not xml.exists():
        raise Failed(f"pytest exit {rc}, no report: {_tail(out)}")
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    figures = {"passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"],
               "failed": n["failures"] + n["errors"], "skipped": n["skipped"],
               "pytest_seconds": float(suite.get("time", 0)), "files": what, "exit": rc}
    if rc or figures["failed"]:
        raise Failed(f"{figures['failed']} failed: {_tail(out, 1)}", figures)
    return figures


def stage_aot(ctx: Ctx, timeout: float) -> dict:
    script = BENCH / "gpu" / "aot_compile.py"
    f = ctx.work / "aot.json"
    argv = [sys.executable, str(script), "--archs", "90", "--json", str(f)]
    rc, out = sh(ctx, argv + ["--quick"] * ctx.dry, timeout, interpret=False)
    if not f.exists():
        raise Failed(f"exit {rc}, no report: {_tail(out)}")
    rep = json.loads(f.read_text())
    vs = rep["variants"]
    spilling = [v for v in vs if v["spill_stores"] or v["spill_loads"] or v["stack_frame"]]
    figures = {"quick": ctx.dry, "archs": [90], "triton": rep["triton"], "variants": len(vs),
               "max_registers": max((v["regs"] or 0) for v in vs) if vs else None,
               "spilling_variants": len(spilling),
               "variants_with_problems": sum(bool(v["problems"]) for v in vs),
               "compile_errors": sum(bool(v["error"]) for v in vs),
               "seconds": rep["seconds"], "markdown": rep["markdown"], "exit": rc}
    if rc:
        raise Failed(f"aot_compile exit {rc}: {_tail(out, 2)}", figures)
    return figures


def stage_loss(ctx: Ctx, timeout: float) -> dict:
    f = ctx.work / "loss.json"
    shapes = DRY["loss"] if ctx.dry else GPU["loss"]
    try:
        rc, out = sh(ctx, [sys.executable, str(BENCH / "bench_loss.py"), *shapes, "--json",
                           str(f)], timeout)
    except Failed as e:  # timed out: keep the shapes it finished
        raise Failed(str(e), json.loads(f.read_text()) if f.exists() else None) from None
    if rc or not f.exists():
        raise Failed(f"exit {rc}: {_tail(out)}", json.loads(f.read_text()) if f.exists() else None)
    return json.loads(f.read_text())


def stage_fused_head(ctx: Ctx, timeout: float) -> dict:
    shapes = DRY["fused_head"] if ctx.dry else GPU["fused_head"]
    rc, out = sh(ctx, [sys.executable, str(BENCH / "bench_fused_head.py"), *shapes, "--json"],
                 timeout)
    if rc:
        raise Failed(f"exit {rc}: {_tail(out)}")
    return json.loads(out[out.index("{"):])  # --json prints one JSON document


def stage_trainer(ctx: Ctx, timeout: float) -> dict:
    f = ctx.work / "trainer.json"
    rc, out = sh(ctx, [sys.executable, __file__, "--stage", "trainer", "--json", str(f),
                       "--work", str(ctx.work / "trainer")] + ["--dry-run"] * ctx.dry, timeout)
    if rc or not f.exists():
        raise Failed(f"exit {rc}: {_tail(out)}")
    return json.loads(f.read_text())


def _default_teacher() -> Path | None:
    """The converted default teacher on this machine (bench/gpu/setup.sh step 4), or None."""
    from ddk.cache.teacher.default_model import DEFAULT_TEACHER_NAME, ddk_cache_dir

    path = ddk_cache_dir() / "models" / DEFAULT_TEACHER_NAME
    return path if (path / "model.safetensors").is_file() else None


def stage_backends(ctx: Ctx, timeout: float) -> dict:
    vllm_python = os.environ.get("DDK_VLLM_PYTHON", sys.executable)
    probe = subprocess.run([vllm_python, "-c", "from vllm import LLM"], capture_output=True,
                           text=True, check=False, timeout=120)
    backends = "transformers" if probe.returncode else "transformers,vllm"
    teacher = _default_teacher()
    argv = [sys.executable, str(BENCH / "bench_backends.py"),
            *(DRY["backends"] if ctx.dry else GPU["backends"]), "--backends", backends,
            "--vllm-python", vllm_python, "--json"] + ["--teacher", str(teacher)] * bool(teacher)
    rc, out = sh(ctx, argv, timeout, interpret=False)
    if rc:
        raise Failed(f"exit {rc}: {_tail(out)}")
    figures = json.loads(out.strip().splitlines()[-1])  # --json: one object, last line
    if probe.returncode:
        raise Failed(f"vLLM does not import with {vllm_python} ({_tail(probe.stderr, 1)}): "
                     "transformers measured alone; set DDK_VLLM_PYTHON", figures)
    return figures


VERSION_KEYS = ("device", "capability", "python", "torch", "torch_cuda", "triton",
                "transformers", "liger_kernel", "zarr")
STAGES = {"env": stage_env, "kernel_tests": stage_kernel_tests, "aot": stage_aot,
          "loss": stage_loss, "fused_head": stage_fused_head, "trainer": stage_trainer,
          "backends": stage_backends}


# -- the trainer stage's body (runs in its own subprocess) -------------------------------------

def _load(relpath: str, name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / relpath)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def trainer_bench(work: Path, c: dict) -> dict:
    """Tiny tokenizer, random llama teacher + student, a cache, then tokens/s of ddk and cpt
    with the fused LM head off and on (bench/bench_train.py's bench)."""
    from ddk.cache.cache_job.config import CacheJobConfig
    from ddk.cache.cache_job.run import run_cache_job
    from ddk.cache.corpus.sources import DomainSpec

    conftest = _load("tests/conftest.py", "ddk_check_conftest")  # the tests' tiny models
    bench_train = _load("bench/bench_train.py", "ddk_check_bench_train")
    train_cache = _load("tests/support/train_cache.py", "ddk_check_train_cache")
    t0 = time.perf_counter()
    pad = max(0, c["vocab"] - len(conftest.build_tiny_tokenizer())) if c["vocab"] else 0
    models = {}
    for role, seed in (("teacher", 0), ("student", 1)):
        models[role] = conftest.save_tiny_llama(
            work / role, seed=seed, num_layers=c[f"{role}_layers"], hidden=c[f"{role}_hidden"],
            max_positions=2 * c["seq_len"], vocab_pad=pad)
    corpus = train_cache.write_corpus(work / "corpus", c["docs"])
    t1 = time.perf_counter()
    res = run_cache_job(CacheJobConfig(
        output=str(work / "cache"), teacher=str(models["teacher"]),
        domains=[DomainSpec(n, str(p)) for n, p in corpus.items()], k=c["k"],
        seq_len=c["seq_len"], val_sequences=c["val_sequences"],
        max_train_sequences=c["train_sequences"], batch_size=16, sequences_per_shard=16,
        device=c["device"], progress=False, overwrite=True))
    if not res.complete:
        raise RuntimeError("the cache job did not complete")
    t2 = time.perf_counter()
    runs = {}
    for fused in (False, True):
        runs["fused" if fused else "unfused"] = bench_train.bench(
            str(work / "cache"), str(models["student"]), ["ddk", "cpt"], c["steps"], c["skip"],
            c["batch"], 1, c["device"], work / f"runs-{fused}", rounds=1, fused_lm_head=fused)
    tps = {(m, f): runs[f]["methods"][m]["tokens_per_s_median"]
           for f in runs for m in ("ddk", "cpt")}
    return {
        "config": {**c, "vocab": c["vocab"] or len(conftest.build_tiny_tokenizer())},
        "setup_seconds": t1 - t0, "cache_seconds": t2 - t1,
        "bench_seconds": time.perf_counter() - t2, "runs": runs,
        "tokens_per_s": {f"{m}/{f}": v for (m, f), v in tps.items()},
        "ddk_over_cpt": {f: tps["ddk", f] / tps["cpt", f] for f in runs},
        "fused_over_unfused": {m: tps[m, "fused"] / tps[m, "unfused"] for m in ("ddk", "cpt")},
    }


# -- the report --------------------------------------------------------------------------------

def _table(header: list[str], rows: list[list]) -> str:
    def cell(x) -> str:
        if x is None:
            return "-"
        if isinstance(x, float):
            if x and abs(x) < 0.01:
                return f"{x:.2e}"
            return f"{x:,.3f}" if abs(x) < 100 else f"{x:,.0f}"
        return str(x).replace("|", "/")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows])


def md_env(fig: dict) -> str:
    return _table(["key", "value"], [[k, v] for k, v in fig.items()])


def md_kernel_tests(fig: dict) -> str:
    return _table(["passed", "failed", "skipped", "pytest s", "files"],
                  [[fig["passed"], fig["failed"], fig["skipped"], fig["pytest_seconds"],
                    " ".join(fig["files"])]])


def md_aot(fig: dict) -> str:
    head = _table(["variants", "max registers", "spilling variants", "with problems",
                   "compile errors", "quick", "seconds"],
                  [[fig["variants"], fig["max_registers"], fig["spilling_variants"],
                    fig["variants_with_problems"], fig["compile_errors"], fig["quick"],
                    fig["seconds"]]])
    return head + "\n\nPer kernel (aot_compile.py's own table):\n\n" + fig["markdown"].strip()


def md_loss(fig: dict) -> str:
    """One table per shape; `x B` = B's ms / this ms (above 1: faster than B)."""
    groups: dict[tuple, list[dict]] = {}
    for r in fig["rows"]:
        key = (r["bench"], r["n"], r["v"], r["k"], r.get("h"), r["dtype"])
        groups.setdefault(key, []).append(r)
    out = [(f"copy bandwidth {fig['copy_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s (read + "
            f"write), device {fig['device']}; `x B` = B's ms / this row's ms (above 1: faster "
            "than B); `of copy bw` = (min bytes / copy bandwidth) / ms.")]
    for (bench, n, v, k, h, dtype), rows in groups.items():
        base = {name: next((r["ms"] for r in rows if r["method"].startswith(name)), None)
                for name in ("torch eager", "torch.compile", "torch (logits", "Liger")}
        ref = base["torch eager"] or base["torch (logits"]
        out.append(f"**{bench}** N={n} V={v} k={k}" + (f" H={h}" if h else "") + f" {dtype}, "
                   f"min bytes {rows[0]['min_bytes'] / MiB:.1f} MiB")
        out.append(_table(
            ["method", "ms", "x torch", "x torch.compile", "x Liger", "of copy bw",
             "extra peak GiB", "note"],
            [[r["method"], r["ms"], _ratio(ref, r["ms"]), _ratio(base["torch.compile"], r["ms"]),
              _ratio(base["Liger"], r["ms"]), r["floor_fraction"],
              None if r["extra_peak_bytes"] is None else r["extra_peak_bytes"] / GiB,
              r["reason"] or ""] for r in rows]))
    return "\n\n".join(out)


def _ratio(a, b):
    return a / b if a and b else None


def md_fused_head(fig: dict) -> str:
    u = fig["unfused"]
    rows = [[r["variant"], r["peak_bytes"] / MiB, r["step_bytes"] / MiB, r["tokens_per_s"],
             r["tokens_per_s"] / u["tokens_per_s"], r["peak_bytes"] / u["peak_bytes"]]
            for r in (u, fig["fused"])]
    cfg = " ".join(f"{k}={v}" for k, v in fig["config"].items())
    return cfg + "\n\n" + _table(["variant", "peak MiB", "step MiB", "tokens/s",
                                  "tokens/s vs unfused", "peak vs unfused"], rows)


def md_trainer(fig: dict) -> str:
    t = fig["tokens_per_s"]
    rows = []
    for f in ("unfused", "fused"):
        for m in ("ddk", "cpt"):
            r = fig["runs"][f]["methods"][m]
            rows.append([m, f, r["fused_lm_head"], t[f"{m}/{f}"], t[f"{m}/{f}"] / t[f"cpt/{f}"],
                         t[f"{m}/{f}"] / t[f"{m}/unfused"], r["loader_wait_s_max"]])
    c = fig["config"]
    return (f"student hidden {c['student_hidden']} x {c['student_layers']} layers, vocab "
            f"{c['vocab']}, seq {c['seq_len']}, batch {c['batch']}, k {c['k']}, {c['steps']} "
            f"steps (first {c['skip']} not timed), {c['device']}\n\n"
            + _table(["method", "LM head", "fused ran", "tokens/s", "vs cpt",
                      "vs unfused", "loader wait s"], rows))


def md_backends(fig: dict) -> str:
    rows = [[name, r["tokens_per_s"], r["end_to_end_tokens_per_s"], r["load_s"],
             r["warmup_s"], r["peak_rss_gib"]] for name, r in fig["results"].items()]
    head = (f"teacher {fig['teacher']}: {fig['sequences']} x {fig['seq_len']} tokens, k "
            f"{fig['k']}, batch {fig['batch_size']}, {fig['dtype']}\n\n")
    diff = fig.get("difference")
    tail = "\n\nagreement: " + ", ".join(f"{k} {v:.3g}" for k, v in diff.items()) if diff else ""
    return head + _table(["backend", "tok/s steady", "tok/s end to end", "load s", "warm-up s",
                          "host peak RSS GiB"], rows) + tail


RENDER = {"env": md_env, "kernel_tests": md_kernel_tests, "aot": md_aot, "loss": md_loss,
          "fused_head": md_fused_head, "trainer": md_trainer, "backends": md_backends}


def write_report(out: Path, report: dict) -> None:
    (out / "check.json").write_text(json.dumps(report, indent=1, default=str))
    md = [f"# GPU check{' (dry run: CPU, tiny shapes, not figures)' if report['dry_run'] else ''}",
          f"`{' '.join(report['command'])}`, {report['started']}",
          _table(["stage", "status", "seconds", "reason"],
                 [[n, s["status"], s["seconds"], s["reason"] or ""]
                  for n, s in report["stages"].items()])]
    for name, s in report["stages"].items():
        md.append(f"## {name}: {s['status']}")
        if s["figures"]:
            try:
                md.append(RENDER[name](s["figures"]))
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
                md.append(f"(no table: figures incomplete, {type(e).__name__}: {e})")
        else:
            md.append(f"(not measured: {s['reason']})")
    (out / "check.md").write_text("\n\n".join(md) + "\n")


# -- main --------------------------------------------------------------------------------------

def run_stages(ctx: Ctx, budget: float, only: list[str]) -> dict:
    deadline = time.monotonic() + budget
    report = {"command": [sys.executable] + sys.argv, "dry_run": ctx.dry, "budget_s": budget,
              "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "versions": {}, "stages": {}}
    for name in only:
        left = deadline - time.monotonic()
        timeout = min(TIMEOUTS[name][ctx.dry], left)
        print(f"\n== {name} (timeout {timeout:.0f} s, {left:.0f} s of the budget left)",
              flush=True)
        t0 = time.perf_counter()
        status, reason, figures = "ok", None, {}
        try:
            if timeout < 10:
                raise Skipped(f"the check's time budget ({budget:.0f} s) is spent")
            figures = STAGES[name](ctx, timeout)
        except Skipped as e:
            status, reason = "skipped", str(e)
        except Failed as e:
            status, reason, figures = "failed", str(e), e.figures
        except Exception as e:  # noqa: BLE001  (a bug here: record it, run the next stage)
            status, reason = "failed", f"{type(e).__name__}: {e}"
        sec = time.perf_counter() - t0
        report["stages"][name] = {"status": status, "reason": reason, "seconds": sec,
                                  "figures": figures}
        print(f"== {name}: {status} in {sec:.1f} s" + (f" ({reason})" if reason else ""),
              flush=True)
        if name == "env" and figures:
            report["versions"] = {k: figures.get(k) for k in VERSION_KEYS}
        write_report(ctx.out, report)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, interpreter")
    ap.add_argument("--out", type=Path, default=Path("gpu-check"), help="check.json/md go here")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for all stages (default 450 on the GPU, 240 dry run)")
    ap.add_argument("--stages", default=None,
                    help="a subset, comma-separated (default: all; a dry run: all but "
                         f"{', '.join(NOT_IN_DRY_RUN)})")
    ap.add_argument("--stage", choices=["env", "trainer"], help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.stage == "env":  # a stage's subprocess
        a.json.write_text(json.dumps(env_info(a.dry_run), indent=1))
        return 0
    if a.stage == "trainer":
        c = DRY["trainer"] if a.dry_run else GPU["trainer"]
        a.json.write_text(json.dumps(trainer_bench(a.work, c), indent=1))
        return 0
    only = a.stages.split(",") if a.stages else [
        s for s in STAGES if not (a.dry_run and s in NOT_IN_DRY_RUN)]
    if unknown := [s for s in only if s not in STAGES]:
        ap.error(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    a.out.mkdir(parents=True, exist_ok=True)
    budget = a.budget if a.budget is not None else (240 if a.dry_run else 450)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ddk-gpu-check-") as tmp:
        report = run_stages(Ctx(a.dry_run, a.out.resolve(), Path(tmp)), budget, only)
    failed = [n for n, s in report["stages"].items() if s["status"] == "failed"]
    print(f"\n{(a.out / 'check.md')} and check.json written; {len(report['stages'])} stages in "
          f"{time.perf_counter() - t0:.0f} s; " + (f"FAILED: {', '.join(failed)}" if failed
                                                   else "none failed"))
    print((a.out / "check.md").read_text().split("\n## ", 1)[0])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
