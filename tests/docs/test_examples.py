"""The runnable examples of docs/trainer.md run on the tiny cache (so they cannot rot)."""

from __future__ import annotations

import pytest


def test_own_loop_example_trains_and_reweights(repo_script, train_cache, tiny_student_dir,
                                               capsys):
    example = repo_script("docs/examples/own_loop.py")
    example.main(["--cache", str(train_cache), "--student", str(tiny_student_dir),
                  "--steps", "6", "--interval", "3", "--batch-size", "2"])
    out = capsys.readouterr().out
    assert out.count("weights {") == 2 and "step 0: loss" in out


def test_ddk_trainer_example_saves_a_model_and_resumes(repo_script, train_cache,
                                                       tiny_student_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    example = repo_script("docs/examples/ddk_trainer.py")
    argv = ["--cache", str(train_cache), "--student", str(tiny_student_dir), "--out",
            str(tmp_path / "run"), "--interval", "2", "--val-sequences", "2", "--batch-size",
            "2", "--save-steps", "2", "--cpu"]
    example.main([*argv, "--max-steps", "4"])
    assert "ratio" in capsys.readouterr().out
    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert (tmp_path / "run" / "checkpoint-4" / "ddk_state.pt").exists()
    example.main([*argv, "--max-steps", "6", "--resume"])  # continues from checkpoint-4
    assert (tmp_path / "run" / "checkpoint-6" / "ddk_state.pt").exists()
    with pytest.raises(SystemExit):  # argparse: --cache is required
        example.main(["--student", "x", "--out", "y"])
