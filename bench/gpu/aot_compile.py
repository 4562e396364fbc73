"""Compile every Triton kernel of ddk.kernels for real GPUs, without a GPU, and check for spills.

The interpreter (TRITON_INTERPRET=1) checks the kernels' maths on CPU, not what the GPU
compiler makes of them. This script drives the real public losses (`sparse_kl_loss`,
`fused_linear_sparse_kl_loss`, forward and backward) over every launch the launchers can
produce (logits dtype, ids dtype, vocabulary size and alignment, k, labels/CE, temperature,
gradient mode, the fused LM-head chunks) with a stand-in CUDA driver. Triton's own JIT path
binds and specialises each launch exactly as on a GPU; its `jit_cache_hook` records the
specialisation instead of compiling. Each distinct specialisation is then compiled ahead of
time for sm_80 and sm_90 down to the cubin (`JITFunction.preload`), and ptxas -v reports
registers and spills.

    python bench/gpu/aot_compile.py                   # check; exit 1 on a spill or an error
    python bench/gpu/aot_compile.py --write-docs      # also refresh the table in docs/kernels.md
    python bench/gpu/aot_compile.py --json out.json   # every variant, for tests and tools

Fails (exit 1) on a compile error, a launch case that reached no kernel, any spill (a
stack frame, spill stores or spill loads), or fewer than HEADROOM registers left below
the ceiling the launch's CTA size allows. Runs on CPU (tests/kernels/test_aot_compile.py
runs it in CI); TRITON_INTERPRET must not be set.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9's default, said aloud

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.runtime import driver as triton_driver

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "kernels.md"
BEGIN, END = "<!-- aot-table -->", "<!-- /aot-table -->"

ARCHS = (80, 90)
# Registers a kernel must leave free below its ceiling: room for a compiler upgrade or a
# small kernel change before the first spill.
HEADROOM = 8
REGS_PER_SM = 65536  # sm_80 and sm_90: 64 Ki 32-bit registers per SM, and per CTA
MAX_REGS_PER_THREAD = 255

# The launch space (issue 12): every value the launchers must handle.
LOGIT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
ID_DTYPES = {"int32": torch.int32, "int64": torch.int64}
VOCABS = (49152, 50257, 151936, 1000)
KS = (1, 8, 64, 128)
LABELS = ("none", "labels", "labels+ce")  # no labels; labels with ce_weight 0; CE on
TEMPERATURES = (1.0, 2.0)
GRADS = ("none", "separate", "inplace")  # forward only; gradient buffer; in place (trainer)
FUSED_HIDDEN = 8  # the hidden size does not reach the kernels: keep the CPU matmuls cheap


class CheckError(RuntimeError):
    """The environment cannot run this check (message says what to change)."""


class _StandInDriver:
    """Enough of a CUDA driver for Triton to bind and specialise launches for `arch`."""

    def __init__(self, arch: int) -> None:
        self.arch = arch

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", self.arch, 32)

    def get_current_device(self) -> int:
        return self.arch  # one binder cache per target

    def get_current_stream(self, device: int | None = None) -> int:
        return 0


@dataclass
class Variant:
    """One distinct compile of one kernel for one target, and the launch cases that reach it."""

    kernel: str
    arch: int
    spec: str  # Triton's serialised specialisation (signature, constexprs, attrs, options)
    cases: list[dict] = field(default_factory=list)
    regs: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack_frame: int | None = None
    shared: int | None = None
    num_warps: int | None = None
    seconds: float | None = None
    error: str | None = None

    @property
    def ceiling(self) -> int:
        threads = 32 * (self.num_warps or 1)
        return min(MAX_REGS_PER_THREAD, REGS_PER_SM // threads // 8 * 8)

    def problems(self) -> list[str]:
        if self.error:
            return [f"compile error: {self.error}"]
        out = []
        if self.spill_stores or self.spill_loads or self.stack_frame:
            out.append(
                f"spills: {self.spill_stores} B stores, {self.spill_loads} B loads, "
                f"{self.stack_frame} B stack frame"
            )
        if self.regs is not None and self.regs > self.ceiling - HEADROOM:
            out.append(
                f"{self.regs} registers leave less than {HEADROOM} below the ceiling of "
                f"{self.ceiling} at {self.num_warps} warps"
            )
        return out


# -- 1. capture: drive the public losses, record what Triton would compile -------------------


# --quick (the GPU check's dry run): one launch per constexpr combination, unaligned vocabulary
QUICK = {"dtypes": ("bf16",), "ids": ("int32",), "vocabs": (50257,), "ks": (64,)}
FULL = {"dtypes": tuple(LOGIT_DTYPES), "ids": tuple(ID_DTYPES), "vocabs": VOCABS, "ks": KS}


def _case(loss: str, dt: str, idt: str, v: int, k: int, lab: str, t: float, grad: str) -> dict:
    return {"loss": loss, "dtype": dt, "ids": idt, "V": v, "k": k, "labels": lab, "T": t,
            "grad": grad}


def _cases(space: dict = FULL) -> list[dict]:
    """The launch cases: the full product of the launch space through sparse_kl_loss, and the
    fused LM-head path (its chunks, with the gradient in place or none) over every logits
    dtype and vocabulary, at the smallest k (first ids dtype) and the largest (last). The
    fused grid is smaller because its CPU matmuls dominate the capture; its chunks reach the
    kernel with the same strides and alignment as sparse_kl_loss in place (chunks start at
    multiples of 64 rows)."""
    dts, idts, vocabs, ks = space["dtypes"], space["ids"], space["vocabs"], space["ks"]
    out = [
        _case("sparse", *c)
        for c in itertools.product(dts, idts, vocabs, ks, LABELS, TEMPERATURES, GRADS)
    ]
    ends = dict.fromkeys(((idts[-1], ks[0]), (idts[0], ks[-1])))
    for dt, v, (idt, k) in itertools.product(dts, vocabs, ends):
        out.append(_case("fused", dt, idt, v, k, "labels+ce", 1.0, "inplace"))
        out.append(_case("fused", dt, idt, v, k, "labels", 2.0, "none"))
    return out


def _inputs(case: dict, n: int, gen: torch.Generator):
    v, k = case["V"], case["k"]
    # k distinct ids per row, cheaply (a [n, V] draw + topk would dominate the capture)
    start = torch.randint(0, v, (n, 1), generator=gen)
    ids = ((start + torch.arange(k) * 7919) % v).to(ID_DTYPES[case["ids"]])
    lp = torch.log_softmax(torch.randn(n, k + 1, generator=gen), dim=-1)
    labels = None if case["labels"] == "none" else torch.randint(0, v, (n,), generator=gen)
    return ids, lp[:, :k].contiguous(), lp[:, k].contiguous(), labels


def _drive(case: dict, gen: torch.Generator) -> None:
    """Run one case through the public loss with backend='triton' (kernels are not run)."""
    from ddk.kernels import fused_linear_sparse_kl_loss, sparse_kl_loss
    from ddk.kernels.fused_linear import default_chunk_rows

    dtype = LOGIT_DTYPES[case["dtype"]]
    grad = case["grad"] != "none"
    opts = {
        "kl_weight": 0.5,
        "ce_weight": 1.0 if case["labels"] == "labels+ce" else 0.0,
        "temperature": case["T"],
        "backend": "triton",
    }
    if case["loss"] == "sparse":
        n = 2
        ids, lp, tail, labels = _inputs(case, n, gen)
        x = torch.zeros(n, case["V"], dtype=dtype, requires_grad=grad)
        for reduction in ("mean", "none") if grad else ("mean",):
            loss = sparse_kl_loss(
                x,
                ids,
                lp,
                tail,
                labels,
                reduction=reduction,
                inplace_grad=case["grad"] == "inplace",
                **opts,
            )
            if grad:  # a grad_output != 1 runs the rescaling kernel (scalar / per row)
                (loss * 0.5 if reduction == "mean" else loss * torch.rand(n)).sum().backward()
        return
    # fused LM head: two chunks of the default size, the second one short
    n = default_chunk_rows(1 << 30, case["V"], dtype) + 3
    n = min(n, 4096)
    ids, lp, tail, labels = _inputs(case, n, gen)
    h = torch.zeros(n, FUSED_HIDDEN, dtype=dtype, requires_grad=grad)
    w = torch.zeros(case["V"], FUSED_HIDDEN, dtype=dtype, requires_grad=grad)
    loss = fused_linear_sparse_kl_loss(h, w, ids, lp, tail, labels, **opts)
    if grad:
        loss.backward()


class _EveryTarget:
    """Stands in for a @triton.jit kernel in triton_impl: each launch goes through Triton's
    real JIT path once per target (binding and specialisation; the hook skips the compile)."""

    def __init__(self, fn, archs: tuple[int, ...], current: dict) -> None:
        self.fn, self.archs, self.current = fn, archs, current

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            for arch in self.archs:
                self.current["arch"] = arch
                triton_driver.set_active(_StandInDriver(arch))
                self.fn[grid](*args, **kwargs)

        return launch


def capture(
    archs: tuple[int, ...] = ARCHS, space: dict = FULL
) -> dict[tuple[str, int, str], Variant]:
    """Every distinct (kernel, target, specialisation) the launchers produce, with its cases."""
    if os.environ.get("TRITON_INTERPRET"):
        raise CheckError("unset TRITON_INTERPRET: the check compiles the real JIT functions")
    from ddk.kernels import triton_impl

    variants: dict[tuple[str, int, str], Variant] = {}
    current: dict = {}

    def record(*, fn, compile, **_):
        spec = compile.get("specialization_data")
        if spec is None:
            raise CheckError(f"triton {triton.__version__}: jit_cache_hook gives no "
                             "specialization_data; this check needs triton >= 3.6")
        name = f"{fn.module}.{fn.name}"
        vk = (name, current["arch"], spec)
        if vk not in variants:
            variants[vk] = Variant(name, current["arch"], spec)
        variants[vk].cases.append(current["case"])
        current["launches"] += 1
        return True  # handled: Triton skips the compile and the launch

    kernels = jit_functions()
    saved = {name: getattr(triton_impl, name) for name in ("is_interpreted", *kernels)}
    old_driver, old_hook = triton_driver._active, knobs.runtime.jit_cache_hook
    missing = []
    try:
        triton_impl.is_interpreted = lambda: True  # dispatch: accept CPU tensors for "triton"
        for name, fn in kernels.items():
            setattr(triton_impl, name, _EveryTarget(fn, archs, current))
        knobs.runtime.jit_cache_hook = record
        gen = torch.Generator().manual_seed(0)
        for case in _cases(space):
            current.update(case=case, launches=0)
            _drive(case, gen)
            if current["launches"] == 0:
                missing.append(case)
    finally:
        for name, obj in saved.items():
            setattr(triton_impl, name, obj)
        knobs.runtime.jit_cache_hook = old_hook
        triton_driver._active = old_driver  # reset_active() would need a real GPU driver
    if missing:
        raise CheckError(f"{len(missing)} launch cases reached no kernel, e.g. {missing[0]}")
    return variants


# -- 2. compile each variant ahead of time ---------------------------------------------------

_PTXAS = {
    "regs": re.compile(r"Used (\d+) registers"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "stack_frame": re.compile(r"(\d+) bytes stack frame"),
}
_JIT_FUNCTIONS: dict[str, object] = {}


def jit_functions() -> dict[str, object]:
    """Every @triton.jit kernel of ddk.kernels.triton_impl, by name."""
    from ddk.kernels import triton_impl

    return {
        name: obj
        for name, obj in vars(triton_impl).items()
        if isinstance(obj, triton.runtime.jit.JITFunction)
    }


def _compile_one(job: tuple[str, int, str]) -> dict:
    kernel, arch, spec = job
    fn = _JIT_FUNCTIONS[kernel.rsplit(".", 1)[1]]
    triton_driver.set_active(_StandInDriver(arch))
    knobs.compilation.always_compile = True  # a cache hit would print no ptxas log
    knobs.nvidia.dump_ptxas_log = True
    log = io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            compiled = fn.preload(spec)
    except Exception as e:  # noqa: BLE001  (a compile error is a result, reported per variant)
        return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"}
    out = {"seconds": time.perf_counter() - t0}
    text = log.getvalue()
    for name, pattern in _PTXAS.items():
        m = pattern.search(text)
        if m is None:
            return {"error": f"no '{name}' in the ptxas log: {text[-300:]!r}"}
        out[name] = int(m.group(1))
    out["shared"] = int(compiled.metadata.shared)
    out["num_warps"] = int(compiled.metadata.num_warps)
    return out


def compile_all(variants: dict, jobs: int) -> None:
    """Fill in the ptxas figures of every variant, `jobs` compiles at a time."""
    import multiprocessing as mp

    _JIT_FUNCTIONS.update(jit_functions())
    todo = list(variants.values())
    work = [(v.kernel, v.arch, v.spec) for v in todo]
    with contextlib.ExitStack() as stack:
        if jobs > 1:
            pool = stack.enter_context(ProcessPoolExecutor(jobs, mp_context=mp.get_context("fork")))
            results = pool.map(_compile_one, work, chunksize=4)
        else:
            results = map(_compile_one, work)
        for v, r in zip(todo, results):
            for k, val in r.items():
                setattr(v, k, val)


# -- 3. report ---------------------------------------------------------------------------------


def describe(v: Variant) -> dict:
    """The launch values of a variant: each case field's distinct values, in launch order."""
    out = {}
    for key in ("loss", "dtype", "ids", "V", "k", "labels", "T", "grad"):
        vals = []
        for c in v.cases:
            if c[key] not in vals:
                vals.append(c[key])
        out[key] = vals
    spec = json.loads(v.spec)
    consts = dict(zip((k[0] for k in spec["constant_keys"]), spec["constant_vals"]))
    names = list(spec["signature"])
    out["constexpr"] = {
        names[i]: (val["constexpr"] if isinstance(val, dict) else val)
        for i, val in consts.items()
        if spec["signature"][names[i]] == "constexpr"
    }
    out["num_warps"] = spec["options"]["num_warps"]
    return out


