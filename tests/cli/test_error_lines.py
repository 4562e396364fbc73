"""User mistakes and a full disk end in one `error:` line (exit 1), never a traceback, and
leave nothing behind that blocks the corrected command.

Through the real click group, in-process (CliRunner). Damaged model directories are copies
of the session's tiny teacher/student with one file broken; a full disk is an OSError(ENOSPC)
injected into the N-th zarr chunk write or checkpoint torch.save.
"""

from __future__ import annotations

import errno
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from ddk.cli.main import cli

TRAIN = ["--method", "kd", "--kd-mixture", "uniform", "--max-steps", "3", "--interval", "2",
         "--val-sequences", "2", "--batch-size", "2", "--lr", "1e-3", "--min-lr", "1e-4",
         "--device", "cpu", "-q"]
TRAIN_DEVICELESS = [a for a in TRAIN if a not in ("--device", "cpu")]
PROGRESS_BARS = ("Loading weights", "Writing model shards", "%|")


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error_line(r: Result) -> str:
    """The single `error: ...` line of a failed command (asserting there is nothing else
    but progress bars, which the -q tests below look after)."""
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit), r.exception  # not an escaped exception
    assert "Traceback" not in r.output
    lines = [line for line in r.stderr.replace("\r", "\n").splitlines()
             if line.strip() and "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def damage(src: Path, dst: Path, what: str) -> Path:
    """A copy of the model directory `src` at `dst` with its `what` broken."""
    d = shutil.copytree(src, dst)
    if what == "config":  # cut off mid-write: not JSON
        text = (d / "config.json").read_text()
        (d / "config.json").write_text(text[: len(text) // 2])
    elif what == "weights":  # truncated download
        weights = d / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif what == "tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (d / name).unlink()
    else:
        raise ValueError(what)
    return d


#: what the error line says for each damage (besides the directory)
SAYS = {"config": "config.json", "weights": "SafetensorError", "tokenizer": "no tokenizer"}


# -- cache-teacher --------------------------------------------------------------------------
def cache_args(teacher: Path, corpus: dict[str, Path], out: Path, *extra: str) -> list[object]:
    return ["cache-teacher", "--teacher", teacher, "-o", out, "--seq-len", "32", "--k", "4",
            "--val-sequences", "2", "--max-train-sequences", "4", "--sequences-per-shard", "2",
            "--batch-size", "2",
            *[a for name in sorted(corpus) for a in ("--domain", f"{name}={corpus[name]}")],
            *extra]


def test_cache_teacher_with_a_broken_config_json(tiny_teacher_dir, small_corpus, tmp_path):
    teacher = damage(tiny_teacher_dir, tmp_path / "teacher", "config")
    out = tmp_path / "cache"
    line = one_error_line(invoke(*cache_args(teacher, small_corpus, out, "--device", "cpu",
                                             "-q")))
    assert line.startswith(f"error: the teacher's {teacher / 'config.json'} cannot be read (")
    assert "copy the model directory again" in line
    assert not out.exists()
    # the corrected command (a good teacher) runs
    r = invoke(*cache_args(tiny_teacher_dir, small_corpus, out, "--device", "cpu", "-q"))
    assert r.exit_code == 0, r.output


def test_cache_teacher_with_truncated_weights(tiny_teacher_dir, small_corpus, tmp_path):
    teacher = damage(tiny_teacher_dir, tmp_path / "teacher", "weights")
    line = one_error_line(invoke(*cache_args(teacher, small_corpus, tmp_path / "cache",
                                             "--device", "cpu", "-q")))
    assert line.startswith(f"error: cannot load the teacher from {teacher} (SafetensorError: ")
    assert line.endswith("); repair the model directory or copy it again")


def test_cache_teacher_without_tokenizer_files(tiny_teacher_dir, small_corpus, tmp_path):
    teacher = damage(tiny_teacher_dir, tmp_path / "teacher", "tokenizer")
    out = tmp_path / "cache"
    line = one_error_line(invoke(*cache_args(teacher, small_corpus, out, "--device", "cpu",
                                             "-q")))
    assert line == (f"error: the teacher directory {teacher} has no tokenizer (no "
                    "tokenizer.json or tokenizer_config.json); save the tokenizer into it "
                    "with tokenizer.save_pretrained, or copy the complete model directory")
    assert not out.exists()


def test_load_teacher_tokenizer_names_the_problem(tiny_teacher_dir, tmp_path):
    from ddk.cache.errors import TeacherError
    from ddk.cache.teacher.model_dir import load_teacher_tokenizer

    assert load_teacher_tokenizer(tiny_teacher_dir).eos_token_id is not None
    missing = damage(tiny_teacher_dir, tmp_path / "missing", "tokenizer")
    with pytest.raises(TeacherError, match=r"the teacher directory .* has no tokenizer"):
        load_teacher_tokenizer(missing)
    broken = shutil.copytree(tiny_teacher_dir, tmp_path / "broken")
    (broken / "tokenizer.json").write_text('{"version": "1.0", "model": {"vocab": 5}}')
    with pytest.raises(TeacherError) as e:
        load_teacher_tokenizer(broken)
    assert str(e.value).startswith(f"cannot load the teacher's tokenizer from {broken} (")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("device", ["banana", "cuda:3"])
def test_cache_teacher_with_a_device_this_machine_lacks(device, tiny_teacher_dir, small_corpus,
                                                        tmp_path):
    if torch.cuda.device_count() > 3:
        pytest.skip("this machine has a cuda:3")
    out = tmp_path / "cache"
    line = one_error_line(invoke(*cache_args(tiny_teacher_dir, small_corpus, out,
                                             "--device", device, "-q")))
    assert line.startswith(f"error: --device {device}: ")
    assert ("not a device; use auto, cpu, cuda or cuda:N" in line if device == "banana"
            else "CUDA GPU" in line)
    # whatever the failed run left, the corrected command completes the store
    r = invoke(*cache_args(tiny_teacher_dir, small_corpus, out, "--device", "cpu", "-q",
                           "--json"))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["complete"] is True


def test_inspect_cache_verify_with_a_bad_device(train_cache):
    line = one_error_line(invoke("inspect-cache", train_cache, "--verify", "2", "--device",
                                 "banana", "-q"))
    assert line == "error: --device banana: not a device; use auto, cpu, cuda or cuda:N"


# -- train-student and eval -----------------------------------------------------------------
@pytest.mark.parametrize("what", ["config", "weights", "tokenizer"])
def test_train_student_with_a_damaged_student(what, train_cache, tiny_student_dir, tmp_path):
    student = damage(tiny_student_dir, tmp_path / "student", what)
    out = tmp_path / "run"
    line = one_error_line(invoke("train-student", "--cache", train_cache, "--student", student,
                                 "--out", out, *TRAIN))
    assert str(student) in line and SAYS[what] in line
    assert not out.exists()


def test_train_student_runs_once_the_student_is_fixed(train_cache, tiny_student_dir, tmp_path):
    student = damage(tiny_student_dir, tmp_path / "student", "config")
    out = tmp_path / "run"
    line = one_error_line(invoke("train-student", "--cache", train_cache, "--student", student,
                                 "--out", out, *TRAIN))
    assert line.startswith(f"error: cannot load the student's config from {student} (")
    shutil.copy(tiny_student_dir / "config.json", student / "config.json")
    r = invoke("train-student", "--cache", train_cache, "--student", student, "--out", out,
               *TRAIN)
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("what", ["config", "weights", "tokenizer"])
def test_eval_of_a_damaged_model(what, train_cache, tiny_student_dir, tmp_path):
    model = damage(tiny_student_dir, tmp_path / "model", what)
    line = one_error_line(invoke("eval", model, "--cache", train_cache, "--val-sequences", "1",
                                 "--device", "cpu"))
    assert str(model) in line and SAYS[what] in line
    assert "the model" in line or "the model's" in line


@pytest.mark.parametrize("device", ["banana", "cuda:3"])
def test_train_student_and_eval_with_a_device_this_machine_lacks(device, train_cache,
                                                                 tiny_student_dir, tmp_path):
    if torch.cuda.device_count() > 3:
        pytest.skip("this machine has a cuda:3")
    out = tmp_path / "run"
    line = one_error_line(invoke("train-student", "--cache", train_cache, "--student",
                                 tiny_student_dir, "--out", out, *TRAIN_DEVICELESS,
                                 "--device", device))
    assert line.startswith(f"error: --device {device}: ")
    assert not out.exists()
    line = one_error_line(invoke("eval", tiny_student_dir, "--cache", train_cache,
                                 "--device", device))
    assert line.startswith(f"error: --device {device}: ")


def test_train_student_out_is_a_file(train_cache, tiny_student_dir, tmp_path):
    out = tmp_path / "run"
    out.write_text("not a run\n")
    line = one_error_line(invoke("train-student", "--cache", train_cache, "--student",
                                 tiny_student_dir, "--out", out, *TRAIN))
    assert line.startswith(f"error: --out {out} is an existing file, not a directory; "
                           "choose another --out")
    assert out.read_text() == "not a run\n"
    line = one_error_line(invoke("train-student", "--cache", train_cache, "--student",
                                 tiny_student_dir, "--out", out / "sub" / "run", *TRAIN))
    assert line.startswith(f"error: --out {out / 'sub' / 'run'} cannot be created: {out} is "
                           "an existing file, not a directory")
    assert out.read_text() == "not a run\n"


# -- a full disk -----------------------------------------------------------------------------
def _raise(exc: BaseException):
    def run(*_args, **_kwargs):
        raise exc
    return run


@pytest.mark.parametrize("exc, says", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/cache/x/c/0"),
     ("error: disk full (No space left on device) writing /data/cache/x/c/0; free some space, "
      "then re-run the same command: the shards already finished are kept and only the rest "
      "is scored")),
    (OSError(errno.EDQUOT, "Disk quota exceeded"),
     ("error: disk full (Disk quota exceeded); free some space, then re-run the same command: "
      "the shards already finished are kept and only the rest is scored")),
])
def test_disk_full_is_one_line_saying_what_a_rerun_keeps(monkeypatch, tmp_path, exc, says):
    monkeypatch.setattr("ddk.cache.cache_job.run.run_cache_job", _raise(exc))
    r = invoke("cache-teacher", "--domain", f"x={tmp_path}", "-o", tmp_path / "c", "-q")
    assert one_error_line(r) == says


def test_disk_full_inside_another_error_and_other_os_errors(monkeypatch, tmp_path):
    wrapped = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")
    wrapped.__context__ = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr("ddk.cache.train.loop.train", _raise(wrapped))
    r = invoke("train-student", "--cache", tmp_path, "--student", tmp_path, "--out", tmp_path)
    assert one_error_line(r) == (
        "error: disk full (No space left on device); free some space, then re-run the same "
        "command with --resume: it continues from the last complete checkpoint, which is kept")
    # any other OSError is not a user error: it keeps its traceback
    other = PermissionError(errno.EACCES, "Permission denied", "/x")
    monkeypatch.setattr("ddk.cache.train.loop.train", _raise(other))
    r = invoke("train-student", "--cache", tmp_path, "--student", tmp_path, "--out", tmp_path)
    assert r.exception is other


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.slow
def test_disk_full_during_cache_teacher_then_rerun_is_identical(tiny_teacher_dir, small_corpus,
                                                                tmp_path, monkeypatch):
    import zarr.storage._local as zarr_local

    reference = tmp_path / "reference"
    assert invoke(*cache_args(tiny_teacher_dir, small_corpus, reference, "-q")).exit_code == 0

    out = tmp_path / "cache"
    real_put, chunks = zarr_local._put, []

    def put(path: Path, value, exclusive: bool = False) -> int:
        if "/c/" in str(path) and str(path).startswith(str(out)):  # chunk data of `out`
            chunks.append(path)
            if len(chunks) == 13:  # mid-way: some shards finished, one half-written
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_put(path, value, exclusive)

    monkeypatch.setattr(zarr_local, "_put", put)
    line = one_error_line(invoke(*cache_args(tiny_teacher_dir, small_corpus, out, "-q")))
    assert line.startswith(f"error: disk full (No space left on device) writing {chunks[-1]}; "
                           "free some space, then re-run the same command")
    assert list(out.glob("*/*/shard_done/c/*")), "the fault came before any shard was done"
    monkeypatch.undo()

    r = invoke(*cache_args(tiny_teacher_dir, small_corpus, out, "-q", "--json"))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["complete"] is True
    assert tree_bytes(out) == tree_bytes(reference)


class _DiskFillsUp(io.RawIOBase):
    """A writable file that takes `room` bytes, then fails like a full disk."""

    def __init__(self, f, room: int) -> None:
        super().__init__()
        self.f, self.room = f, room

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(b)
        return self.f.write(b)


def _same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_keeps_the_last_one_and_resume_works(
        train_cache, tiny_student_dir, tmp_path, monkeypatch):
    args = ["--cache", train_cache, "--student", tiny_student_dir, *TRAIN,
            "--max-steps", "4", "--checkpoint-every", "1"]
    reference = tmp_path / "reference"
    assert invoke("train-student", *args, "--out", reference).exit_code == 0

    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    real_save, saves, kept = torch.save, [], {}

    def save(obj, f, *a, **kw):
        saves.append(f)
        if len(saves) < 2:
            return real_save(obj, f, *a, **kw)
        kept.update({k: v for k, v in tree_bytes(ckpts).items()  # step 1, as committed
                     if not k.startswith(".")})
        return real_save(obj, _DiskFillsUp(f, room=4096), *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    line = one_error_line(invoke("train-student", *args, "--out", out))
    monkeypatch.undo()
    failed = Path(saves[-1].name)
    assert line == (f"error: disk full (No space left on device) writing {failed}; free some "
                    "space, then re-run the same command with --resume: it continues from "
                    "the last complete checkpoint, which is kept")
    assert failed.parent.name.startswith(".tmp-step-00000002")
    assert (ckpts / "latest").read_text().strip() == "step-00000001"
    assert tree_bytes(ckpts) == kept  # step 1 intact; no temp dir or pointer left behind
    assert not list(ckpts.glob(".*"))

    r = invoke("train-student", *args, "--out", out, "--resume")
    assert r.exit_code == 0, r.output
    assert _same_weights(out / "model", reference / "model")
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "step"]
    assert steps == [0, 1, 2, 3]


# -- -q hides transformers' own progress bars -------------------------------------------------
def _assert_no_bars(*streams: str) -> None:
    for text in streams:
        for bar in PROGRESS_BARS:
            assert bar not in text, text


def test_quiet_cache_teacher_shows_no_weight_loading_bar(tiny_teacher_dir, small_corpus,
                                                         tmp_path, capfd):
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    r = invoke(*cache_args(tiny_teacher_dir, {"code": small_corpus["code"]}, tmp_path / "c",
                           "--device", "cpu", "-q"))
    assert r.exit_code == 0, r.output
    _assert_no_bars(r.stderr, capfd.readouterr().err)
    assert hf_logging.is_progress_bar_enabled() == before  # restored for the rest of the process


def test_quiet_train_student_shows_no_loading_or_saving_bar(train_cache, tiny_student_dir,
                                                            tmp_path, capfd):
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    r = invoke("train-student", "--cache", train_cache, "--student", tiny_student_dir,
               "--out", tmp_path / "run", *TRAIN)
    assert r.exit_code == 0, r.output
    _assert_no_bars(r.stderr, capfd.readouterr().err)
    assert hf_logging.is_progress_bar_enabled() == before


def test_load_backend_without_progress_shows_no_weight_loading_bar(tiny_teacher_dir, capfd):
    """What cache-teacher -q does through load_backend (and, as a control for the tests
    above, that the bar they look for is there without it)."""
    from ddk.cache.teacher.loading import load_backend
    from transformers.utils import logging as hf_logging

    options = {"dtype": "fp32", "device": "cpu", "seed": 0, "k": 4, "batch_size": 2,
               "engine_options": {}}
    before = hf_logging.is_progress_bar_enabled()
    load_backend("transformers", tiny_teacher_dir, progress=False, **options).close()
    _assert_no_bars(capfd.readouterr().err)
    assert hf_logging.is_progress_bar_enabled() == before
    if before:
        load_backend("transformers", tiny_teacher_dir, **options).close()
        assert "Loading weights" in capfd.readouterr().err
