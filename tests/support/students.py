"""Shared by the trainer tests: student variants on disk and a small, fast TrainConfig.

Not a test module: tests import it as `support.students` (tests/ is on pytest's pythonpath).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any


def student_variant(src: Path, dst: Path, **config_changes: Any) -> Path:
    """A copy of the student directory `src` at `dst` with config.json fields changed."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(config_changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def tied_student(src: Path, dst: Path) -> Path:
    """A copy of the student `src` at `dst` whose LM head *is* its input embedding.

    (Setting tie_word_embeddings in a copied config.json is not enough: the saved lm_head
    weight differs from the embedding, and transformers then loads the two untied.)
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.get_input_embeddings().weight
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def small_train_config(cache: Any, student: Any, out: Any, **kw: Any) -> Any:
    """A TrainConfig for a few CPU steps on the tiny cache; `kw` overrides the defaults."""
    from ddk.cache.train.config import TrainConfig

    base = {"max_steps": 6, "interval": 3, "val_sequences": 3, "batch_size": 2, "lr": 1e-3,
            "min_lr": 1e-4, "checkpoint_every": 0, "progress": False, "device": "cpu"}
    base.update(kw)
    return TrainConfig(cache=str(cache), student=str(student), out=str(out), **base)


def far_behind_student(src: Path, dst: Path, logit_scale: float = 40.0) -> Path:
    """A copy of the student `src` at `dst` with its logits scaled up by `logit_scale`: its
    confident random predictions put it hundreds of times behind any teacher (the regime in
    which DDK's weights saturate)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst
