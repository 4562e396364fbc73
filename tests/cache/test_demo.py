"""`ddk demo` end to end on a tiny teacher (the real default runs in bench/ and the docs)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from ddk.cache.demo import DemoConfig, derive_student, run_demo


def test_derive_student_keeps_evenly_spaced_layers(tmp_path, tiny_teacher_dir):
    from transformers import AutoModelForCausalLM

    out = derive_student(tiny_teacher_dir, tmp_path / "student", keep_layers=1)
    student = AutoModelForCausalLM.from_pretrained(out)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir)
    assert student.config.num_hidden_layers == 1
    t_layer0 = teacher.model.layers[0].state_dict()
    for name, value in student.model.layers[0].state_dict().items():
        assert (value == t_layer0[name]).all(), name
    assert (out / "tokenizer.json").is_file()


def test_derive_student_rejects_more_layers_than_teacher(tmp_path, tiny_teacher_dir):
    from ddk.cache.errors import ConfigError

    with pytest.raises(ConfigError, match="student-layers"):
        derive_student(tiny_teacher_dir, tmp_path / "student", keep_layers=5)


@pytest.mark.slow
def test_demo_runs_every_method_and_writes_summary(tmp_path, tiny_teacher_dir):
    from ddk.cli.main import cli

    out = tmp_path / "demo"
    args = ["demo", "-o", str(out), "--teacher", str(tiny_teacher_dir), "--steps", "4",
            "--interval", "2", "--train-sequences", "3", "--val-sequences", "2",
            "--seq-len", "32", "--student-layers", "1", "-q", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert len(summary["table"]) == 8  # the bundled demo corpus has 8 domains
    for row in summary["table"]:
        for method in ("cpt", "kd", "ddk"):
            assert row[f"{method}_ppl"] > 0
            assert row[f"{method}_ratio"] == pytest.approx(row[f"{method}_ppl"] / row["teacher_ppl"])
    assert (out / "summary.md").read_text().count("|") > 30
    assert (out / "domain_weights.png").stat().st_size > 1000
    ddk_weights = [json.loads(line) for line in (out / "runs" / "ddk" / "metrics.jsonl").open()
                   if '"weights"' in line]
    assert ddk_weights, "ddk run logged no domain weights"
    # a second run reuses every finished stage
    again = run_demo(DemoConfig(out=str(out), teacher=str(tiny_teacher_dir), steps=4,
                                interval=2, train_sequences=3, val_sequences=2, seq_len=32,
                                student_layers=1, progress=False))
    assert again.seconds["cache"] < 60 and again.table == summary["table"]
