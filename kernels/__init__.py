"""ddk.kernels: sparse top-k KL (+CE) distillation loss on cached teacher top-k log-probs.

Public API:
    sparse_kl_loss(student_logits, topk_ids, topk_logprobs, tail_logprob, labels, ...)
    fused_linear_sparse_kl_loss(hidden, lm_head_weight, topk_ids, topk_logprobs, ...)
    SparseKLInputError: raised for invalid shapes, dtypes, options or values.

CUDA tensors run Triton kernels; CPU tensors run a chunked PyTorch path with the same
maths. See docs/kernels.md for the loss definition, gradient and numerics.

The names are loaded on first use (PEP 562): importing ddk.kernels.errors, which holds the
root of ddk's errors and is imported by the torch-free CLI startup, must not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ddk.kernels.errors import SparseKLInputError
    from ddk.kernels.fused_linear import fused_linear_sparse_kl_loss
    from ddk.kernels.sparse_kl import sparse_kl_loss

#: public name -> the module that defines it
_EXPORTS = {
    "SparseKLInputError": "ddk.kernels.errors",
    "fused_linear_sparse_kl_loss": "ddk.kernels.fused_linear",
    "sparse_kl_loss": "ddk.kernels.sparse_kl",
}

__all__ = ["SparseKLInputError", "fused_linear_sparse_kl_loss", "sparse_kl_loss"]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
