"""`ddk cache-teacher -o DIR` never deletes or writes into what it did not create, and a run
that fails on the user's input leaves nothing that blocks the corrected command."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from ddk.cache.cache_job.config import CacheJobConfig
from ddk.cache.cache_job.run import run_cache_job
from ddk.cache.corpus.sources import DomainSpec
from ddk.cache.errors import StoreError
from ddk.cli.main import cli


def job(out: Path, corpus: dict[str, Path], teacher: Path, **kw) -> CacheJobConfig:
    defaults = {"output": str(out), "teacher": str(teacher),
                "domains": [DomainSpec(n, str(p)) for n, p in sorted(corpus.items())],
                "k": 4, "seq_len": 32, "val_sequences": 2, "max_train_sequences": 4,
                "sequences_per_shard": 4, "batch_size": 4, "progress": False}
    return CacheJobConfig(**{**defaults, **kw})


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def cli_args(out: Path, corpus: dict[str, Path], teacher: Path) -> list[str]:
    args = ["cache-teacher", "--teacher", str(teacher), "-o", str(out), "--k", "4",
            "--seq-len", "32", "--val-sequences", "2", "--max-train-sequences", "4", "-q"]
    for name, path in sorted(corpus.items()):
        args += ["--domain", f"{name}={path}"]
    return args


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("overwrite", [False, True])
def test_corpus_directory_as_output_is_refused(small_corpus, tiny_teacher_dir, overwrite):
    """The reported data loss: -o pointing at the corpus, with --overwrite, deleted it."""
    target = small_corpus["code"].parent  # holds every domain's files
    before = tree_bytes(target)
    args = cli_args(target, small_corpus, tiny_teacher_dir) + (["--overwrite"] * overwrite)
    line = one_error_line(CliRunner().invoke(cli, args))
    assert "is not empty and is not a ddk cache" in line and "another --output" in line
    assert "code/" in line  # names what it found there
    assert tree_bytes(target) == before


def test_overwrite_of_a_cache_holding_other_files_is_refused(tmp_path, small_corpus,
                                                             tiny_teacher_dir):
    out = tmp_path / "cache"
    run_cache_job(job(out, small_corpus, tiny_teacher_dir))
    (out / "notes.txt").write_text("mine")
    (out / "code" / "keep.jsonl").write_text("{}")
    before = tree_bytes(out)
    with pytest.raises(StoreError, match="notes.txt") as err:
        run_cache_job(job(out, small_corpus, tiny_teacher_dir, k=8, overwrite=True))
    assert "code/keep.jsonl" in str(err.value) and "move them out" in str(err.value)
    assert tree_bytes(out) == before
    # resuming it (same parameters) leaves the user's files alone and is fine
    assert run_cache_job(job(out, small_corpus, tiny_teacher_dir)).shards_written == 0
    assert (out / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_a_pure_ddk_cache(tmp_path, small_corpus, tiny_teacher_dir):
    out = tmp_path / "cache"
    run_cache_job(job(out, small_corpus, tiny_teacher_dir))
    result = run_cache_job(job(out, small_corpus, tiny_teacher_dir, k=8, overwrite=True))
    assert result.complete and result.shards_written > 0
    from ddk.cache.store.reader import CacheReader

    assert CacheReader.open(out).k == 8


def test_empty_directory_is_a_fine_output(tmp_path, small_corpus, tiny_teacher_dir):
    out = tmp_path / "empty"
    out.mkdir()
    assert run_cache_job(job(out, small_corpus, tiny_teacher_dir)).complete


def test_empty_zarr_group_is_a_fine_output(tmp_path, small_corpus, tiny_teacher_dir):
    """What a worker started at the same moment leaves for an instant: the root zarr.json,
    before the ddk metadata is in it. A second worker must not refuse it as foreign."""
    import zarr

    out = tmp_path / "racing"
    zarr.open_group(str(out), mode="w")
    assert [p.name for p in out.iterdir()] == ["zarr.json"]
    assert run_cache_job(job(out, small_corpus, tiny_teacher_dir)).complete


def test_foreign_zarr_store_is_refused(tmp_path, small_corpus, tiny_teacher_dir):
    import zarr

    out = tmp_path / "other.zarr"
    zarr.create_array(str(out / "x"), shape=(2,), dtype="uint8")
    before = tree_bytes(out)
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="not a ddk cache"):
            run_cache_job(job(out, small_corpus, tiny_teacher_dir, overwrite=overwrite))
    assert tree_bytes(out) == before


def test_teacher_that_fails_to_load_leaves_no_store(tmp_path, small_corpus, tiny_teacher_dir):
    """The weights are loaded before the store is created: the corrected command is not
    blocked by an empty store recording the broken run's parameters."""
    broken = Path(shutil.copytree(tiny_teacher_dir, tmp_path / "broken-teacher"))
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    out = tmp_path / "cache"
    one_error_line(CliRunner().invoke(cli, cli_args(out, small_corpus, broken)))
    assert not out.exists()
    result = CliRunner().invoke(cli, cli_args(out, small_corpus, tiny_teacher_dir)
                                + ["--k", "8"])
    assert result.exit_code == 0, result.output
