"""The compiled Triton kernel on a CUDA GPU at real shapes (skipped without CUDA).

CI has no GPU: there the same kernel code runs under the Triton interpreter at small shapes
(test_sparse_kl.py, backend="triton"). Here the oracle is the chunked PyTorch path in
float64 on the GPU, itself checked against the naive formula and gradcheck at small shapes.
"""

from __future__ import annotations

import pytest
import torch
from ddk.kernels import fused_linear_sparse_kl_loss, sparse_kl_loss

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU (real shapes); CI runs the same kernel under the Triton interpreter",
)


def _inputs(n, v, k, dtype, *, confident=0.0, extreme=False, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    z = torch.randn(n, v, generator=g, device="cuda", dtype=torch.float64) * 2
    if extreme:
        z += torch.where(torch.rand(n, v, generator=g, device="cuda") < 0.5, -1e4, 1e4)
    ids = torch.rand(n, v, generator=g, device="cuda").topk(k, -1).indices
    if confident:
        z.scatter_add_(1, ids, torch.full(ids.shape, confident, device="cuda", dtype=torch.float64))
    t = torch.log_softmax(torch.randn(n, k + 1, generator=g, device="cuda") * 2, -1)
    labels = torch.randint(0, v, (n,), generator=g, device="cuda")
    labels[::17] = -100
    labels[1::5] = ids[1::5, 0]  # some labels among the cached ids
    return z.to(dtype), ids.to(torch.int32), t[:, :k].contiguous(), t[:, k].contiguous(), labels


def _rel(x, ref):
    return float((x.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("v", [32000, 50257, 151936])  # 50257: rows not 16-aligned
@pytest.mark.parametrize("k", [16, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_real_shapes_vs_float64(v, k, dtype, temperature):
    n = 1024
    z, ids, lp, tail, labels = _inputs(n, v, k, dtype)
    opts = {"kl_weight": 0.5, "ce_weight": 1.0, "temperature": temperature}
    x64 = z.double().requires_grad_()
    ref = sparse_kl_loss(x64, ids, lp, tail, labels, backend="torch", **opts)
    (g_ref,) = torch.autograd.grad(ref, x64)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for inplace in (False, True):
        x = z.clone().requires_grad_()
        loss = sparse_kl_loss(
            x, ids, lp, tail, labels, backend="triton", inplace_grad=inplace, **opts
        )
        (g,) = torch.autograd.grad(loss, x)
        assert abs(float(loss) - float(ref)) / abs(float(ref)) < tol
        assert _rel(g, g_ref) < tol


@pytest.mark.parametrize("scenario", ["confident", "extreme"])
def test_real_shapes_numerics(scenario):
    n, v, k = 512, 151936, 64
    z, ids, lp, tail, labels = _inputs(
        n,
        v,
        k,
        torch.float32,
        confident=40.0 if scenario == "confident" else 0.0,
        extreme=scenario == "extreme",
    )
    x64 = z.double().requires_grad_()
    ref = sparse_kl_loss(x64, ids, lp, tail, labels, ce_weight=1.0, backend="torch")
    (g_ref,) = torch.autograd.grad(ref, x64)
    x = z.clone().requires_grad_()
    loss = sparse_kl_loss(x, ids, lp, tail, labels, ce_weight=1.0, backend="triton")
    (g,) = torch.autograd.grad(loss, x)
    assert abs(float(loss) - float(ref)) / abs(float(ref)) < 1e-5
    assert _rel(g, g_ref) < 1e-5


def test_fused_real_shape_bf16():
    n, h, v, k = 2048, 1024, 151936, 64
    _, ids, lp, tail, labels = _inputs(n, 1000, k, torch.float32)  # ids < 1000 < v
    g = torch.Generator(device="cuda").manual_seed(3)
    hid = (torch.randn(n, h, generator=g, device="cuda") * 0.5).to(torch.bfloat16)
    w = (torch.randn(v, h, generator=g, device="cuda") * 0.02).to(torch.bfloat16)
    h64, w64 = hid.double().requires_grad_(), w.double().requires_grad_()
    ref = sparse_kl_loss(h64 @ w64.t(), ids, lp, tail, labels, ce_weight=1.0, backend="torch")
    gh_ref, gw_ref = torch.autograd.grad(ref, (h64, w64))
    hh, ww = hid.clone().requires_grad_(), w.clone().requires_grad_()
    loss = fused_linear_sparse_kl_loss(hh, ww, ids, lp, tail, labels, ce_weight=1.0)
    gh, gw = torch.autograd.grad(loss, (hh, ww))
    assert abs(float(loss) - float(ref)) / abs(float(ref)) < 1e-2
    assert _rel(gh, gh_ref) < 1e-2
    assert _rel(gw, gw_ref) < 1e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_unaligned_row_views_and_int64_ids(dtype):
    """Rows that start off any 16-byte boundary (a column-sliced view of a wider buffer),
    int64 ids and int32 labels: the launches bench/gpu/aot_compile.py compiles as their own
    variants, run for real."""
    n, v, k = 256, 49152, 64
    z, ids, lp, tail, labels = _inputs(n, v, k, dtype, seed=4)
    wide = torch.zeros(n, v + 3, device="cuda", dtype=dtype)
    wide[:, 3:] = z
    x64 = z.double().requires_grad_()
    ref = sparse_kl_loss(x64, ids, lp, tail, labels, ce_weight=1.0, temperature=2.0,
                         backend="torch")
    (g_ref,) = torch.autograd.grad(ref, x64)
    x = wide[:, 3:].requires_grad_()
    loss = sparse_kl_loss(x, ids.long(), lp, tail, labels.int(), ce_weight=1.0,
                          temperature=2.0, backend="triton")
    (g,) = torch.autograd.grad(loss, x)
    assert abs(float(loss) - float(ref)) / abs(float(ref)) < 1e-2
    assert _rel(g, g_ref) < 1e-2
    assert torch.equal(wide[:, 3:], z)  # the caller's logits are restored bit-exactly
