"""Fault injection on a real cache: every array kind deleted, truncated or altered is found,
named by its store key, refused by the trainer and `ddk eval`, and repaired by a re-run of
the cache job into a store byte-identical to the undamaged one.

The store is built once per module through run_cache_job from the tiny teacher; each test
damages its own copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from ddk.cache.cache_job.config import CacheJobConfig
from ddk.cache.cache_job.run import run_cache_job
from ddk.cache.corpus.sources import DomainSpec
from ddk.cache.errors import DamagedCacheError
from ddk.cache.store.integrity import check_store
from ddk.cache.store.reader import CacheReader
from ddk.cache.train.training_cache import open_cache
from ddk.cli.main import cli
from support.train_cache import write_corpus

#: (array, split, shard object key below the array) of each kind of object a shard writes
OBJECTS = {
    "input_ids": ("train", "c/1/0"),
    "topk_ids": ("train", "c/1/0/0"),
    "topk_logprobs": ("train", "c/1/0/0"),
    "tail_logmass": ("train", "c/1/0"),
    "target_logprob": ("validation", "c/0/0"),
    "shard_manifest": ("train", "c/1/0/0"),
    "shard_done": ("train", "c/1"),
}
DOMAIN = "code"


def job(out: Path, corpus: dict[str, Path], teacher: Path) -> CacheJobConfig:
    return CacheJobConfig(output=str(out), teacher=str(teacher),
                          domains=[DomainSpec(n, str(p)) for n, p in corpus.items()],
                          k=8, seq_len=32, val_sequences=4, max_train_sequences=12,
                          sequences_per_shard=4, batch_size=8, device="cpu", progress=False)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, tiny_teacher_dir) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("integrity")
    corpus = write_corpus(root / "corpus")
    out = root / "cache"
    assert run_cache_job(job(out, corpus, tiny_teacher_dir)).complete
    return out, corpus


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def damaged_copy(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "damaged"))


def apply_fault(path: Path, fault: str) -> None:
    data = path.read_bytes()
    if fault == "delete":
        path.unlink()
    elif fault == "truncate":
        path.write_bytes(data[:len(data) // 2])
    else:  # flip one byte in the middle of the object
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:])


def object_path(cache: Path, array: str) -> tuple[str, Path]:
    split, key = OBJECTS[array]
    rel = f"{DOMAIN}/{split}/{array}/{key}"
    return rel, cache / rel


def report_for(cache: Path, *, checksums: bool):
    group = zarr.open_group(str(cache), mode="r")
    return check_store(group, group.attrs["ddk"], checksums=checksums)


@pytest.mark.parametrize("fault", ["delete", "truncate", "flip"])
@pytest.mark.parametrize("array", list(OBJECTS))
def test_every_fault_is_found_and_named(pristine, tmp_path, array, fault):
    cache = damaged_copy(pristine[0], tmp_path)
    key, path = object_path(cache, array)
    apply_fault(path, fault)
    report = report_for(cache, checksums=True)
    assert not report.ok
    assert key in {d.key for d in report.damage}, [str(d) for d in report.damage]
    split = OBJECTS[array][0]
    assert report.damaged_shards() == {(DOMAIN, split): [int(key.split("/c/")[1][0])]}
    if fault != "flip" or array in ("shard_manifest", "shard_done"):
        # without reading data: sizes, presence and the bookkeeping arrays' own checks
        assert key in {d.key for d in report_for(cache, checksums=False).damage}


def test_intact_store_passes_every_check(pristine):
    for checksums in (False, True):
        report = report_for(pristine[0], checksums=checksums)
        assert report.ok and report.objects_checked > 0
    assert report.bytes_read > 0 and report.checksums


@pytest.mark.parametrize("array", ["topk_ids", "target_logprob", "shard_done"])
def test_metadata_loss_is_found(pristine, tmp_path, array):
    cache = damaged_copy(pristine[0], tmp_path)
    split = OBJECTS[array][0]
    (cache / DOMAIN / split / array / "zarr.json").unlink()
    report = report_for(cache, checksums=False)
    key = f"{DOMAIN}/{split}/{array}/zarr.json"
    assert [d.key for d in report.objects()] == [key]  # listed once
    # ... but every shard it held is unreadable, so every one is rewritten
    shards = len(list((pristine[0] / DOMAIN / split / "shard_done" / "c").iterdir()))
    assert report.damaged_shards()[(DOMAIN, split)] == list(range(shards))


def test_trainer_and_eval_refuse_a_damaged_store_naming_the_object(
        pristine, tmp_path, tiny_student_dir):
    cache = damaged_copy(pristine[0], tmp_path)
    key, path = object_path(cache, "topk_ids")
    apply_fault(path, "delete")
    with pytest.raises(DamagedCacheError, match=key):
        open_cache(cache)
    for args in (["train-student", "--cache", str(cache), "--student", str(tiny_student_dir),
                  "--out", str(tmp_path / "run"), "--max-steps", "1", "-q"],
                 ["eval", str(tiny_student_dir), "--cache", str(cache)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and key in lines[0] and "cache-teacher" in lines[0]
        assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_small_store_is_checksummed_before_training(pristine, tmp_path):
    """A flipped byte inside a data object (same size) is refused up front."""
    cache = damaged_copy(pristine[0], tmp_path)
    key, path = object_path(cache, "topk_logprobs")
    apply_fault(path, "flip")
    with pytest.raises(DamagedCacheError, match=key):
        open_cache(cache)


def test_altered_chunk_read_names_the_object(pristine, tmp_path):
    """Past the start-up check (a store too large to checksum), zarr's per-chunk crc32c
    catches the flipped byte on read, and the error names the shard object."""
    cache = damaged_copy(pristine[0], tmp_path)
    key, path = object_path(cache, "topk_ids")
    apply_fault(path, "flip")
    reader = CacheReader.open(cache)
    with pytest.raises(DamagedCacheError, match=key) as err:
        reader.read(DOMAIN, "train", np.arange(12))
    assert "inspect-cache" in str(err.value) and "--check" in str(err.value)


def test_inspect_lists_damage_and_exits_1(pristine, tmp_path):
    cache = damaged_copy(pristine[0], tmp_path)
    deleted, path = object_path(cache, "input_ids")
    apply_fault(path, "delete")
    flipped, path = object_path(cache, "target_logprob")
    apply_fault(path, "flip")
    plain = CliRunner().invoke(cli, ["inspect-cache", str(cache), "-q"])
    assert plain.exit_code == 1 and "Traceback" not in plain.output
    assert f"{deleted}: missing" in plain.output and flipped not in plain.output
    assert "DAMAGED" in plain.output.splitlines()[0]
    checked = CliRunner().invoke(cli, ["inspect-cache", str(cache), "--check", "-q"])
    assert checked.exit_code == 1
    assert f"{deleted}: missing" in checked.output
    assert f"{flipped}: checksum mismatch" in checked.output
    ok = CliRunner().invoke(cli, ["inspect-cache", str(pristine[0]), "--check", "-q"])
    assert ok.exit_code == 0 and "Integrity  OK" in ok.output


def test_damaged_shards_are_left_out_of_the_report(pristine, tmp_path):
    """A deleted top-k object reads as zeros (probability 1 per entry): the report must not
    average that into the top-k mass."""
    from ddk.cache.store.report import inspect_cache

    cache = damaged_copy(pristine[0], tmp_path)
    _, path = object_path(cache, "topk_logprobs")
    apply_fault(path, "delete")
    entry = inspect_cache(cache, progress=False)["domains"][DOMAIN]["train"]
    assert entry["damaged_shards"] == [1]
    assert 0 < entry["topk_mass"]["mean"] <= 1
    assert entry["sequences_done"] == entry["sequences"] - 4


@pytest.mark.parametrize("array, fault", [
    ("input_ids", "delete"), ("topk_ids", "truncate"), ("topk_logprobs", "flip"),
    ("tail_logmass", "flip"), ("target_logprob", "truncate"), ("shard_manifest", "flip"),
    ("shard_done", "delete"),
])
def test_rerun_repairs_exactly_the_damaged_shard(pristine, tmp_path, tiny_teacher_dir,
                                                 array, fault):
    cache_dir, corpus = pristine
    cache = damaged_copy(cache_dir, tmp_path)
    _, path = object_path(cache, array)
    apply_fault(path, fault)
    result = run_cache_job(job(cache, corpus, tiny_teacher_dir))
    assert result.complete and result.shards_written == 1 and result.repaired == 1
    assert tree_bytes(cache) == tree_bytes(cache_dir)


def test_rerun_repairs_many_faults_and_lost_metadata(pristine, tmp_path, tiny_teacher_dir):
    cache_dir, corpus = pristine
    cache = damaged_copy(cache_dir, tmp_path)
    for array, fault in (("input_ids", "delete"), ("topk_ids", "flip"),
                         ("target_logprob", "flip")):
        apply_fault(object_path(cache, array)[1], fault)
    (cache / "math" / "validation" / "zarr.json").unlink()  # and its teacher-loss attrs
    (cache / "prose" / "train" / "topk_logprobs" / "zarr.json").unlink()
    result = run_cache_job(job(cache, corpus, tiny_teacher_dir))
    assert result.complete and result.repaired == result.shards_written >= 3
    assert tree_bytes(cache) == tree_bytes(cache_dir)
    # an intact store: the re-run does no work
    again = run_cache_job(job(cache, corpus, tiny_teacher_dir))
    assert again.shards_written == 0 and again.complete


def test_cli_rerun_says_what_it_repaired(pristine, tmp_path, tiny_teacher_dir):
    cache_dir, corpus = pristine
    cache = damaged_copy(cache_dir, tmp_path)
    apply_fault(object_path(cache, "tail_logmass")[1], "truncate")
    args = ["cache-teacher", "--teacher", str(tiny_teacher_dir), "-o", str(cache), "--k", "8",
            "--seq-len", "32", "--val-sequences", "4", "--max-train-sequences", "12",
            "--sequences-per-shard", "4", "--batch-size", "8", "--device", "cpu", "-q"]
    for name, path in corpus.items():
        args += ["--domain", f"{name}={path}"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "wrote 1 shards (1 of them repairs of damaged shards)" in result.output
    assert tree_bytes(cache) == tree_bytes(cache_dir)
