"""Checkpoint files and TrainState: the exact state.pt keys, a round trip that restores model,
optimizer, progress and RNG, the resume-options check, atomic writes and the `latest` pointer.
(The end-to-end proof, kill + resume == uninterrupted, is in test_loop.py.)"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

STATE_KEYS = ["step", "tokens", "weights", "history", "interval_start", "interval_len",
              "samplers", "rng", "config", "model", "optimizer"]


def _state(seed: int, config: dict | None = None):
    from ddk.cache.train.state import TrainState

    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return TrainState(model, opt, config if config is not None else {"batch_size": 2})


def _advance(state, d) -> None:
    """One real optimizer step and some progress, so nothing round-trips by accident."""
    state.model(torch.randn(4, 3)).sum().backward()
    state.optimizer.step()
    from ddk.cache.train.mixture import MixtureState

    state.step, state.tokens = 7, 448
    state.mixture = MixtureState(torch.tensor([0.25, 0.75]), [{"step": 6, "weights": [0.25, 0.75]}],
                                 6, 3, {"rank": d.rank, "pos": 5})


def test_save_then_load_restores_everything(tmp_path):
    from ddk.cache.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from ddk.cache.train.distributed import Dist

    d = Dist(0, 1, torch.device("cpu"), False)
    a = _state(0)
    _advance(a, d)
    save_checkpoint(a, tmp_path / "checkpoints", d, keep=2)
    path = latest_checkpoint(tmp_path / "checkpoints")
    assert path == tmp_path / "checkpoints" / "step-00000007"
    ck = torch.load(path / "state.pt", weights_only=False)
    assert list(ck) == STATE_KEYS  # the file format existing checkpoints are in
    assert ck["samplers"] == [{"rank": 0, "pos": 5}] and len(ck["rng"]) == 1

    want = (torch.rand(3), random.random(), np.random.rand())  # what comes after the save
    b = _state(1)  # other weights, fresh optimizer, other RNG position
    load_checkpoint(b, path, d)
    assert (torch.rand(3).tolist(), random.random(), np.random.rand()) == (
        want[0].tolist(), want[1], want[2])
    for (na, pa), (nb, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items(),
                                  strict=True):
        assert na == nb and torch.equal(pa, pb)
    assert b.optimizer.state_dict()["state"][0]["step"] == 1
    assert torch.equal(b.optimizer.state_dict()["state"][0]["exp_avg"],
                       a.optimizer.state_dict()["state"][0]["exp_avg"])
    m = b.mixture
    assert (b.step, b.tokens, m.history, m.interval_start, m.interval_len, m.snapshot) == (
        7, 448, a.mixture.history, 6, 3, {"rank": 0, "pos": 5})
    assert torch.equal(m.weights, a.mixture.weights)
    assert b.config == {"batch_size": 2}


def test_resume_with_other_run_options_is_refused(tmp_path):
    from ddk.cache.errors import ConfigError
    from ddk.cache.train.checkpoint import load_checkpoint, save_checkpoint
    from ddk.cache.train.distributed import Dist

    d = Dist(0, 1, torch.device("cpu"), False)
    a = _state(0, {"batch_size": 2, "lr": 1e-3, "out": "x"})
    save_checkpoint(a, tmp_path, d, keep=1)
    same_but_out = _state(0, {"batch_size": 2, "lr": 1e-3, "out": "y"})  # out is not a key
    load_checkpoint(same_but_out, tmp_path / "step-00000000", d)
    other = _state(0, {"batch_size": 3, "lr": 1e-3})
    with pytest.raises(ConfigError, match="batch_size=2"):
        load_checkpoint(other, tmp_path / "step-00000000", d)


def test_write_checkpoint_keeps_the_newest_and_clears_stale_temp_dirs(tmp_path: Path):
    from ddk.cache.train.checkpoint import latest_checkpoint, write_checkpoint

    assert latest_checkpoint(tmp_path) is None
    (tmp_path / ".tmp-step-00000009-1").mkdir()  # left by a process killed mid-write
    for step in (3, 6, 9):
        write_checkpoint(tmp_path, step, {"step": step}, keep=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["latest", "step-00000006", "step-00000009"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000009"
    (tmp_path / "step-00000009" / "state.pt").unlink()  # a pointer to nothing is no checkpoint
    assert latest_checkpoint(tmp_path) is None
