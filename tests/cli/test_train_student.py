"""`ddk train-student` through the real click group (errors -> one line, exit 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from ddk.cli.main import cli

SMALL = ["--max-steps", "3", "--interval", "2", "--val-sequences", "2", "--batch-size", "2",
         "--lr", "1e-3", "--min-lr", "1e-4", "--device", "cpu", "-q"]


def test_train_student_json(train_cache, tiny_student_dir, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train-student", "--cache", str(train_cache), "--student",
                                 str(tiny_student_dir), "--out", str(out), "--method", "kd",
                                 "--kd-mixture", "uniform", "--grad-clip", "0", *SMALL,
                                 "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["method"] == "kd" and summary["steps"] == 3
    assert [round(w, 6) for w in summary["weight_history"][0]["weights"]] == [0.333333] * 3
    assert Path(summary["model"]) == out / "model"
    saved = json.loads((out / "summary.json").read_text())
    assert saved["config"]["grad_clip"] is None  # --grad-clip 0 turns clipping off


def test_train_student_text_output(train_cache, tiny_student_dir, tmp_path):
    r = CliRunner().invoke(cli, ["train-student", "--cache", str(train_cache), "--student",
                                 str(tiny_student_dir), "--out", str(tmp_path / "r"), *SMALL])
    assert r.exit_code == 0, r.output
    assert "ddk: 3 steps, 192 tokens" in r.stdout
    assert "student ppl" in r.stdout and "math" in r.stdout


@pytest.mark.parametrize("args,match", [
    (["--max-steps", "2", "--max-tokens", "10"], "not both"),
    (["--method", "kd", "--alpha", "2"], "--alpha"),
])
def test_bad_options_are_one_line_errors(train_cache, tiny_student_dir, tmp_path, args, match):
    r = CliRunner().invoke(cli, ["train-student", "--cache", str(train_cache), "--student",
                                 str(tiny_student_dir), "--out", str(tmp_path / "r"), "-q",
                                 *args])
    assert r.exit_code == 1
    assert r.stderr.startswith("error: ") and match in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
