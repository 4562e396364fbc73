"""Typed config values: a bad value in a --config file (or a CacheJobConfig) is one line
naming the option (and the file), before anything is loaded or created; and where the
corpus lives, or how its path is spelled, does not make a different store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from ddk.cache.cache_job.config import CacheJobConfig, apply_defaults, validate
from ddk.cache.corpus.sources import DomainSpec
from ddk.cache.errors import ConfigError
from ddk.cli.main import cli

#: a small real job: flags for every key a case does not set itself
BUDGET = {"k": "4", "seq-len": "32", "val-sequences": "2", "max-train-sequences": "4",
          "sequences-per-shard": "4"}
VAL_REASON = ("; DDK needs validation sequences in every domain (it weights domains by the "
              "student-teacher loss gap measured on them)")


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def cache_teacher(teacher: Path, corpus: dict[str, Path | str], out: Path, *args: str,
                  skip: str = "") -> Result:
    """`ddk cache-teacher` on a real tiny teacher, with BUDGET flags except `skip`'s."""
    argv = ["cache-teacher", "--teacher", str(teacher), "-o", str(out), "-q", *args]
    for name, path in corpus.items():
        argv += ["--domain", f"{name}={path}"]
    for key, value in BUDGET.items():
        if key != skip.replace("_", "-"):
            argv += [f"--{key}", value]
    return CliRunner().invoke(cli, argv)


def assert_one_line_error(r: Result, line: str) -> None:
    assert r.exit_code == 1, (r.stdout, r.stderr)
    assert isinstance(r.exception, SystemExit), r.exception  # no traceback
    assert (r.stdout, r.stderr) == ("", f"error: {line}\n")


# ---------------------------------------------------------------- bad config-file values

BAD_VALUES = [  # (key as written, TOML value, message after the key)
    ("overwrite", '"false"', "must be true or false (a boolean, unquoted), got 'false' (string)"),
    ("k", "8.5", "must be an integer, got 8.5 (float)"),
    ("seq-len", '"64"', "must be an integer, got '64' (string)"),
    ("k", "[8]", "must be an integer, got [8] (list)"),
    ("batch_size", "true", "must be an integer, got true (boolean)"),
    ("val-sequences", "1.0", "must be an integer, got 1.0 (float)"),
    ("backend", '"onnx"', "must be one of transformers, vllm, got 'onnx' (string)"),
    ("dtype", "16", "must be one of fp32, bf16, fp16, auto, got 16 (integer)"),
    ("codec-profile", "true", "must be one of "),
    ("logprob-step", '"0.01"', "must be a number, got '0.01' (string)"),
    ("logprob-step", "true", "must be a number, got true (boolean)"),
    ("quiet", "1", "must be true or false (a boolean, unquoted), got 1 (integer)"),
    ("enforce-eager", '"no"', "must be true or false (a boolean, unquoted), got 'no' (string)"),
    ("device", "0", "must be a string, got 0 (integer)"),
    ("teacher", "[]", "must be a string, got [] (list)"),
    ("tensor-parallel-size", "2.0", "must be an integer, got 2.0 (float)"),
    # ranges, of the CacheJobConfig field the option fills
    ("k", "0", "must be >= 1, got 0"),
    ("seq-len", "1", "must be >= 2, got 1"),
    ("val-sequences", "0", "must be >= 1, got 0" + VAL_REASON),
    ("max-train-sequences", "0", "must be >= 1, got 0 (or None: no cap)"),
    ("worker-index", "-1", "must be >= 0, got -1"),
    ("logprob-step", "0.5", "must be in (0, 0.02] nats (max error = step / 2), got 0.5"),
    ("device", '""', "must be a non-empty string, got '' (string)"),
]


@pytest.mark.parametrize("key, value, message", BAD_VALUES,
                         ids=[f"{k}={v}" for k, v, _ in BAD_VALUES])
def test_bad_toml_value_is_refused_before_anything_is_created(
        tmp_path, tiny_teacher_dir, small_corpus, key, value, message):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f"{key} = {value}\n", encoding="utf-8")
    out = tmp_path / "out"
    r = cache_teacher(tiny_teacher_dir, {"code": small_corpus["code"]}, out,
                      "--config", str(cfg), skip=key)
    assert r.exit_code == 1, (r.stdout, r.stderr)
    assert isinstance(r.exception, SystemExit), r.exception
    assert r.stdout == ""
    assert r.stderr.startswith(f"error: config file {cfg}: {key!r} {message}")
    assert r.stderr.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("text, message", [
    ('overwrite: "false"\n', ("'overwrite' must be true or false (a boolean, unquoted), "
                             "got 'false' (string)")),
    ("k: 8.5\n", "'k' must be an integer, got 8.5 (float)"),
    ("seq-len: '64'\n", "'seq-len' must be an integer, got '64' (string)"),
    ("k: [8]\n", "'k' must be an integer, got [8] (list)"),
    ("k: ~\n", "'k' must be an integer, got null"),
    ("dtype: 16\n", "'dtype' must be one of fp32, bf16, fp16, auto, got 16 (integer)"),
])
def test_bad_yaml_value_is_refused(tmp_path, tiny_teacher_dir, small_corpus, text, message):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    r = cache_teacher(tiny_teacher_dir, {"code": small_corpus["code"]}, out,
                      "--config", str(cfg), skip=text.split(":")[0])
    assert_one_line_error(r, f"config file {cfg}: {message}")
    assert not out.exists()


