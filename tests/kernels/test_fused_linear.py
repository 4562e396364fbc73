"""fused_linear_sparse_kl_loss against the unfused loss on explicit logits (and the oracle)."""

from __future__ import annotations

import pytest
import torch
from ddk.kernels import fused_linear_sparse_kl_loss, sparse_kl_loss

pytestmark = pytest.mark.filterwarnings(
    "ignore:invalid value encountered:RuntimeWarning", "ignore:divide by zero:RuntimeWarning"
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _hw(n, h, v, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    hid = (torch.randn(n, h, generator=g) * 0.5).to(dtype).to(DEVICE)
    w = (torch.randn(v, h, generator=g) * 0.5).to(dtype).to(DEVICE)
    return hid, w


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("chunk_rows", [None, 3])
@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"kl_weight": 0.5, "ce_weight": 1.0, "temperature": 2.0},
        {"tail": "renorm", "reduction": "sum"},
    ],
    ids=["kl", "kl+ce+T", "renorm-sum"],
)
def test_fused_matches_unfused_fp32(backend, chunk_rows, opts, make_case, relerr):
    n, h, v = 10, 16, 37
    case = make_case(n=n, v=v, k=5, ignore_rows=(2, 7), label_in_topk_rows=(1,), device=DEVICE)
    hid, w = _hw(n, h, v, torch.float32)
    # reference: explicit logits in float64, autograd through the matmul
    h64 = hid.double().cpu().requires_grad_()
    w64 = w.double().cpu().requires_grad_()
    ref = sparse_kl_loss(
        h64 @ w64.t(),
        case["ids"].cpu(),
        case["lp"].cpu(),
        case["tail"].cpu(),
        case["labels"].cpu(),
        backend="torch",
        **opts,
    )
    ref.backward()
    hh, ww = hid.clone().requires_grad_(), w.clone().requires_grad_()
    loss = fused_linear_sparse_kl_loss(
        hh,
        ww,
        case["ids"],
        case["lp"],
        case["tail"],
        case["labels"],
        chunk_rows=chunk_rows,
        backend=backend,
        **opts,
    )
    (2.5 * loss).backward()  # grad_output != 1: backward rescales the stored gradients
    assert relerr(loss, ref) < 1e-5
    assert relerr(hh.grad, 2.5 * h64.grad) < 1e-5
    assert relerr(ww.grad, 2.5 * w64.grad) < 1e-5


@pytest.mark.parametrize("weight_grad_fp32", [False, True])
def test_fused_bf16_within_1e2(weight_grad_fp32, make_case, relerr):
    n, h, v = 24, 32, 50
    case = make_case(n=n, v=v, k=6, ignore_rows=(5,), device=DEVICE)
    hid, w = _hw(n, h, v, torch.bfloat16)
    h64 = hid.double().cpu().requires_grad_()
    w64 = w.double().cpu().requires_grad_()
    opts = {"kl_weight": 0.5, "ce_weight": 1.0}
    ref = sparse_kl_loss(
        h64 @ w64.t(),
        case["ids"].cpu(),
        case["lp"].cpu(),
        case["tail"].cpu(),
        case["labels"].cpu(),
        backend="torch",
        **opts,
    )
    ref.backward()
    hh, ww = hid.clone().requires_grad_(), w.clone().requires_grad_()
    loss = fused_linear_sparse_kl_loss(
        hh,
        ww,
        case["ids"],
        case["lp"],
        case["tail"],
        case["labels"],
        chunk_rows=5,
        weight_grad_fp32=weight_grad_fp32,
        **opts,
    )
    loss.backward()
    assert hh.grad.dtype == torch.bfloat16 and ww.grad.dtype == torch.bfloat16
    assert relerr(loss, ref) < 1e-2
    assert relerr(hh.grad, h64.grad) < 1e-2
    assert relerr(ww.grad, w64.grad) < 1e-2


def test_fused_only_hidden_requires_grad_and_no_grad(make_case, relerr):
    case = make_case(n=6, v=20, k=3, device=DEVICE)
    hid, w = _hw(6, 8, 20, torch.float32)
    hh = hid.clone().requires_grad_()
    loss = fused_linear_sparse_kl_loss(hh, w, case["ids"], case["lp"], case["tail"], chunk_rows=4)
    loss.backward()
    assert w.grad is None and hh.grad is not None
    with torch.no_grad():
        loss2 = fused_linear_sparse_kl_loss(hid, w, case["ids"], case["lp"], case["tail"])
    assert relerr(loss2, loss) < 1e-6


def test_default_chunk_rows():
    from ddk.kernels.fused_linear import default_chunk_rows

    assert default_chunk_rows(8192, 151936, torch.bfloat16) == 192  # ~64 MiB of bf16 logits
    assert default_chunk_rows(10, 151936, torch.bfloat16) == 10
    assert default_chunk_rows(100_000, 10**9, torch.float32) == 64
