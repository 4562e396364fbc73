"""Input validation for the sparse KL losses: shapes, dtypes and (optionally) values.

Shape/dtype/option checks are free. Value checks (ids in range, no duplicate ids, finite
teacher log-probs, labels in range) look at the data, so on a GPU they cost a few tiny
kernels over the N x k inputs (a sort of each row of ids for the duplicate check) and one
device->host sync; pass validate=False to skip them once the data pipeline is trusted.
Value checks only look at active rows (label != ignore_index): padding rows may hold junk.
"""

from __future__ import annotations

import math

import torch
from ddk.kernels.errors import SparseKLInputError

LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
ID_DTYPES = (torch.int32, torch.int64)
LOGPROB_DTYPES = (torch.float16, torch.float32, torch.bfloat16, torch.float64)
TAIL_MODES = ("bucket", "renorm", "none")
REDUCTIONS = ("mean", "sum", "none")

# A log-prob above this is not a log-prob (allows fp16 rounding of values just below 0).
_LOGPROB_MAX = 1e-3
# |sum_i p_i + p_tail - 1| allowed in tail="bucket" mode (fp16 storage of log-probs).
_MASS_TOL = 1e-2
# A value check: a bool mask, [N] or [N, k], True where a row breaks the rule; its message.
_Check = tuple[torch.Tensor, str]


def _err(msg: str) -> SparseKLInputError:
    return SparseKLInputError(msg)


