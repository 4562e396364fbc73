"""torch.autograd.gradcheck (float64 finite differences) on the hand-written gradient.

The chunked PyTorch path has its own backward (the gradient is computed in the forward
sweep), so gradcheck really tests the derived formula: q_j - p_j on cached ids,
q_j (1 - p_tail / q_tail) elsewhere, the T factor and the CE term.
"""

from __future__ import annotations

import pytest
import torch
from ddk.kernels import fused_linear_sparse_kl_loss, sparse_kl_loss


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"kl_weight": 0.7, "ce_weight": 1.3},
        {"kl_weight": 0.7, "ce_weight": 1.3, "temperature": 1.7},
        {"temperature": 0.6, "reduction": "sum"},
        {"tail": "renorm", "ce_weight": 0.5},
    ],
    ids=["kl", "kl+ce", "T1.7+ce", "T0.6-sum", "renorm+ce"],
)
@pytest.mark.parametrize("tail_zero", [False, True], ids=["tail", "tail0"])
def test_gradcheck_sparse_kl_float64(opts, tail_zero, make_case, monkeypatch):
    import ddk.kernels.torch_impl as ti

    monkeypatch.setattr(ti, "CHUNK_ELEMENTS", 20)  # 2 rows per chunk: crosses chunk borders
    case = make_case(
        n=5,
        v=9,
        k=3,
        dtype=torch.float64,
        lp_dtype=torch.float64,
        ignore_rows=(1,),
        label_in_topk_rows=(2,),
        tail_zero=tail_zero,
    )
    z = case["logits"].clone().requires_grad_()

    def f(x):
        return sparse_kl_loss(
            x, case["ids"], case["lp"], case["tail"], case["labels"], backend="torch", **opts
        )

    assert torch.autograd.gradcheck(f, (z,), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gradcheck_fused_linear_float64(make_case):
    case = make_case(n=6, v=11, k=3, ignore_rows=(4,))
    g = torch.Generator().manual_seed(1)
    h = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 4, generator=g, dtype=torch.float64, requires_grad=True)

    def f(hh, ww):
        return fused_linear_sparse_kl_loss(
            hh,
            ww,
            case["ids"],
            case["lp"].double(),
            case["tail"].double(),
            case["labels"],
            kl_weight=0.5,
            ce_weight=1.0,
            temperature=1.3,
            chunk_rows=4,
        )

    assert torch.autograd.gradcheck(f, (h, w), eps=1e-6, atol=1e-8, rtol=1e-6)
