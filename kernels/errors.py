"""The root of ddk's user-facing errors, and the named errors of ddk.kernels.

ddk.kernels is the lowest layer (ddk.cli -> ddk.cache -> ddk.kernels, nothing upward), so
the one error root lives here, where every layer can import it; ddk.cache.errors re-exports
it and adds the errors of the cache (zarr-python's model: one error root importable by the
lowest layer). This module imports only the standard library, so importing it (and hence
ddk.cache.errors, which the CLI does at startup) never loads torch.

Each message says what was wrong and what to do; the CLI prints a DDKError as one line and
exits non-zero. Anything that is not a DDKError is a bug in ddk, not a user error.
"""

from __future__ import annotations


class DDKError(Exception):
    """Base class: a problem the user can fix (bad input, bad option, wrong environment)."""


class BackendUnavailableError(DDKError):
    """A requested backend (e.g. vLLM, Triton) is not installed or cannot start here."""


class SparseKLInputError(DDKError, ValueError):
    """An input to sparse_kl_loss / fused_linear_sparse_kl_loss has a wrong shape, dtype or value.

    Also a ValueError, so generic callers that catch ValueError for bad arguments keep working.
    """