def check_options(
    *,
    kl_weight: float,
    ce_weight: float,
    temperature: float,
    tail: str,
    reduction: str,
    has_labels: bool,
) -> None:
    """Reject option values that make no sense, with the accepted range in the message."""
    for name, val in (("kl_weight", kl_weight), ("ce_weight", ce_weight)):
        if not isinstance(val, (int, float)) or not math.isfinite(val) or val < 0:
            raise _err(f"{name} must be a finite float >= 0, got {val!r}")
    if (
        not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise _err(f"temperature must be a finite float > 0, got {temperature!r}")
    if tail not in TAIL_MODES:
        raise _err(f"tail must be one of {TAIL_MODES}, got {tail!r}")
    if tail == "none" and temperature != 1.0:
        raise _err(
            f"tail='none' takes the target as given (a sampled teacher target, an unbiased "
            f"estimate of the teacher at temperature 1), so temperature must be 1.0, got "
            f"{temperature!r}"
        )
    if reduction not in REDUCTIONS:
        raise _err(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if ce_weight > 0 and not has_labels:
        raise _err("ce_weight > 0 needs labels: pass labels [N] or set ce_weight=0.0")


def check_logits(student_logits: torch.Tensor, name: str = "student_logits") -> tuple[int, int]:
    """Check the [N, V] logits (rank, dtype); return (N, V)."""
    if student_logits.dim() != 2:
        raise _err(
            f"{name} must be 2-D [N, V], got shape {tuple(student_logits.shape)}; "
            "flatten batch and sequence first (x.view(-1, V))"
        )
    if student_logits.dtype not in LOGIT_DTYPES:
        raise _err(f"{name} must be float32/bfloat16/float16/float64, got {student_logits.dtype}")
    n, v = student_logits.shape
    return n, v


def check_targets(
    n: int,
    v: int,
    device: torch.device,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    tail_logprob: torch.Tensor | None,
    labels: torch.Tensor | None,
    *,
    logits_name: str = "student_logits",
) -> int:
    """Check ranks, sizes, dtypes and devices of the teacher targets and labels; return k."""
    if topk_ids.dim() != 2 or topk_ids.shape[0] != n:
        raise _err(f"topk_ids must be [N={n}, k], got shape {tuple(topk_ids.shape)}")
    if topk_ids.dtype not in ID_DTYPES:
        raise _err(f"topk_ids must be int32 or int64, got {topk_ids.dtype}")
    k = topk_ids.shape[1]
    if k < 1:
        raise _err("topk_ids has k = 0 columns; at least one cached token per row is needed")
    if k > v:
        raise _err(f"k = {k} cached ids per row exceeds the student vocabulary V = {v}")
    if tuple(topk_logprobs.shape) != (n, k):
        raise _err(
            f"topk_logprobs must be [N={n}, k={k}] like topk_ids, got {tuple(topk_logprobs.shape)}"
        )
    if topk_logprobs.dtype not in LOGPROB_DTYPES:
        raise _err(
            f"topk_logprobs must be a float tensor (float16/float32), got {topk_logprobs.dtype}"
        )
    if tail_logprob is not None:
        if tuple(tail_logprob.shape) != (n,):
            raise _err(f"tail_logprob must be [N={n}], got shape {tuple(tail_logprob.shape)}")
        if tail_logprob.dtype not in LOGPROB_DTYPES:
            raise _err(f"tail_logprob must be a float tensor, got {tail_logprob.dtype}")
    if labels is not None:
        if tuple(labels.shape) != (n,):
            raise _err(f"labels must be [N={n}], got shape {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
            raise _err(f"labels must be an integer tensor, got {labels.dtype}")
    for name, t in (
        ("topk_ids", topk_ids),
        ("topk_logprobs", topk_logprobs),
        ("tail_logprob", tail_logprob),
        ("labels", labels),
    ):
        if t is not None and t.device != device:
            raise _err(
                f"{name} is on {t.device} but {logits_name} is on {device}; move them to one device"
            )
    return k


def check_values(
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    tail_logprob: torch.Tensor | None,
    labels: torch.Tensor | None,
    active: torch.Tensor,
    *,
    vocab_size: int,
    ignore_index: int,
    tail: str,
) -> None:
    """Data checks on active rows, one host sync in the good case; raise on the first failure."""
    ids = topk_ids.long()
    checks = _id_checks(ids, active, vocab_size)
    checks += _logprob_checks(
        topk_logprobs,
        tail_logprob,
        active,
        tail_bucket=tail == "bucket" and ids.shape[1] < vocab_size,
        whole=tail == "none",
    )
    if labels is not None:
        lab = labels.long()
        checks.append(
            (
                active & ((lab < 0) | (lab >= vocab_size)),
                f"labels has values outside [0, {vocab_size}) that are not ignore_index={ignore_index}",
            )
        )
    _raise_first_failure(checks)


def _id_checks(ids: torch.Tensor, active: torch.Tensor, vocab_size: int) -> list[_Check]:
    """Cached ids inside the vocabulary, no id twice in a row."""
    act = active.unsqueeze(-1)
    checks: list[_Check] = []
    checks.append(
        (
            ((ids < 0) | (ids >= vocab_size)) & act,
            f"topk_ids has ids outside the student vocabulary [0, {vocab_size})",
        )
    )
    if ids.shape[1] > 1:
        srt = torch.sort(ids, dim=-1).values
        checks.append(
            (
                (srt[:, 1:] == srt[:, :-1]) & act,
                "topk_ids has a duplicate id within a row; each cached id must appear once per row",
            )
        )
    return checks


def _logprob_checks(
    topk_logprobs: torch.Tensor,
    tail_logprob: torch.Tensor | None,
    active: torch.Tensor,
    *,
    tail_bucket: bool,
    whole: bool = False,
) -> list[_Check]:
    """Teacher log-probs that are log-probs: no NaN, none > 0, mass 1 (bucket) or <= 1, not 0.

    tail_bucket: the tail is a bucket of its own (tail="bucket" and k < V), so the cached
    mass plus the tail's must be 1. whole: the entries are the whole target (tail="none"),
    so their mass must be 1.
    """
    act = active.unsqueeze(-1)
    lp = topk_logprobs.float()
    checks: list[_Check] = []
    checks.append((torch.isnan(lp) & act, "topk_logprobs contains NaN"))
    checks.append(
        (
            (lp > _LOGPROB_MAX) & act,
            (
                "topk_logprobs has values > 0 (+inf or not log-probs: pass log_softmax of the "
                "teacher, not raw logits or probabilities)"
            ),
        )
    )
    p_sum = torch.exp(lp).sum(-1)
    mass = p_sum
    if tail_logprob is not None:
        tl_ = tail_logprob.float()
        checks.append((torch.isnan(tl_) & active, "tail_logprob contains NaN"))
        checks.append(
            ((tl_ > _LOGPROB_MAX) & active, "tail_logprob has values > 0 (+inf or not a log-prob)")
        )
        if tail_bucket:
            mass = p_sum + torch.exp(tl_.clamp(max=0.0))
            checks.append(
                (
                    ((mass - 1.0).abs() > _MASS_TOL) & active,
                    (
                        f"sum(exp(topk_logprobs)) + exp(tail_logprob) is not 1 "
                        f"(tolerance {_MASS_TOL}); tail_logprob must be "
                        "log(1 - sum exp(topk_logprobs))"
                    ),
                )
            )
    if whole:
        checks.append(
            (
                ((p_sum - 1.0).abs() > _MASS_TOL) & active,
                (
                    f"sum(exp(topk_logprobs)) is not 1 (tolerance {_MASS_TOL}); with "
                    "tail='none' the entries are the whole target (weights summing to 1, "
                    "-inf for padding)"
                ),
            )
        )
    checks.append(
        (
            (p_sum > 1.0 + _MASS_TOL) & active,
            f"sum(exp(topk_logprobs)) exceeds 1 (tolerance {_MASS_TOL}); these are not log-probs",
        )
    )
    checks.append(
        ((mass == 0) & active, "a row's teacher has zero probability mass (all log-probs -inf)")
    )
    return checks


def _raise_first_failure(checks: list[_Check]) -> None:
    """Reduce every check on the device, fetch them with one sync, raise on the first failure."""
    flags = torch.stack([c if c.dim() == 1 else c.any(-1) for c, _ in checks])  # [C, N]
    bad = flags.any(-1).tolist()  # the one sync
    for (_, msg), (is_bad, row_flags) in zip(checks, zip(bad, flags)):
        if is_bad:
            row = int(torch.nonzero(row_flags)[0, 0])
            raise _err(f"{msg} (first bad row: {row})")