def test_a_bad_file_value_is_refused_even_when_a_flag_overrides_it(tmp_path, tiny_teacher_dir,
                                                                    small_corpus):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text("k = 8.5\n", encoding="utf-8")
    out = tmp_path / "out"
    r = cache_teacher(tiny_teacher_dir, {"code": small_corpus["code"]}, out,
                      "--config", str(cfg))  # BUDGET has --k 4
    assert_one_line_error(r, f"config file {cfg}: 'k' must be an integer, got 8.5 (float)")
    assert not out.exists()


@pytest.mark.parametrize("key", ["json", "domain", "domain_args", "as_json", "config",
                                 "config_path"])
def test_keys_that_are_not_file_options(tmp_path, key):
    """Only options named by their long flag; --json is `as_json`, --domain `domain_args`."""
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f"{key} = true\n", encoding="utf-8")
    r = CliRunner().invoke(cli, ["cache-teacher", "--config", str(cfg), "-o",
                                 str(tmp_path / "out")])
    assert_one_line_error(r, f"{cfg}: unknown option {key!r}; see `ddk cache-teacher --help` "
                             "for the option names")
    assert not (tmp_path / "out").exists()


def test_string_overwrite_leaves_an_existing_store_untouched(tmp_path, tiny_teacher_dir,
                                                              small_corpus):
    out = tmp_path / "cache"
    corpus = {"code": small_corpus["code"]}
    first = cache_teacher(tiny_teacher_dir, corpus, out)
    assert first.exit_code == 0, (first.stdout, first.stderr)
    before = tree_bytes(out)
    assert before

    cfg = tmp_path / "cfg.toml"  # another k, so a store that `overwrite` wipes
    cfg.write_text('overwrite = "false"\nk = 8\n', encoding="utf-8")
    r = cache_teacher(tiny_teacher_dir, corpus, out, "--config", str(cfg), skip="k")
    assert_one_line_error(r, f"config file {cfg}: 'overwrite' must be true or false "
                             "(a boolean, unquoted), got 'false' (string)")
    assert tree_bytes(out) == before

    cfg.write_text("overwrite = false\nk = 8\n", encoding="utf-8")  # the boolean: kept, refused
    r = cache_teacher(tiny_teacher_dir, corpus, out, "--config", str(cfg), skip="k")
    assert r.exit_code == 1 and r.stderr.startswith(f"error: {out} holds a cache built with "
                                                    "different parameters (k)"), r.stderr
    assert tree_bytes(out) == before


def test_val_sequences_zero_is_refused_before_the_store_is_created(tmp_path, tiny_teacher_dir,
                                                                   small_corpus):
    out = tmp_path / "out"
    r = cache_teacher(tiny_teacher_dir, {"code": small_corpus["code"]}, out,
                      "--val-sequences", "0", skip="val-sequences")
    assert_one_line_error(r, "--val-sequences must be >= 1, got 0" + VAL_REASON)
    assert not out.exists()


def test_good_file_values_reach_the_job_typed(tmp_path, monkeypatch):
    class Job(Exception):
        pass

    def stand_in(cfg: CacheJobConfig) -> None:
        raise Job(cfg)

    monkeypatch.setattr("ddk.cache.cache_job.run.run_cache_job", stand_in)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("k: 8\noverwrite: true\nquiet: true\nlogprob-step: 0.01\nbackend: vllm\n"
                   "gpu-memory-utilization: 1\nenforce-eager: false\nseed: -3\n",
                   encoding="utf-8")
    r = CliRunner().invoke(cli, ["cache-teacher", "--config", str(cfg)])
    assert isinstance(r.exception, Job), (r.stdout, r.stderr)
    job = r.exception.args[0]
    assert (job.k, job.overwrite, job.progress, job.logprob_step, job.backend, job.seed) == (
        8, True, False, 0.01, "vllm", -3)
    assert job.engine_options == {"gpu_memory_utilization": 1.0, "enforce_eager": False}
    assert type(job.engine_options["gpu_memory_utilization"]) is float


# ---------------------------------------------------------------- validate(CacheJobConfig)