def _short(vals: list) -> str:
    return "/".join(str(x) for x in vals)


def markdown(variants: dict) -> str:
    """The docs table: one row per launch variant, sm_80 and sm_90 side by side."""
    rows: dict[tuple, dict[int, Variant]] = {}
    for v in variants.values():
        d = describe(v)
        cx = d["constexpr"]
        kernel = v.kernel.rsplit(".", 1)[1]
        label = (
            kernel,
            _short(d["dtype"]),
            _short(d["ids"]),
            _short(d["V"]),
            _short(d["k"]),
            _short(d["labels"]),
            _short(d["T"]),
            _short(d["grad"]),
            " ".join(f"{n}={int(x) if isinstance(x, bool) else x}" for n, x in cx.items()),
            str(d["num_warps"]),
        )
        rows.setdefault(label, {})[v.arch] = v
    head = (
        "| kernel | logits | ids | V | k | labels | T | grad | constexprs | warps |"
        + "".join(f" sm_{a} regs | sm_{a} spill B | sm_{a} smem B |" for a in ARCHS)
    )
    lines = [head, "|" + "---|" * (10 + 3 * len(ARCHS))]
    for label in sorted(rows):
        cells = list(label)
        for a in ARCHS:
            v = rows[label].get(a)
            if v is None or v.error:
                cells += ["error" if v else "-", "", ""]
            else:
                cells += [f"{v.regs}/{v.ceiling}", str(v.spill_stores), str(v.shared)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(variants: dict) -> str:
    """Per kernel and target: variants, the register range against the ceiling, spills."""
    lines = []
    by: dict[tuple[str, int], list[Variant]] = {}
    for v in variants.values():
        by.setdefault((v.kernel.rsplit(".", 1)[1], v.arch), []).append(v)
    lines.append("| kernel | target | variants | registers (min-max) | ceiling | spilling variants |")
    lines.append("|---|---|---:|---|---|---:|")
    for (kernel, arch), vs in sorted(by.items()):
        ok = [v for v in vs if not v.error]
        regs = [v.regs for v in ok]
        ceil = sorted({v.ceiling for v in ok})
        spilling = sum(1 for v in ok if v.spill_stores or v.spill_loads or v.stack_frame)
        errors = len(vs) - len(ok)
        lines.append(
            f"| {kernel} | sm_{arch} | {len(vs)}{f' ({errors} errors)' if errors else ''} | "
            f"{min(regs) if regs else '-'}-{max(regs) if regs else '-'} | "
            f"{_short(ceil)} | {spilling} |"
        )
    return "\n".join(lines)


def docs_block(variants: dict, seconds: float) -> str:
    return (
        f"{BEGIN}\n"
        f"Generated by `python bench/gpu/aot_compile.py --write-docs` with triton "
        f"{triton.__version__} (its bundled ptxas), {len(variants)} compiles in "
        f"{seconds:.0f} s. `regs` is registers per thread / the ceiling at that CTA size "
        f"(64 Ki registers per SM / threads); `spill B` is ptxas's spill stores per thread.\n\n"
        f"{summary(variants)}\n\n"
        f"<details><summary>Every variant</summary>\n\n{markdown(variants)}\n\n</details>\n"
        f"{END}"
    )


def write_docs(block: str, path: Path = DOCS) -> None:
    text = path.read_text()
    if BEGIN in text:
        pre, rest = text.split(BEGIN, 1)
        post = rest.split(END, 1)[1]
        text = pre + block + post
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    ap.add_argument("--archs", default=",".join(map(str, ARCHS)), help="e.g. 80,90")
    ap.add_argument("--json", type=Path, help="write every variant here")
    ap.add_argument("--write-docs", action="store_true", help="refresh the docs/kernels.md table")
    ap.add_argument("--quick", action="store_true",
                    help="one launch per constexpr combination (bf16, int32, V=50257, k=64)")
    args = ap.parse_args(argv)
    archs = tuple(int(a) for a in args.archs.split(","))
    t0 = time.perf_counter()
    try:
        if args.quick and args.write_docs:
            raise CheckError("--write-docs needs the full launch space: drop --quick")
        variants = capture(archs, QUICK if args.quick else FULL)
    except CheckError as e:
        print(f"aot_compile: error: {e}", file=sys.stderr)
        return 2
    t_capture = time.perf_counter() - t0
    n_cases = len(_cases(QUICK if args.quick else FULL)) * len(archs)
    print(f"captured {len(variants)} distinct compiles from {n_cases} launch cases "
          f"in {t_capture:.1f} s; compiling with {args.jobs} jobs ...", flush=True)
    compile_all(variants, args.jobs)
    seconds = time.perf_counter() - t0
    print(summary(variants))
    bad = [(v, p) for v in variants.values() for p in v.problems()]
    for v, p in bad[:20]:
        print(f"FAIL {v.kernel.rsplit('.', 1)[1]} sm_{v.arch} {describe(v)}: {p}")
    if len(bad) > 20:
        print(f"... and {len(bad) - 20} more")
    if args.json:
        rows = [{**asdict(v), "ceiling": v.ceiling, "launch": describe(v),
                 "problems": v.problems()} for v in variants.values()]
        for r in rows:
            r.pop("cases")
        args.json.write_text(json.dumps({
            "triton": triton.__version__, "torch": torch.__version__, "seconds": seconds,
            "capture_seconds": t_capture, "headroom": HEADROOM, "variants": rows,
            "kernels": sorted(jit_functions()), "markdown": markdown(variants),
        }, indent=1))
    if args.write_docs:
        write_docs(docs_block(variants, seconds))
        print(f"wrote the table into {DOCS.relative_to(REPO)}")
    print(f"{len(variants)} compiles, {len(bad)} problems, {seconds:.0f} s in all")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
