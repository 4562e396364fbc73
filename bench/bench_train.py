"""Training throughput of ddk vs kd vs cpt on the same student and cache (one code path).

Each method trains `--steps` steps from the same student with the same options; tokens/s is
measured from the per-step records (step wall time, which includes any wait for data), after
`--skip` warm-up steps, so validation/re-weighting time is not counted. The ratio ddk/cpt is
the price of distillation over plain continued pre-training (target on GPU: >= 0.9).

    python bench/bench_train.py --cache CACHE --student STUDENT [--methods ddk,kd,cpt]
        [--steps 20] [--skip 3] [--batch-size 4] [--grad-accum 1] [--device cpu|cuda]
        [--rounds 3] [--fused-lm-head on|off|auto] [--json]

A student sharing a teacher's tokenizer can be cut from the teacher itself (first/last and
evenly spaced layers kept), which is also what the closing-note demo uses:

    python bench/bench_train.py make-student --teacher T --layers 8 --out STUDENT
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path


def make_student(teacher: str, layers: int, out: str) -> Path:
    """Keep `layers` evenly spaced decoder layers of the teacher (the demo's student)."""
    from ddk.cache.demo import derive_student

    return derive_student(Path(teacher), Path(out), layers)


def _run(cache: str, student: str, method: str, steps: int, skip: int, batch_size: int,
         grad_accum: int, device: str | None, run: Path, fused_lm_head: bool | None = None) -> dict:
    from ddk.cache.train.config import TrainConfig
    from ddk.cache.train.loop import train
    from ddk.cache.train.metrics import read_metrics

    shutil.rmtree(run, ignore_errors=True)
    res = train(TrainConfig(cache=cache, student=student, out=str(run), method=method,
                            max_steps=steps, interval=steps, val_sequences=2,
                            batch_size=batch_size, grad_accum=grad_accum, checkpoint_every=0,
                            progress=False, device=device, fused_lm_head=fused_lm_head))
    recs = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "step"][skip:]
    secs = sum(res.summary["tokens_per_step"] / r["tokens_per_s"] for r in recs)
    return {"tokens_per_s": res.summary["tokens_per_step"] * len(recs) / secs,
            "loader_wait_s": res.summary["loader_wait_s"],
            "device": str(next(res.model.parameters()).device),
            "fused_lm_head": res.summary.get("fused_lm_head")}


def bench(cache: str, student: str, methods: list[str], steps: int, skip: int,
          batch_size: int, grad_accum: int, device: str | None, workdir: Path,
          rounds: int = 1, fused_lm_head: bool | None = None) -> dict:
    """Run every method `rounds` times, interleaved (ddk, cpt, ddk, cpt...), so that a change
    in machine load hits all methods alike; report the median and best round per method.
    `fused_lm_head`: True/False forces the trainer's fused LM head on/off, None lets it choose."""
    import statistics

    out: dict = {"cache": cache, "student": student, "steps": steps, "skip": skip,
                 "batch_size": batch_size, "grad_accum": grad_accum, "rounds": rounds,
                 "fused_lm_head_requested": fused_lm_head,
                 "methods": {m: {"rounds": []} for m in methods}}
    for _ in range(rounds):
        for m in methods:
            r = _run(cache, student, m, steps, skip, batch_size, grad_accum, device, workdir / m,
                     fused_lm_head)
            out["device"] = r.pop("device")
            out["methods"][m]["fused_lm_head"] = r.pop("fused_lm_head")
            out["methods"][m]["rounds"].append(r)
    for v in out["methods"].values():
        tps = [r["tokens_per_s"] for r in v["rounds"]]
        v["tokens_per_s_median"] = statistics.median(tps)
        v["tokens_per_s_best"] = max(tps)
        v["loader_wait_s_max"] = max(r["loader_wait_s"] for r in v["rounds"])
    if "ddk" in methods and "cpt" in methods:
        ddk, cpt = out["methods"]["ddk"], out["methods"]["cpt"]
        out["ddk_over_cpt_median"] = ddk["tokens_per_s_median"] / cpt["tokens_per_s_median"]
        out["ddk_over_cpt_best"] = ddk["tokens_per_s_best"] / cpt["tokens_per_s_best"]
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "make-student":
        ap = argparse.ArgumentParser(prog="bench_train.py make-student")
        ap.add_argument("--teacher", required=True)
        ap.add_argument("--layers", type=int, required=True)
        ap.add_argument("--out", required=True)
        a = ap.parse_args(sys.argv[2:])
        print(make_student(a.teacher, a.layers, a.out))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True)
    ap.add_argument("--student", required=True)
    ap.add_argument("--methods", default="ddk,kd,cpt")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--skip", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--device", default=None)
    ap.add_argument("--rounds", type=int, default=1, help="interleaved repeats per method")
    ap.add_argument("--fused-lm-head", choices=["on", "off", "auto"], default="auto",
                    help="force the trainer's fused LM head on or off (default: auto)")
    ap.add_argument("--workdir", default=None, help="where the runs go (default: a temp dir)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = bench(a.cache, a.student, a.methods.split(","), a.steps, a.skip, a.batch_size,
                  a.grad_accum, a.device, Path(a.workdir or tmp), a.rounds,
                  {"on": True, "off": False, "auto": None}[a.fused_lm_head])
    if a.json:
        print(json.dumps(r))
        return
    print(f"{r['student']} on {r['cache']} ({r['device']}), batch {r['batch_size']} x accum "
          f"{r['grad_accum']}, {r['steps']} steps (first {r['skip']} not timed), "
          f"{r['rounds']} interleaved round(s)")
    for m, v in r["methods"].items():
        print(f"  {m:<4} fused {v['fused_lm_head']!s:<5} median {v['tokens_per_s_median']:>10,.0f} tok/s   best "
              f"{v['tokens_per_s_best']:>10,.0f} tok/s   max loader wait "
              f"{v['loader_wait_s_max']:.2f}s")
    if "ddk_over_cpt_median" in r:
        print(f"  ddk / cpt = {r['ddk_over_cpt_median']:.3f} (median), "
              f"{r['ddk_over_cpt_best']:.3f} (best)")


if __name__ == "__main__":
    main()
