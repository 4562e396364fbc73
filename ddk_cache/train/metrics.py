"""Training metrics: one JSON object per line, PNG plots, optional TensorBoard.

Two record types share metrics.jsonl:
  {"type": "step", "step": s, "loss": .., "ce": .., "kl": .., "lr": .., "grad_norm": ..,
   "tokens": .., "tokens_per_s": ..}                        -- optimizer step s (0-based)
  {"type": "interval", "step": s, "domains": [..], "weights": [..], "ppl_student": [..],
   "ppl_teacher": [..], "ratio": [..]}                       -- mixture used from step s on
A checkpoint taken after s steps resumes at step s, so truncate(s) drops every record with
step >= s that a killed run may have written after its last checkpoint.
Only rank 0 writes (enabled=False elsewhere).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "plot_metrics", "read_metrics"]


def _clean(v: Any) -> Any:
    """JSON-safe: floats that are not finite become None (strict JSON has no NaN/inf)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete records of a metrics.jsonl (a torn last line from a kill is ignored)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class MetricsLog:
    """Appends records to `path` (flushed per line); mirrors scalars to TensorBoard if asked."""

    def __init__(self, path: str | os.PathLike, *, enabled: bool = True,
                 tensorboard_dir: str | os.PathLike | None = None) -> None:
        self.path, self.enabled = Path(path), enabled
        self._f = None
        self._tb = None
        if not enabled:
            return
        if tensorboard_dir is not None:
            from ddk.cache.errors import BackendUnavailableError
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise BackendUnavailableError(
                    f"--tensorboard needs the tensorboard package ({e}); pip install tensorboard "
                    "or drop the option (metrics.jsonl and the PNG plots are always written)"
                ) from e
            self._tb = SummaryWriter(str(tensorboard_dir))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  (lives with self)

    def truncate(self, step: int) -> None:
        """Keep only records with step < `step` (called on resume from a checkpoint at `step`)."""
        if not self.enabled:
            return
        keep = [r for r in read_metrics(self.path) if r.get("step", -1) < step]
        self._f.close()
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
        os.replace(tmp, self.path)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  (lives with self)

    def _write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._f.write(json.dumps(_clean(record)) + "\n")
        self._f.flush()

    def log_step(self, step: int, **values: float) -> None:
        self._write({"type": "step", "step": step, **values})
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"train/{k}", v, step)

    def log_interval(self, step: int, domains: list[str], weights: list[float],
                     ppl_student: list[float], ppl_teacher: list[float], *,
                     saturation: dict[str, Any] | None = None) -> None:
        """One interval's weights and perplexities; ddk's with its saturation diagnosis."""
        ratio = [s / t for s, t in zip(ppl_student, ppl_teacher, strict=True)]
        rec = {"type": "interval", "step": step, "domains": list(domains),
               "weights": list(weights), "ppl_student": list(ppl_student),
               "ppl_teacher": list(ppl_teacher), "ratio": ratio}
        if saturation is not None:
            rec["saturation"] = saturation
        self._write(rec)
        if self._tb is not None:
            for i, d in enumerate(domains):
                self._tb.add_scalar(f"weight/{d}", weights[i], step)
                self._tb.add_scalar(f"ppl_student/{d}", ppl_student[i], step)
                self._tb.add_scalar(f"ppl_ratio/{d}", ratio[i], step)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def plot_metrics(path: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Write domain_weights.png and domain_ppl.png from a metrics.jsonl; returns the paths.

    Needs matplotlib (Agg backend, no display); without it, warns and writes nothing.
    """
    intervals = [r for r in read_metrics(path) if r.get("type") == "interval"]
    if not intervals:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: skipping plots (metrics.jsonl has the data)",
                      stacklevel=2)
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    domains = intervals[-1]["domains"]
    steps = [r["step"] for r in intervals]
    paths = []

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, d in enumerate(domains):
        ax.step(steps, [r["weights"][i] for r in intervals], where="post", label=d, marker="o",
                markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("sampling weight")
    ax.set_title("Domain weights")
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out / "domain_weights.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, d in enumerate(domains):
        line, = ax.plot(steps, [r["ppl_student"][i] for r in intervals], marker="o",
                        markersize=3, label=f"{d} (student)")
        ax.axhline(intervals[-1]["ppl_teacher"][i], color=line.get_color(), linestyle="--",
                   linewidth=1, label=f"{d} (teacher)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("validation perplexity")
    ax.set_title("Per-domain perplexity (dashed: teacher)")
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    paths.append(out / "domain_ppl.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths
