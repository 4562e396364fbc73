"""ddk.kernels: sparse top-k KL (+CE) distillation loss on cached teacher top-k log-probs.

Public API:
    sparse_kl_loss(student_logits, topk_ids, topk_logprobs, tail_logprob, labels, ...)
    fused_linear_sparse_kl_loss(hidden, lm_head_weight, topk_ids, topk_logprobs, ...)
    SparseKLInputError: raised for invalid shapes, dtypes, options or values.

CUDA tensors run Triton kernels; CPU tensors run a chunked PyTorch path with the same
maths. See docs/kernels.md for the loss definition, gradient and numerics.
"""

from ddk.kernels.errors import SparseKLInputError
from ddk.kernels.fused_linear import fused_linear_sparse_kl_loss
from ddk.kernels.sparse_kl import sparse_kl_loss

__all__ = ["SparseKLInputError", "fused_linear_sparse_kl_loss", "sparse_kl_loss"]
