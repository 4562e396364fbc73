"""`ddk inspect-cache` through click: table, --json, --verify, and one-line user errors."""

from __future__ import annotations

import json

from click.testing import CliRunner
from ddk.cache.cache_job.config import CacheJobConfig
from ddk.cache.cache_job.run import run_cache_job
from ddk.cache.corpus.sources import DomainSpec
from ddk.cli.main import cli


def test_inspect_cache_cli(tmp_path, small_corpus, tiny_teacher_dir):
    out = tmp_path / "cache"
    run_cache_job(CacheJobConfig(
        output=str(out), teacher=str(tiny_teacher_dir),
        domains=[DomainSpec(n, str(p)) for n, p in small_corpus.items()],
        k=8, seq_len=32, val_sequences=3, max_train_sequences=6, sequences_per_shard=4,
        progress=False))
    runner = CliRunner()

    table = runner.invoke(cli, ["inspect-cache", str(out)])
    assert table.exit_code == 0, table.output
    for domain in small_corpus:
        assert domain in table.stdout
    for section in ("Storage", "Fidelity", "Completeness", "Layout"):
        assert section in table.stdout
    assert "Verify" not in table.stdout

    as_json = runner.invoke(cli, ["inspect-cache", str(out), "--json", "--verify", "2", "-q"])
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert set(report["domains"]) == set(small_corpus)
    assert report["completeness"]["complete"] is True
    assert report["verify"]["sequences"] == 2
    assert report["verify"]["topk_id_agreement"] == 1.0


def test_inspect_cache_cli_user_errors(tmp_path):
    runner = CliRunner()
    for args in (["inspect-cache", str(tmp_path / "nope")],
                 ["inspect-cache", str(tmp_path), "--json"]):  # a directory, not a store
        result = runner.invoke(cli, args)
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert "Traceback" not in result.output and result.stdout == ""
