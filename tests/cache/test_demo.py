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


def test_derive_student_drops_exactly_the_named_layers(tmp_path, tiny_teacher_dir):
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir)
    n = teacher.config.num_hidden_layers
    out = derive_student(tiny_teacher_dir, tmp_path / "student", drop_layers=[n - 1])
    student = AutoModelForCausalLM.from_pretrained(out)
    assert student.config.num_hidden_layers == n - 1
    for i in range(n - 1):  # every kept layer is the teacher's, in order
        t_layer = teacher.model.layers[i].state_dict()
        for name, value in student.model.layers[i].state_dict().items():
            assert (value == t_layer[name]).all(), (i, name)


@pytest.mark.parametrize("drop", [[99], [0, 1, 2, 3, 4, 5, 6, 7]])
def test_derive_student_rejects_layers_it_cannot_drop(tmp_path, tiny_teacher_dir, drop):
    from ddk.cache.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot drop layers"):
        derive_student(tiny_teacher_dir, tmp_path / "student", drop_layers=drop[:8])


def test_regime_note_says_whether_the_demo_is_evidence(tmp_path):
    from ddk.cache.demo import DemoResult, format_regime
    from ddk.cache.train.saturation import DOCS_SECTION, diagnose

    far = diagnose(["a", "b"], [2.0e5, 9.0e5]).to_dict()
    note = format_regime(DemoResult(tmp_path, [], {}, [], {
        "student_layers": 6, "start": far,
        "ddk_run": {"saturated_intervals": 4, "intervals": 4}}))
    assert "6 of the teacher's layers" in note and "2e+05 to 9e+05" in note
    assert "saturated at 4 of 4 re-weightings" in note and "smoke test" in note
    assert "--preset paper" in note and DOCS_SECTION in note
    near = diagnose(["a", "b"], [1.2, 1.9]).to_dict()
    note = format_regime(DemoResult(tmp_path, [], {}, [], {"student_layers": 29, "start": near}))
    assert "within DDK's working range" in note and "smoke test" not in note


@pytest.mark.slow
def test_demo_runs_every_method_and_writes_summary(tmp_path, tiny_teacher_dir):
    from ddk.cli.main import cli

    out = tmp_path / "demo"
    args = ["demo", "-o", str(out), "--teacher", str(tiny_teacher_dir), "--steps", "4",
            "--interval", "2", "--train-sequences", "3", "--val-sequences", "2",
            "--seq-len", "32", "--student-layers", "1", "-q", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert len(summary["table"]) == 8  # the bundled demo corpus has 8 domains
    for row in summary["table"]:
        for method in ("cpt", "kd", "ddk"):
            assert row[f"{method}_ppl"] > 0
            assert row[f"{method}_ratio"] == pytest.approx(row[f"{method}_ppl"] / row["teacher_ppl"])
    assert (out / "summary.md").read_text().count("|") > 30
    assert "Regime: " in (out / "summary.md").read_text()
    assert set(summary["regime"]["start"]) >= {"saturated", "ratio_min", "ratio_max"}
    assert summary["regime"]["ddk_run"]["intervals"] == 2  # steps 0 and 2 of 4
    assert (out / "domain_weights.png").stat().st_size > 1000
    ddk_weights = [json.loads(line) for line in (out / "runs" / "ddk" / "metrics.jsonl").open()
                   if '"weights"' in line]
    assert ddk_weights, "ddk run logged no domain weights"
    # a second run reuses every finished stage
    again = run_demo(DemoConfig(out=str(out), teacher=str(tiny_teacher_dir), steps=4,
                                interval=2, train_sequences=3, val_sequences=2, seq_len=32,
                                student_layers=1, progress=False))
    assert again.seconds["cache"] < 60 and again.table == summary["table"]
