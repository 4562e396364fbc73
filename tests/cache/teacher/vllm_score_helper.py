"""Run VLLMTeacher in its own process (the vLLM environment) and save what it scored.

Used by test_vllm_backend.py: vLLM in-process mode takes over torch's thread settings and
may live in another virtualenv (DDK_VLLM_PYTHON), so the tests never import it themselves.

    python vllm_score_helper.py SPEC.json

SPEC: {"model": dir, "inputs": npz of [B, L] arrays, "output": npz path,
       "jobs": [{"name": array name, "k": int}], "batch_size": int, "dict_check": name}
For each job the output holds `<name>_k<k>_<field>` for the four TeacherScores fields; the
"dict_check" job is also scored through vLLM's non-flat list[dict] output (`dict_` prefix).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def main(spec_path: str) -> None:
    from ddk.cache.errors import TeacherError
    from ddk.cache.teacher.vllm_backend import VLLMTeacher

    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    inputs = np.load(spec["inputs"])
    t0 = time.perf_counter()
    teacher = VLLMTeacher(spec["model"], dtype="fp32", enforce_eager=True, seed=0,
                          max_model_len=spec.get("max_model_len"),
                          batch_size=spec["batch_size"], kv_cache_memory_bytes=1 << 30)
    out: dict[str, np.ndarray] = {}
    fields = ("topk_ids", "topk_logprobs", "tail_logmass", "target_logprob")
    for job in spec["jobs"]:
        scores = teacher.score(inputs[job["name"]], job["k"])
        for f in fields:
            out[f"{job['name']}_k{job['k']}_{f}"] = getattr(scores, f)
        if job["name"] == spec.get("dict_check"):
            teacher._flat = False  # same engine, list[dict] output: exercises the fallback
            scores = teacher.score(inputs[job["name"]], job["k"])
            teacher._flat = True
            for f in fields:
                out[f"dict_{job['name']}_k{job['k']}_{f}"] = getattr(scores, f)
    errors = {}  # the backend's own checks, on the live engine
    too_long = np.full((1, teacher.max_seq_len + 1), 5, dtype=np.int64)
    for name, call in (("too_long", lambda: teacher.score(too_long, 4)),
                       ("k_zero", lambda: teacher.score(too_long[:, :8], 0)),
                       ("k_above_vocab", lambda: teacher.score(too_long[:, :8],
                                                               teacher.vocab_size + 1))):
        try:
            call()
            errors[name] = None
        except TeacherError as e:
            errors[name] = str(e)
    info = {"errors": errors, "vocab_size": teacher.vocab_size, "max_seq_len": teacher.max_seq_len,
            "identity": teacher.identity, "backend_name": teacher.backend_name,
            "seconds": time.perf_counter() - t0}
    teacher.close()
    np.savez(spec["output"], info=np.array(json.dumps(info)), **out)


if __name__ == "__main__":
    main(sys.argv[1])