API_CASES = [
    ({"k": 8.5}, "--k must be an integer, got 8.5 (float)"),
    ({"k": True}, "--k must be an integer, got true (boolean)"),
    ({"overwrite": "false"}, "--overwrite must be true or false (a boolean), got 'false' (string)"),
    ({"seq_len": "64"}, "--seq-len must be an integer, got '64' (string)"),
    ({"val_sequences": 0}, "--val-sequences must be >= 1, got 0" + VAL_REASON),
    ({"max_train_sequences": 0}, "--max-train-sequences must be >= 1, got 0 (or None: no cap)"),
    ({"max_train_sequences": 2.0}, "--max-train-sequences must be an integer, got 2.0 (float)"),
    ({"batch_size": None}, "--batch-size must be an integer, got null"),
    ({"seed": 1.5}, "--seed must be an integer, got 1.5 (float)"),
    ({"seed": "0"}, "--seed must be an integer, got '0' (string)"),
    ({"dtype": "fp8"}, "--dtype must be one of fp32, bf16, fp16, auto, got 'fp8' (string)"),
    ({"backend": "onnx"}, "--backend must be one of transformers, vllm, got 'onnx' (string)"),
    ({"codec_profile": 1}, "--codec-profile must be one of "),
    ({"device": ""}, "--device must be a non-empty string, got '' (string)"),
    ({"device": 0}, "--device must be a non-empty string, got 0 (integer)"),
    ({"output": Path("cache")}, "--output must be a non-empty string, got PosixPath"),
    ({"teacher": 3}, ("--teacher must be a model directory path (None: the default teacher), "
                     "got 3 (integer)")),
    ({"logprob_step": "0.01"}, "--logprob-step must be a number, got '0.01' (string)"),
    ({"logprob_step": float("nan")}, "--logprob-step must be in (0, 0.02] nats"),
    ({"worker_index": -1}, "--worker-index must be >= 0, got -1"),
    ({"num_workers": 2, "worker_index": 2}, "--worker-index must be in [0, 1], got 2"),
    ({"progress": "no"}, "progress must be true or false (a boolean), got 'no' (string)"),
    ({"engine_options": [("enforce_eager", True)]}, ("engine_options must be a dict of vLLM "
                                                    "engine arguments by name, got [(")),
    ({"domains": [("code", "data/code")]}, "domains must be a list of DomainSpec, got [("),
    ({"domains": (DomainSpec("code", "x"),)}, "domains must be a list of DomainSpec, got ("),
    ({"domains": [DomainSpec("code", Path("x"))]}, ("domains 'code': source must be a "
                                                   "non-empty string, got PosixPath")),
]


@pytest.mark.parametrize("fields, message", API_CASES,
                         ids=[",".join(f"{k}={v!r}" for k, v in f.items()) for f, _ in API_CASES])
def test_validate_checks_types_and_ranges(fields, message):
    cfg = apply_defaults(CacheJobConfig(**fields))
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert str(e.value).startswith(message)


def test_validate_accepts_good_configs():
    validate(apply_defaults(CacheJobConfig()))
    validate(apply_defaults(CacheJobConfig(
        domains=[DomainSpec("code", "data/code")], teacher=Path("/models/t"), k=1, seq_len=2,
        val_sequences=1, max_train_sequences=None, seed=-1, logprob_step=1 / 64,
        engine_options={"enforce_eager": True}, progress=False, overwrite=True, dtype="bf16")))


# ---------------------------------------------------------------- same store, other spelling

def test_other_spellings_of_the_corpus_path_are_the_same_store(tmp_path, tiny_teacher_dir,
                                                               small_corpus, monkeypatch):
    """Content fingerprints decide, not paths as written (job_key leaves them out)."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "cache"
    absolute = {n: small_corpus[n].resolve() for n in ("code", "prose")}
    first = cache_teacher(tiny_teacher_dir, absolute, out)
    assert first.exit_code == 0, (first.stdout, first.stderr)
    assert "wrote" in first.stdout
    before = tree_bytes(out)

    teacher = os.path.relpath(tiny_teacher_dir, tmp_path)  # the teacher spelled relative too
    for corpus in ({n: f"corpus/{n}" for n in absolute},
                   {n: f"./corpus/../corpus/{n}/" for n in absolute}):
        again = cache_teacher(Path(teacher), corpus, Path("cache"))
        assert again.exit_code == 0, (again.stdout, again.stderr)
        assert again.stdout == "cache: nothing to do (this worker's shards are already done; " \
                               "store complete)\n"

    # a config file's relative paths resolve against its directory: one more spelling
    (tmp_path / "jobs").mkdir()
    cfg = tmp_path / "jobs" / "job.toml"
    cfg.write_text('[domains]\ncode = "../corpus/code"\nprose = "../corpus/prose"\n',
                   encoding="utf-8")
    again = cache_teacher(tiny_teacher_dir, {}, out, "--config", str(cfg))
    assert again.exit_code == 0, (again.stdout, again.stderr)
    assert "nothing to do" in again.stdout
    assert tree_bytes(out) == before
