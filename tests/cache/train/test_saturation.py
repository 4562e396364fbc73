"""The saturation diagnosis (train/saturation.py): when DDK's exp of perplexity ratios turns
the domain weights one-hot, and how the trainer and `ddk eval` report it."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from ddk.cache.train.ddk_weights import initial_weights, update_weights
from ddk.cache.train.saturation import (
    DOCS_SECTION,
    SATURATED_SHARE,
    diagnose,
    saturation_summary,
)
from ddk.cli.main import cli
from support.students import far_behind_student, small_train_config

DOMAINS = ["code", "prose", "math"]


def test_ratios_within_a_small_factor_are_not_saturated():
    ratios = [1.08, 1.6, 2.2]  # the paper's regime: a student a layer short of its teacher
    d = diagnose(DOMAINS, ratios)
    assert d.share == pytest.approx(initial_weights(ratios, [1.0] * 3).tolist())
    assert not d.saturated and d.top == "math" and d.top_share < 0.6
    assert "no saturation" in d.describe()


def test_ratios_tens_apart_are_saturated_and_the_message_says_what_to_do():
    d = diagnose(DOMAINS, [24.7, 250.0, 30.0])  # the compression regime's CPU replication
    assert d.saturated and d.top == "prose" and d.top_share == pytest.approx(1.0)
    msg = d.describe()
    assert "prose 1.00" in msg and "24.70 to 250.00" in msg and DOCS_SECTION in msg
    assert d.to_dict()["saturated"] is True and d.to_dict()["top_domain"] == "prose"


def test_the_threshold_is_where_one_domain_passes_the_share():
    # softmax([x, 0, 0]) has top share e^x / (e^x + 2): 0.9 at x = ln 18
    x = torch.log(torch.tensor(18.0)).item()
    assert not diagnose(DOMAINS, [x - 1e-6, 0.0, 0.0]).saturated
    assert diagnose(DOMAINS, [x + 1e-6, 0.0, 0.0]).saturated
    assert SATURATED_SHARE == 0.9
    assert not diagnose(["only"], [500.0]).saturated  # one domain has nothing to re-weight


def test_an_update_diagnoses_the_share_ddk_actually_uses():
    prev = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    ratios = [3.0, 1.5, 1.2]
    d = diagnose(DOMAINS, ratios, prev)
    alpha = 0.5
    new = update_weights(prev, ratios, [1.0] * 3, alpha)
    assert d.share == pytest.approx(((new - (1 - alpha) / 3) / alpha).tolist())
    assert not d.first_interval and "psi = r * exp(ratio)" in d.describe()


def test_summary_counts_saturated_intervals_and_names_their_domains():
    hist = [{"step": 0, "saturation": diagnose(DOMAINS, [1.0, 40.0, 2.0]).to_dict()},
            {"step": 8, "saturation": diagnose(DOMAINS, [1.0, 1.2, 1.1], [0.3] * 3).to_dict()},
            {"step": 16, "saturation": diagnose(DOMAINS, [60.0, 1.0, 2.0], [0.3] * 3).to_dict()}]
    s = saturation_summary(hist, DOMAINS)
    assert s["intervals"] == 3 and s["saturated_intervals"] == 2
    assert s["first_saturated_step"] == 0 and s["domains"] == ["code", "prose"]
    assert saturation_summary([{"step": 0, "weights": [0.5, 0.5]}], DOMAINS) is None  # kd


@pytest.fixture(scope="module")
def far_student(tmp_path_factory, tiny_student_dir):
    return far_behind_student(tiny_student_dir, tmp_path_factory.mktemp("far") / "student")


def test_train_student_warns_and_records_saturation(train_cache, far_student, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, [
        "train-student", "--cache", str(train_cache), "--student", str(far_student),
        "--out", str(out), "--max-steps", "4", "--interval", "2", "--val-sequences", "2",
        "--batch-size", "2", "--lr", "1e-4", "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: step ")]
    assert warnings and warnings[0].startswith("warning: step 0: ")
    assert DOCS_SECTION in warnings[0] and "one-hot" in warnings[0]
    assert "note: ddk's weights were saturated" in r.stdout

    intervals = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()
                 if json.loads(ln)["type"] == "interval"]
    measured = [i for i in intervals if "saturation" in i]
    assert [i["step"] for i in measured] == [0, 2]  # the final evaluation sets no weights
    assert all(i["saturation"]["saturated"] for i in measured[:1])
    summary = json.loads((out / "summary.json").read_text())["ddk_saturation"]
    assert summary["saturated_intervals"] >= 1 and summary["first_saturated_step"] == 0
    assert len(warnings) == summary["saturated_intervals"]


def test_kd_records_no_saturation(train_cache, far_student, tmp_path):
    from ddk.cache.train.loop import train

    res = train(small_train_config(train_cache, far_student, tmp_path / "kd", method="kd",
                                   max_steps=2, interval=2))
    assert res.summary["ddk_saturation"] is None
    assert all("saturation" not in h for h in res.history)


def test_eval_reports_the_diagnosis_before_training(train_cache, far_student,
                                                    tiny_student_dir):
    runner = CliRunner()
    r = runner.invoke(cli, ["eval", str(far_student), "--cache", str(train_cache),
                            "--val-sequences", "2", "--json"])
    assert r.exit_code == 0, r.output
    sat = json.loads(r.stdout)["ddk_saturation"]
    assert sat["saturated"] is True and sat["ratio_min"] > 10
    r = runner.invoke(cli, ["eval", str(tiny_student_dir), "--cache", str(train_cache),
                            "--val-sequences", "2"])
    assert r.exit_code == 0
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("ddk check: student/teacher perplexity ratios")
    assert "no saturation" in last


def test_the_warning_points_to_a_section_that_exists():
    from pathlib import Path

    path, anchor = DOCS_SECTION.split("#")
    text = (Path(__file__).resolve().parents[3] / path).read_text()
    headings = {ln.lstrip("#").strip().lower().replace(" ", "-") for ln in text.splitlines()
                if ln.startswith("## ")}
    assert anchor in headings
