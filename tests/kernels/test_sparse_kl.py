"""sparse_kl_loss (both backends) against the float64 autograd oracle: values and gradients.

backend="triton" runs the compiled kernel on CUDA, or the Triton interpreter on CPU (CI).
backend="torch" is the chunked PyTorch path. Small shapes here; real shapes in
test_sparse_kl_gpu.py (CUDA only).
"""

from __future__ import annotations

import pytest
import torch
from ddk.kernels import sparse_kl_loss

# numpy warnings from the interpreter evaluating masked-out lanes (-inf - -inf): harmless
pytestmark = pytest.mark.filterwarnings(
    "ignore:invalid value encountered:RuntimeWarning", "ignore:divide by zero:RuntimeWarning"
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["torch", "triton"]

SCENARIOS = {
    "basic": {"n": 9, "v": 50, "k": 5},
    "k1": {"n": 6, "v": 40, "k": 1},
    "k_eq_V": {"n": 5, "v": 12, "k": 12},
    "ragged_blocks": {"n": 7, "v": 37, "k": 6},  # V not a multiple of the (forced) block of 16
    "ignored_rows": {"n": 8, "v": 30, "k": 4, "ignore_rows": (0, 3, 7)},
    "extreme_logits": {"n": 6, "v": 33, "k": 5, "extreme": True},
    "teacher_tail_zero": {"n": 6, "v": 30, "k": 4, "tail_zero": True},
    "confident_student": {"n": 6, "v": 40, "k": 3, "confident": 40.0},
    "padded_student_vocab": {"n": 6, "v": 48, "k": 5, "teacher_vocab": 40},
    "label_in_topk": {"n": 6, "v": 30, "k": 5, "label_in_topk_rows": (0, 1, 2, 3)},
    # fp16-rounded teacher: sum p + p_tail is 1 only to ~1e-3; the gradient must use the mass
    "fp16_teacher": {"n": 8, "v": 40, "k": 6, "lp_dtype": torch.float16},
    "teacher_mass_1.009": {"n": 8, "v": 40, "k": 6, "mass": 1.009, "confident": 2.0},
}
OPTIONS = {
    "kl": {},
    "kl+ce": {"kl_weight": 0.6, "ce_weight": 1.0},
    "T2.5+ce": {"kl_weight": 0.6, "ce_weight": 1.0, "temperature": 2.5},
    "T0.5": {"temperature": 0.5},
    "renorm+ce": {"tail": "renorm", "ce_weight": 0.3},
}


@pytest.fixture
def small_blocks(monkeypatch):
    """Force several blocks per row in the Triton kernel and several chunks in the torch path."""
    import ddk.kernels.torch_impl as ti
    import ddk.kernels.triton_impl as tr

    monkeypatch.setattr(tr, "MAX_BLOCK_V", 16)
    monkeypatch.setattr(ti, "CHUNK_ELEMENTS", 100)


def _run(case, backend, *, inplace=False, **opts):
    z = case["logits"].clone().requires_grad_()
    loss = sparse_kl_loss(
        z,
        case["ids"],
        case["lp"],
        case["tail"],
        case["labels"],
        backend=backend,
        inplace_grad=inplace,
        **opts,
    )
    loss.sum().backward()
    return loss.detach(), z.grad


@pytest.mark.parametrize("opt_name", list(OPTIONS))
@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_matches_float64_oracle(
    backend, scenario, opt_name, make_case, oracle, relerr, small_blocks
):
    case = make_case(**SCENARIOS[scenario], device=DEVICE)
    opts = OPTIONS[opt_name]
    ref_loss, ref_grad = oracle(case, **dict(opts))
    loss, grad = _run(case, backend, **opts)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert relerr(loss, ref_loss) < 1e-5
    assert relerr(grad, ref_grad) < 1e-5
    assert grad.dtype == case["logits"].dtype


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "scenario", ["basic", "ignored_rows", "confident_student", "extreme_logits"]
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_half_inputs_within_1e2(backend, scenario, dtype, make_case, oracle, relerr):
    case = make_case(**SCENARIOS[scenario], dtype=dtype, lp_dtype=torch.float16, device=DEVICE)
    opts = {"kl_weight": 0.5, "ce_weight": 1.0, "temperature": 1.5}
    ref_loss, ref_grad = oracle(case, **dict(opts))  # oracle sees the same rounded inputs
    loss, grad = _run(case, backend, **opts)
    assert grad.dtype == dtype
    assert relerr(loss, ref_loss) < 1e-2
    assert relerr(grad, ref_grad) < 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_reductions_and_grad_output(backend, reduction, make_case, oracle, relerr):
    case = make_case(n=8, v=30, k=4, ignore_rows=(2,), device=DEVICE)
    opts = {"kl_weight": 0.7, "ce_weight": 0.4, "reduction": reduction}
    z = case["logits"].clone().requires_grad_()
    loss = sparse_kl_loss(
        z, case["ids"], case["lp"], case["tail"], case["labels"], backend=backend, **opts
    )
    w = torch.linspace(0.5, 2.0, 8, device=DEVICE) if reduction == "none" else torch.tensor(3.0)
    (loss * w.to(loss.device)).sum().backward()
    zr = case["logits"].double().cpu().requires_grad_()
    ref_loss, _ = oracle(case, **dict(opts))
    from ddk.kernels.reference import sparse_kl_loss_reference
    from ddk.kernels.target import prepare_teacher_target

    a, b = prepare_teacher_target(
        case["lp"].cpu(),
        case["tail"].cpu(),
        vocab_size=30,
        temperature=1.0,
        tail="bucket",
        active=case["labels"].cpu() != -100,
        dtype=torch.float64,
    )
    ref = sparse_kl_loss_reference(zr, case["ids"].cpu(), a, b, case["labels"].cpu(), **opts)
    (ref * w.double().cpu()).sum().backward()
    assert loss.shape == ref_loss.shape
    assert relerr(loss, ref_loss) < 1e-5
    assert relerr(z.grad, zr.grad) < 1e-5
    if reduction == "none":
        assert float(loss[2].detach()) == 0.0 and bool((z.grad[2] == 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_grad_writes_into_logits_buffer(backend, make_case, oracle, relerr, small_blocks):
    case = make_case(n=7, v=37, k=5, ignore_rows=(1,), label_in_topk_rows=(2,), device=DEVICE)
    opts = {"kl_weight": 0.5, "ce_weight": 1.0, "temperature": 2.0}
    ref_loss, ref_grad = oracle(case, **dict(opts))
    leaf = case["logits"].clone().requires_grad_()
    logits = leaf * 1.0  # non-leaf, like an LM head output
    buf_ptr = logits.data_ptr()
    loss = sparse_kl_loss(
        logits,
        case["ids"],
        case["lp"],
        case["tail"],
        case["labels"],
        backend=backend,
        inplace_grad=True,
        **opts,
    )
    # the gradient is already in the logits buffer after the forward
    assert relerr(logits.detach(), ref_grad) < 1e-5
    loss.backward()
    assert relerr(loss, ref_loss) < 1e-5
    assert relerr(leaf.grad, ref_grad) < 1e-5
    assert logits.data_ptr() == buf_ptr


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_logits_unchanged_without_inplace(backend, requires_grad, make_case, small_blocks):
    """The kernel writes -inf sentinels into the row and must restore them bit-exactly."""
    case = make_case(n=6, v=37, k=5, dtype=torch.bfloat16, device=DEVICE)
    z = case["logits"].clone().requires_grad_(requires_grad)
    before = z.detach().clone()
    loss = sparse_kl_loss(
        z, case["ids"], case["lp"], case["tail"], case["labels"], ce_weight=1.0, backend=backend
    )
    if requires_grad:
        loss.backward()
    assert torch.equal(z.detach(), before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_grad_forward_matches(backend, make_case, oracle, relerr):
    case = make_case(n=6, v=30, k=4, device=DEVICE)
    ref_loss, _ = oracle(case, ce_weight=1.0)
    with torch.no_grad():
        loss = sparse_kl_loss(
            case["logits"],
            case["ids"],
            case["lp"],
            case["tail"],
            case["labels"],
            ce_weight=1.0,
            backend=backend,
        )
    assert relerr(loss, ref_loss) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_int32_ids_fp16_logprobs_and_computed_tail(backend, make_case, oracle, relerr):
    """The trainer's cache gives int32/int64 ids and fp16/fp32 log-probs; tail may be omitted."""
    case = make_case(n=8, v=40, k=6, ids_dtype=torch.int32, lp_dtype=torch.float16, device=DEVICE)
    ref_loss, ref_grad = oracle(case, tail_given=False, ce_weight=1.0)
    z = case["logits"].clone().requires_grad_()
    loss = sparse_kl_loss(
        z, case["ids"], case["lp"], None, case["labels"], ce_weight=1.0, backend=backend
    )
    loss.backward()
    assert relerr(loss, ref_loss) < 1e-5
    assert relerr(z.grad, ref_grad) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_labels_all_rows_count(backend, make_case, oracle, relerr):
    case = make_case(n=5, v=30, k=4, device=DEVICE)
    ref_loss, ref_grad = oracle(case, labels=False)
    z = case["logits"].clone().requires_grad_()
    loss = sparse_kl_loss(z, case["ids"], case["lp"], case["tail"], backend=backend)
    loss.backward()
    assert relerr(loss, ref_loss) < 1e-5
    assert relerr(z.grad, ref_grad) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_rows_ignored_gives_zero(backend, make_case):
    case = make_case(n=4, v=20, k=3, ignore_rows=(0, 1, 2, 3), device=DEVICE)
    case["lp"][:] = float("nan")  # junk in ignored rows must not leak
    z = case["logits"].clone().requires_grad_()
    loss = sparse_kl_loss(
        z, case["ids"], case["lp"], case["tail"], case["labels"], ce_weight=1.0, backend=backend
    )
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert bool((z.grad == 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_junk_in_ignored_rows_does_not_leak(backend, make_case, oracle, relerr):
    case = make_case(n=6, v=30, k=4, ignore_rows=(1, 4), device=DEVICE)
    ref_loss, ref_grad = oracle(case, ce_weight=1.0)
    case["lp"][1] = float("nan")
    case["ids"][4] = 10_000  # out of range, but the row is ignored
    case["tail"][1] = float("inf")
    z = case["logits"].clone().requires_grad_()
    loss = sparse_kl_loss(
        z, case["ids"], case["lp"], case["tail"], case["labels"], ce_weight=1.0, backend=backend
    )
    loss.backward()
    assert relerr(loss, ref_loss) < 1e-5
    assert relerr(z.grad, ref_grad) < 1e-5


def test_confident_student_tail_has_no_cancellation(make_case, oracle):
    """q_tail ~ 3e-19: 1 - sum(q_cached) in fp32 would be 0 (loss inf); the bucket stays exact."""
    case = make_case(n=4, v=64, k=4, confident=45.0, scale=0.5, device=DEVICE)
    z = case["logits"].double()
    q = torch.softmax(z, -1)
    q_tail = 1 - q.gather(1, case["ids"].long()).sum(-1)
    assert bool((q_tail.abs() < 1e-12).all())  # the scenario really is that confident
    ref_loss, ref_grad = oracle(case)
    for backend in BACKENDS:
        loss, grad = _run(case, backend)
        assert abs(float(loss) - float(ref_loss)) / abs(float(ref_loss)) < 1e-5, backend
        assert float((grad.double().cpu() - ref_grad).norm() / ref_grad.norm()) < 1e-5, backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_twice_is_refused(backend, make_case):
    case = make_case(n=3, v=20, k=3, device=DEVICE)
    z = case["logits"].clone().requires_grad_()
    loss = sparse_kl_loss(z, case["ids"], case["lp"], case["tail"], backend=backend)
    (2.0 * loss).backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        (2.0 * loss).backward()


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_grad_over_saved_logits_raises(backend, make_case):
    """If another op saved the logits (here tanh soft-capping), in-place must not go silent."""
    case = make_case(n=4, v=20, k=3, device=DEVICE)
    x = case["logits"].clone().requires_grad_()
    inner = torch.tanh(x / 30.0)  # TanhBackward saves its output: the logits we overwrite
    loss = sparse_kl_loss(
        inner, case["ids"], case["lp"], case["tail"], backend=backend, inplace_grad=True
    )
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    inner = torch.tanh(x / 30.0)  # without inplace_grad the same graph is fine
    sparse_kl_loss(inner, case["ids"], case["lp"], case["tail"], backend=backend).backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_return_components_match_separate_terms(backend, reduction, make_case, oracle, relerr):
    case = make_case(n=7, v=30, k=4, ignore_rows=(3,), device=DEVICE)
    T = 2.0
    kl_ref, _ = oracle(case, temperature=T, reduction=reduction)  # kl_weight=1: T^2 * KL
    ce_ref, _ = oracle(case, kl_weight=0.0, ce_weight=1.0, reduction=reduction)
    loss_ref, grad_ref = oracle(
        case, kl_weight=0.3, ce_weight=1.0, temperature=T, reduction=reduction
    )
    z = case["logits"].clone().requires_grad_()
    loss, kl, ce = sparse_kl_loss(
        z,
        case["ids"],
        case["lp"],
        case["tail"],
        case["labels"],
        kl_weight=0.3,
        ce_weight=1.0,
        temperature=T,
        reduction=reduction,
        backend=backend,
        return_components=True,
    )
    assert not kl.requires_grad and not ce.requires_grad
    assert relerr(kl, kl_ref / T**2) < 1e-5
    assert relerr(ce, ce_ref) < 1e-5
    assert relerr(loss, loss_ref) < 1e-5
    loss.sum().backward()
    assert relerr(z.grad, grad_ref) < 1e-5
    _, _, no_ce = sparse_kl_loss(
        z.detach(),
        case["ids"],
        case["lp"],
        case["tail"],
        case["labels"],
        backend=backend,
        return_components=True,
    )
    assert no_ce is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_rows(backend):
    z = torch.randn(0, 10, device=DEVICE, requires_grad=True)
    ids = torch.zeros(0, 3, dtype=torch.long, device=DEVICE)
    labels = torch.zeros(0, dtype=torch.long, device=DEVICE)
    loss = sparse_kl_loss(
        z, ids, torch.zeros(0, 3, device=DEVICE), None, labels, ce_weight=1.0, backend=backend
    )
    loss.backward()
    assert float(loss.detach()) == 0.0 and z.grad.shape == (0, 10)
