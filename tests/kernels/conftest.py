"""Fixtures for ddk.kernels tests: random sparse-KL cases and the float64 oracle.

Without CUDA the Triton kernels run under the Triton interpreter. TRITON_INTERPRET=1 must be
set when ddk.kernels.triton_impl is imported (the jit decorator reads it) and while kernels
run (the interpreter reads it lazily), so it is set around that import and, by an autouse
fixture, during each test of this folder only; other folders (e.g. vLLM on CPU) never see
it. With CUDA the compiled kernels run on the GPU instead.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

if not HAS_CUDA:
    _prev = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import ddk.kernels.triton_impl  # noqa: F401  (decorated as InterpretedFunction)
    finally:
        if _prev is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = _prev


@pytest.fixture(autouse=True)
def _triton_interpreter(monkeypatch):
    if not HAS_CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def _make_case(
    n: int = 9,
    v: int = 50,
    k: int = 5,
    *,
    dtype: torch.dtype = torch.float32,
    lp_dtype: torch.dtype = torch.float32,
    ids_dtype: torch.dtype = torch.int64,
    teacher_vocab: int | None = None,
    ignore_rows: tuple[int, ...] = (),
    label_in_topk_rows: tuple[int, ...] = (),
    tail_zero: bool = False,
    confident: float = 0.0,
    extreme: bool = False,
    scale: float = 2.0,
    mass: float = 1.0,
    seed: int = 0,
    device: str = "cpu",
) -> dict:
    """A random case: student logits [n, v], teacher top-k over the first `teacher_vocab` ids.

    tail_zero: the teacher puts all its mass on its top-k (tail_logprob = -inf).
    confident: add this much to the student logits of the cached ids (tiny student tail).
    extreme: student logits are +-1e4 (plus noise).
    mass: scale the teacher's probabilities (cached and tail) by this (rounding in a cache).
    """
    g = torch.Generator().manual_seed(seed)
    vt = teacher_vocab or v
    t_logits = torch.randn(n, vt, generator=g, dtype=torch.float64) * 3
    if tail_zero:
        keep = torch.rand(n, vt, generator=g).argsort(-1)[:, :k]
        t_logits = torch.full_like(t_logits, float("-inf")).scatter(
            1, keep, t_logits.gather(1, keep)
        )
    lp_full = torch.log_softmax(t_logits, -1)
    vals, ids = lp_full.topk(k, -1)
    # shuffle the k columns: the kernel must not rely on sorted ids or values
    perm = torch.rand(n, k, generator=g).argsort(-1)
    vals, ids = vals.gather(1, perm), ids.gather(1, perm)
    if k < vt:
        tail = torch.logsumexp(lp_full.scatter(1, ids, float("-inf")), -1)
    else:
        tail = torch.full((n,), float("-inf"), dtype=torch.float64)
    vals, tail = vals + math.log(mass), tail + math.log(mass)
    z = torch.randn(n, v, generator=g, dtype=torch.float64) * scale
    if extreme:
        z = torch.where(torch.rand(n, v, generator=g) < 0.5, -1e4, 1e4) + z
    if confident:
        z = z.scatter_add(1, ids, torch.full(ids.shape, float(confident), dtype=torch.float64))
    labels = torch.randint(0, v, (n,), generator=g)
    for r in label_in_topk_rows:
        labels[r] = ids[r, r % k]
    for r in ignore_rows:
        labels[r] = -100
    return {
        "logits": z.to(dtype).to(device),
        "ids": ids.to(ids_dtype).to(device),
        "lp": vals.to(lp_dtype).to(device),
        "tail": tail.to(lp_dtype).to(device),
        "labels": labels.to(device),
    }


def _oracle(case: dict, *, tail_given: bool = True, labels: bool = True, **opts) -> tuple:
    """float64 loss and d(loss)/d(logits) from the naive autograd formula."""
    from ddk.kernels.reference import sparse_kl_loss_reference
    from ddk.kernels.target import prepare_teacher_target

    z = case["logits"].detach().double().cpu().requires_grad_()
    lab = case["labels"].cpu() if labels else None
    ignore_index = opts.get("ignore_index", -100)
    active = lab != ignore_index if lab is not None else None
    a, b = prepare_teacher_target(
        case["lp"].cpu(),
        case["tail"].cpu() if tail_given else None,
        vocab_size=z.shape[1],
        temperature=opts.get("temperature", 1.0),
        tail=opts.pop("tail", "bucket"),
        active=active,
        dtype=torch.float64,
    )
    loss = sparse_kl_loss_reference(z, case["ids"].cpu(), a, b, lab, **opts)
    loss.sum().backward()
    return loss.detach(), z.grad


@pytest.fixture
def make_case():
    return _make_case


@pytest.fixture
def oracle():
    return _oracle


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x = x.detach().double().cpu()
    ref = ref.detach().double().cpu()
    den = ref.norm()
    if den == 0:
        return float((x - ref).norm())
    return float((x - ref).norm() / den)


@pytest.fixture
def relerr():
    return rel_err
