"""Backend choice and the shared forward core used by both public losses.

"auto" runs the Triton kernel on CUDA tensors (when triton is installed) and the chunked
PyTorch path otherwise (CPU, float64, no triton). backend="triton" on CPU tensors is for
tests: it needs the Triton interpreter (TRITON_INTERPRET=1 set before triton is imported).
"""

from __future__ import annotations

import importlib.util

import torch
from ddk.kernels.errors import BackendUnavailableError, SparseKLInputError
from ddk.kernels.torch_impl import sparse_kl_forward_torch

BACKENDS = ("auto", "triton", "torch")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_backend(backend: str, logits: torch.Tensor) -> str:
    """Return "triton" or "torch" for these logits, or raise a named error."""
    if backend not in BACKENDS:
        raise SparseKLInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if logits.is_cuda and logits.dtype != torch.float64 and triton_available():
            return "triton"
        return "torch"
    if backend == "triton":
        if not triton_available():
            raise BackendUnavailableError(
                "backend='triton' needs the triton package: pip install 'ddk[gpu]' "
                "(or use backend='torch')"
            )
        if logits.dtype == torch.float64:
            raise SparseKLInputError(
                "backend='triton' does not take float64 logits; use backend='torch'"
            )
        from ddk.kernels.triton_impl import is_interpreted

        if logits.is_cuda == is_interpreted():
            raise BackendUnavailableError(
                "backend='triton' runs compiled kernels on CUDA tensors, or CPU tensors under "
                "the Triton interpreter (TRITON_INTERPRET=1 set before ddk.kernels.triton_impl "
                "is imported; tests only); got "
                f"{logits.device} tensors with the interpreter {'on' if is_interpreted() else 'off'}. "
                "Use backend='auto' or 'torch'"
            )
    return backend


def rows_ok_for_kernel(t: torch.Tensor) -> bool:
    """Unit column stride and rows that do not overlap in memory (the kernel writes rows)."""
    return t.stride(1) == 1 and (t.shape[0] <= 1 or t.stride(0) >= t.shape[1])


def forward_core(
    backend: str,
    logits: torch.Tensor,
    topk_ids: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    labels: torch.Tensor | None,
    active: torch.Tensor,
    row_scale: torch.Tensor,
    *,
    kl_weight: float,
    ce_weight: float,
    temperature: float,
    ignore_index: int,
    grad_out: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (kl, ce); writes the scaled gradient into grad_out (may alias logits) if given."""
    if backend == "triton":
        from ddk.kernels.triton_impl import sparse_kl_forward_triton

        # One ids and one labels dtype reach the kernel (int32 ids: V < 2**31 always): fewer
        # compile variants (bench/gpu/aot_compile.py) for a copy of N x k ids at most.
        ids = topk_ids.to(torch.int32)
        return sparse_kl_forward_triton(
            logits,
            ids if ids.stride(1) == 1 else ids.contiguous(),
            a,
            b,
            labels.to(torch.int64).contiguous() if labels is not None else None,
            row_scale,
            kl_weight=kl_weight,
            ce_weight=ce_weight,
            temperature=temperature,
            ignore_index=ignore_index,
            grad_out=grad_out,
        )
    return sparse_kl_forward_torch(
        logits,
        topk_ids,
        a,
        b,
        labels,
        active,
        row_scale,
        kl_weight=kl_weight,
        ce_weight=ce_weight,
        temperature=temperature,
        grad_out=grad_out,
    )


def scale_grad_(backend: str, grad: torch.Tensor, grad_output: torch.Tensor) -> None:
    """In place: grad *= grad_output (a scalar, or one value per row)."""
    if backend == "triton" and grad.dim() == 2 and rows_ok_for_kernel(grad):
        from ddk.kernels.triton_impl import scale_rows_triton

        scale_rows_triton(grad, grad_output.to(torch.float32))
    elif grad_output.numel() == 1:
        grad.mul_(float(grad_output))  # a Python scalar is applied in fp32 even to bf16 grads
    else:
        go = grad_output.reshape(-1, 1).to(
            torch.float32 if grad.dtype != torch.float64 else grad.dtype
        )
        step = max(1, (1 << 22) // max(grad.shape[1], 1))
        for s in range(0, grad.shape[0], step):
            grad[s : s + step].copy_(grad[s : s + step] * go[s : s + step])
