"""Named exception for bad inputs to the sparse KL losses.

It is a DDKError (so the CLI prints it as one line) and a ValueError (so generic callers
that catch ValueError for bad arguments keep working).
"""

from __future__ import annotations

from ddk.cache.errors import DDKError


class SparseKLInputError(DDKError, ValueError):
    """An input to sparse_kl_loss / fused_linear_sparse_kl_loss has a wrong shape, dtype or value."""
