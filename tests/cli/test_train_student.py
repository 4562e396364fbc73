"""`ddk train-student` and `ddk eval` through the real click group (errors -> one line, exit 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from ddk.cli.main import cli

SMALL = ["--max-steps", "3", "--interval", "2", "--val-sequences", "2", "--batch-size", "2",
         "--lr", "1e-3", "--min-lr", "1e-4", "--device", "cpu", "-q"]


def test_train_student_json_then_eval_the_result(train_cache, tiny_student_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    r = runner.invoke(cli, ["train-student", "--cache", str(train_cache), "--student",
                            str(tiny_student_dir), "--out", str(out), "--method", "kd",
                            "--kd-mixture", "uniform", "--grad-clip", "0", *SMALL, "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["method"] == "kd" and summary["steps"] == 3
    assert [round(w, 6) for w in summary["weight_history"][0]["weights"]] == [0.333333] * 3
    assert Path(summary["model"]) == out / "model"
    saved = json.loads((out / "summary.json").read_text())
    assert saved["config"]["grad_clip"] is None  # --grad-clip 0 turns clipping off

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
    assert [ln.split()[0] for ln in lines[2:]] == ["code", "prose", "math"]


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


def test_missing_cache_and_wrong_model_are_one_line_errors(train_cache, tmp_path):
    r = CliRunner().invoke(cli, ["eval", str(tmp_path), "--cache", str(tmp_path / "none")])
    assert r.exit_code == 1 and r.stderr.startswith("error: no cache at")
    r = CliRunner().invoke(cli, ["eval", str(tmp_path), "--cache", str(train_cache)])
    assert r.exit_code == 1 and "not a local transformers model directory" in r.stderr
