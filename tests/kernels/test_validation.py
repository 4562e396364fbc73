"""Invalid inputs raise SparseKLInputError (a DDKError and ValueError) with a useful message."""

from __future__ import annotations

import pytest
import torch
from ddk.cache.errors import BackendUnavailableError, DDKError
from ddk.kernels import SparseKLInputError, fused_linear_sparse_kl_loss, sparse_kl_loss


def _call(case, **kw):
    args = {
        "student_logits": case["logits"],
        "topk_ids": case["ids"],
        "topk_logprobs": case["lp"],
        "tail_logprob": case["tail"],
        "labels": case["labels"],
    }
    opts = {k: v for k, v in kw.items() if k not in args}
    args.update({k: v for k, v in kw.items() if k in args})
    return sparse_kl_loss(**args, backend="torch", **opts)


def test_error_type_is_ddk_and_value_error():
    assert issubclass(SparseKLInputError, DDKError)
    assert issubclass(SparseKLInputError, ValueError)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda c: {"student_logits": c["logits"][0]}, "must be 2-D"),
        (lambda c: {"student_logits": c["logits"].to(torch.int32)}, "float32/bfloat16"),
        (lambda c: {"topk_ids": c["ids"][:-1]}, "topk_ids must be"),
        (lambda c: {"topk_ids": c["ids"].float()}, "int32 or int64"),
        (lambda c: {"topk_ids": c["ids"][:, :0], "topk_logprobs": c["lp"][:, :0]}, "k = 0"),
        (lambda c: {"topk_logprobs": c["lp"][:, :-1]}, "topk_logprobs must be"),
        (lambda c: {"topk_logprobs": c["lp"].long()}, "float tensor"),
        (lambda c: {"tail_logprob": c["tail"][:-1]}, "tail_logprob must be"),
        (lambda c: {"labels": c["labels"].float()}, "integer tensor"),
        (lambda c: {"labels": c["labels"][:-1]}, "labels must be"),
        (lambda c: {"labels": None, "ce_weight": 1.0}, "needs labels"),
        (lambda c: {"temperature": 0.0}, "temperature"),
        (lambda c: {"temperature": float("nan")}, "temperature"),
        (lambda c: {"kl_weight": -1.0}, "kl_weight"),
        (lambda c: {"tail": "drop"}, "tail must be"),
        (lambda c: {"reduction": "avg"}, "reduction must be"),
    ],
)
def test_shape_dtype_option_errors(mutate, match, make_case):
    case = make_case(n=5, v=20, k=4)
    with pytest.raises(SparseKLInputError, match=match):
        _call(case, **mutate(case))


def test_k_larger_than_vocab(make_case):
    case = make_case(n=3, v=20, k=4)
    with pytest.raises(SparseKLInputError, match="exceeds the student vocabulary"):
        _call(case, student_logits=case["logits"][:, :3])


def _set(t, row, col, val):
    t = t.clone()
    if col is None:
        t[row] = val
    else:
        t[row, col] = val
    return t


@pytest.mark.parametrize(
    "field, col, val, match",
    [
        ("ids", 1, 20, "outside the student vocabulary"),
        ("ids", 0, -1, "outside the student vocabulary"),
        ("lp", 2, float("nan"), "contains NaN"),
        ("lp", 2, float("inf"), "values > 0"),
        ("lp", 2, 0.5, "values > 0"),
        ("tail", None, float("nan"), "tail_logprob contains NaN"),
        ("tail", None, float("inf"), "tail_logprob has values > 0"),
        ("tail", None, -0.01, "is not 1"),
        ("labels", None, 20, "labels has values outside"),
        ("labels", None, -5, "labels has values outside"),
    ],
)
def test_value_errors_name_the_row(field, col, val, match, make_case):
    case = make_case(n=5, v=20, k=4)
    case[field] = _set(case[field], 3, col, val)
    with pytest.raises(SparseKLInputError, match=match) as exc:
        _call(case)
    assert "first bad row: 3" in str(exc.value)


def test_duplicate_ids_are_refused(make_case):
    case = make_case(n=4, v=20, k=4)
    ids = case["ids"].clone()
    ids[2, 3] = ids[2, 0]
    with pytest.raises(SparseKLInputError, match="duplicate id"):
        _call(case, topk_ids=ids)


def test_logprobs_summing_over_one_are_refused(make_case):
    case = make_case(n=4, v=20, k=4)
    lp = torch.full_like(case["lp"], -0.1)  # 4 * 0.905 > 1
    with pytest.raises(SparseKLInputError, match="exceeds 1"):
        _call(case, topk_logprobs=lp, tail_logprob=None)


def test_zero_teacher_mass_is_refused(make_case):
    case = make_case(n=4, v=20, k=4)
    lp = case["lp"].clone()
    lp[1] = float("-inf")
    with pytest.raises(SparseKLInputError, match="zero probability mass"):
        _call(case, topk_logprobs=lp, tail_logprob=None)


def test_value_checks_skip_ignored_rows_and_validate_false(make_case):
    case = make_case(n=4, v=20, k=4, ignore_rows=(2,))
    case["ids"] = _set(case["ids"], 2, 0, 999)
    assert torch.isfinite(_call(case))  # junk only in an ignored row: fine
    bad = make_case(n=4, v=20, k=4)
    bad["lp"] = _set(bad["lp"], 0, 0, 0.5)
    _call(bad, validate=False)  # no value checks, no error (documented)
    with pytest.raises(SparseKLInputError):
        _call(bad)


def test_device_mismatch_is_refused(make_case):
    case = make_case(n=3, v=20, k=4)
    meta_ids = torch.empty_like(case["ids"], device="meta")
    with pytest.raises(SparseKLInputError, match="move them to one device"):
        _call(case, topk_ids=meta_ids)


def test_backend_errors(make_case):
    case = make_case(n=3, v=20, k=4)
    with pytest.raises(SparseKLInputError, match="backend must be"):
        sparse_kl_loss(case["logits"], case["ids"], case["lp"], backend="cuda")
    with pytest.raises(SparseKLInputError, match="float64"):
        sparse_kl_loss(case["logits"].double(), case["ids"], case["lp"], backend="triton")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-without-interpreter refusal")
def test_triton_backend_on_cpu_without_interpreter_is_refused(make_case, monkeypatch):
    import ddk.kernels.triton_impl as tr

    monkeypatch.setattr(tr, "is_interpreted", lambda: False)
    case = make_case(n=3, v=20, k=4)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
        sparse_kl_loss(case["logits"], case["ids"], case["lp"], backend="triton")


def test_fused_linear_errors(make_case):
    case = make_case(n=4, v=20, k=4)
    h = torch.randn(4, 8)
    w = torch.randn(20, 8)
    args = (case["ids"], case["lp"], case["tail"], case["labels"])
    with pytest.raises(SparseKLInputError, match="hidden size mismatch"):
        fused_linear_sparse_kl_loss(h, torch.randn(20, 7), *args)
    with pytest.raises(SparseKLInputError, match="share a dtype"):
        fused_linear_sparse_kl_loss(h, w.double(), *args)
    with pytest.raises(SparseKLInputError, match="reduction='mean' or 'sum'"):
        fused_linear_sparse_kl_loss(h, w, *args, reduction="none")
    with pytest.raises(SparseKLInputError, match="chunk_rows"):
        fused_linear_sparse_kl_loss(h, w, *args, chunk_rows=0)
    with pytest.raises(SparseKLInputError, match="outside the student vocabulary"):
        fused_linear_sparse_kl_loss(h, w[:10], *args)
