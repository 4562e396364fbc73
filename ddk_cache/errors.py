"""Named exceptions for every user-facing failure of ddk.cache.

The root DDKError (and BackendUnavailableError, which ddk.kernels raises too) is defined in
ddk.kernels.errors, the lowest layer, and re-exported here: one error root that every layer
can import without reaching upward (zarr-python's model), so `except DDKError` catches the
errors of ddk.cache and ddk.kernels alike. ddk.kernels.errors imports only the standard
library, so importing this module stays torch-free.

Each message says what was wrong and what to do; the CLI prints it as one line and exits
non-zero. Anything that is not a DDKError is a bug in ddk, not a user error.
"""

from __future__ import annotations

from ddk.kernels.errors import BackendUnavailableError, DDKError

__all__ = [
    "BackendUnavailableError",
    "ConfigError",
    "CorpusError",
    "DDKError",
    "DamagedCacheError",
    "IncompleteCacheError",
    "StoreError",
    "StoreMismatchError",
    "TeacherError",
]


class CorpusError(DDKError):
    """A domain's sources are missing, empty, unreadable or not UTF-8, or a name is invalid."""


class ConfigError(DDKError):
    """A configuration file or option is malformed or contradicts another option."""


class TeacherError(DDKError):
    """The teacher model cannot be loaded or cannot serve the requested k / seq_len."""


class StoreError(DDKError):
    """The output store cannot be created, opened or written."""


class StoreMismatchError(StoreError):
    """An existing store was written with different parameters than the ones requested."""


class IncompleteCacheError(StoreError):
    """A cache is missing shards, domains or teacher validation loss that the caller needs."""


class DamagedCacheError(StoreError):
    """A cache object is missing, truncated or altered (see ddk.cache.store.integrity)."""
