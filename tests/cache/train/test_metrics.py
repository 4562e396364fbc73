"""metrics.jsonl writing, truncation on resume, torn lines, and the PNG plots."""

from __future__ import annotations

import json

import pytest
from ddk.cache.train.metrics import MetricsLog, plot_metrics, read_metrics


def test_records_truncate_and_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    log.log_interval(0, ["a", "b"], [0.25, 0.75], [4.0, 9.0], [2.0, 3.0])
    for s in range(5):
        log.log_step(s, loss=float(s), lr=1e-3, kl=float("nan"))
    log.close()
    recs = read_metrics(path)
    assert recs[0]["type"] == "interval" and recs[0]["ratio"] == [2.0, 3.0]
    assert [r["step"] for r in recs[1:]] == [0, 1, 2, 3, 4]
    assert recs[1]["kl"] is None  # NaN is not JSON: written as null
    with open(path, "a") as f:  # a kill in the middle of a write
        f.write('{"type": "step", "st')
    assert len(read_metrics(path)) == 6
    log = MetricsLog(path)
    log.truncate(3)  # resume from a checkpoint taken after 3 steps
    log.log_step(3, loss=30.0)
    log.close()
    steps = [r["step"] for r in read_metrics(path) if r["type"] == "step"]
    assert steps == [0, 1, 2, 3]
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_disabled_log_writes_nothing(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl", enabled=False)
    log.log_step(0, loss=1.0)
    log.truncate(0)
    log.close()
    assert not (tmp_path / "m.jsonl").exists()


def test_plots_are_pngs(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for s, w in ((0, [0.5, 0.5]), (5, [0.6, 0.4]), (10, [0.7, 0.3])):
        log.log_interval(s, ["a", "b"], w, [10.0 - s / 2, 8.0], [2.0, 3.0])
    log.close()
    paths = plot_metrics(path, tmp_path / "plots")
    assert [p.name for p in paths] == ["domain_weights.png", "domain_ppl.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    assert plot_metrics(tmp_path / "missing.jsonl", tmp_path / "p2") == []


def test_tensorboard_is_optional(tmp_path):
    """With tensorboard installed, scalars go to event files; without, a clear error."""
    import importlib.util

    from ddk.cache.errors import BackendUnavailableError

    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(BackendUnavailableError, match="pip install tensorboard"):
            MetricsLog(tmp_path / "m.jsonl", tensorboard_dir=tmp_path / "tb")
        return
    log = MetricsLog(tmp_path / "m.jsonl", tensorboard_dir=tmp_path / "tb")
    log.log_step(0, loss=1.0)
    log.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
