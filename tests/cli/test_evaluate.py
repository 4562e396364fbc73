"""`ddk eval` through the real click group: JSON and table, and one-line user errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from ddk.cli.main import cli


def test_eval_json_and_table_match_the_trained_run(train_cache, tiny_student_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    r = runner.invoke(cli, ["train-student", "--cache", str(train_cache), "--student",
                            str(tiny_student_dir), "--out", str(out), "--method", "kd",
                            "--kd-mixture", "uniform", "--max-steps", "3", "--interval", "2",
                            "--val-sequences", "2", "--batch-size", "2", "--lr", "1e-3",
                            "--min-lr", "1e-4", "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    saved = json.loads((out / "summary.json").read_text())

    r = runner.invoke(cli, ["eval", str(out / "model"), "--cache", str(train_cache),
                            "--val-sequences", "2", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["domains"]
    assert [row["domain"] for row in rows] == ["code", "prose", "math"]
    assert rows[0]["student_ppl"] == pytest.approx(saved["final"][0]["student_ppl"], rel=1e-5)

    r = runner.invoke(cli, ["eval", str(out / "model"), "--cache", str(train_cache),
                            "--val-sequences", "2"])
    assert r.exit_code == 0
    lines = r.stdout.strip().splitlines()
    assert lines[0].split() == ["domain", "seqs", "student", "ppl", "teacher", "ppl", "ratio"]
    assert [ln.split()[0] for ln in lines[2:-1]] == ["code", "prose", "math"]
    assert lines[-1].startswith("ddk check: ")


def test_missing_cache_and_wrong_model_are_one_line_errors(train_cache, tmp_path):
    r = CliRunner().invoke(cli, ["eval", str(tmp_path), "--cache", str(tmp_path / "none")])
    assert r.exit_code == 1 and r.stderr.startswith("error: no cache at")
    r = CliRunner().invoke(cli, ["eval", str(tmp_path), "--cache", str(train_cache)])
    assert r.exit_code == 1 and "not a local transformers model directory" in r.stderr
