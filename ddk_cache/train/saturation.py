"""When DDK's domain weights stop carrying information: the saturation diagnosis.

DDK turns per-domain perplexity ratios (student over teacher) into weights through exp:
r_0 = softmax(ratio), then psi = r * exp(ratio) at every update. That tilts the mixture
gently when the ratios lie within a small factor of each other (the paper's students, a few
times worse than their teachers). When the ratios are tens or hundreds apart (a student far
behind its teacher), exp saturates: one domain takes all of the discrepancy-driven weight and
every other domain gets only the (1 - alpha) / N smoothing floor, which is a one-hot mixture
rather than a re-weighting. `diagnose` says which case a set of ratios is in, for the trainer
(at every DDK interval) and for `ddk eval` (before a budget is spent on a student).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from ddk.cache.train.ddk_weights import psi_share

__all__ = ["DOCS_SECTION", "SATURATED_SHARE", "Saturation", "diagnose", "discrepancy_share",
           "saturation_summary"]

#: one domain holding more than this share of the discrepancy-driven weight is saturation
SATURATED_SHARE = 0.9
#: where the regime is explained
DOCS_SECTION = "docs/user-guide.md#when-ddk-saturates"


@dataclass(frozen=True)
class Saturation:
    """DDK's weights for one set of measured ratios, and whether exp has saturated them.

    share: the discrepancy-driven part of the weights, before the uniform smoothing
    (r_0 at the first interval, psi / sum(psi) after); it sums to 1 over `domains`.
    """

    domains: list[str]
    ratios: list[float]
    share: list[float]
    first_interval: bool

    @property
    def top(self) -> str:
        """The domain with the largest share."""
        return self.domains[max(range(len(self.share)), key=self.share.__getitem__)]

    @property
    def top_share(self) -> float:
        return max(self.share)

    @property
    def saturated(self) -> bool:
        """Whether one domain takes more than SATURATED_SHARE of the discrepancy weight."""
        return len(self.domains) > 1 and self.top_share > SATURATED_SHARE

    def describe(self) -> str:
        """One line: the ratios' range, who takes the weight, and what it means."""
        lo, hi = min(self.ratios), max(self.ratios)
        formula = "r_0 = softmax(ratio)" if self.first_interval else "psi = r * exp(ratio)"
        head = (f"student/teacher perplexity ratios {lo:.2f} to {hi:.2f}: {formula} gives "
                f"{self.top} {self.top_share:.2f} of the discrepancy-driven weight")
        if not self.saturated:
            return head + " (DDK tilts the mixture; no saturation)"
        return (head + "; the other domains get only the smoothing floor, so DDK's weights are "
                "one-hot, not a re-weighting. The student is too far behind its teacher for "
                f"DDK's formula; see {DOCS_SECTION}")

    def to_dict(self) -> dict[str, Any]:
        return {"saturated": self.saturated, "top_domain": self.top,
                "top_share": self.top_share, "ratio_min": min(self.ratios),
                "ratio_max": max(self.ratios), "share": list(self.share),
                "criterion": f"top share > {SATURATED_SHARE}", "message": self.describe()}


def discrepancy_share(ratios: Sequence[float] | torch.Tensor,
                      weights: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """DDK's weights before smoothing: softmax(ratio) if `weights` is None (r_0), else
    psi / sum(psi) with psi = weights * exp(ratio) (one update), in float64."""
    ratio = torch.as_tensor(ratios, dtype=torch.float64).reshape(-1)
    if weights is None:
        return torch.softmax(ratio, dim=0)
    return psi_share(torch.as_tensor(weights, dtype=torch.float64).reshape(-1), ratio)


def diagnose(domains: Sequence[str], ratios: Sequence[float] | torch.Tensor,
             weights: Sequence[float] | torch.Tensor | None = None) -> Saturation:
    """The saturation diagnosis for ratios measured with the previous weights `weights`
    (None: the first interval, which sets r_0)."""
    share = discrepancy_share(ratios, weights)
    return Saturation(list(domains), [float(x) for x in torch.as_tensor(ratios).reshape(-1)],
                      share.tolist(), weights is None)


def saturation_summary(history: Sequence[dict[str, Any]], domains: Sequence[str]
                       ) -> dict[str, Any] | None:
    """summary.json's account of a ddk run's intervals (None for kd / cpt): how many were
    saturated, from which step, and which domains took the weight."""
    diags = [(h["step"], h["saturation"]) for h in history if "saturation" in h]
    if not diags:
        return None
    hits = [(step, d) for step, d in diags if d["saturated"]]
    return {"intervals": len(diags), "saturated_intervals": len(hits),
            "first_saturated_step": hits[0][0] if hits else None,
            "domains": sorted({d["top_domain"] for _, d in hits}, key=list(domains).index),
            "threshold": SATURATED_SHARE, "docs": DOCS_SECTION}
