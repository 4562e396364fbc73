"""Reduction of the per-row loss terms: weighting of KL and CE, then mean / sum / none."""

from __future__ import annotations

import torch
from ddk.kernels.inputs import LossOptions, PreparedTargets


def combine_rows(kl: torch.Tensor, ce: torch.Tensor, opts: LossOptions) -> torch.Tensor:
    """kl_weight * T^2 * kl + ce_weight * ce per row (ignored rows are already 0)."""
    rows = kl * (opts.kl_weight * opts.temperature**2)
    if opts.ce_weight > 0:
        rows = rows + opts.ce_weight * ce
    return rows


def reduce_rows(rows: torch.Tensor, prep: PreparedTargets, opts: LossOptions) -> torch.Tensor:
    """Apply the reduction: mean over active rows (0 if none), sum, or none."""
    if opts.reduction == "none":
        return rows
    total = rows.sum()
    if opts.reduction == "mean":
        total = total * prep.row_scale.to(total.dtype)
    return total
