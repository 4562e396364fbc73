"""Named exceptions for every user-facing failure of ddk.

Each message says what was wrong and what to do; the CLI prints it as one line and exits
non-zero. Anything that is not a DDKError is a bug in ddk, not a user error.
"""

from __future__ import annotations


class DDKError(Exception):
    """Base class: a problem the user can fix (bad input, bad option, wrong environment)."""


class CorpusError(DDKError):
    """A domain's sources are missing, empty, unreadable or not UTF-8, or a name is invalid."""


class ConfigError(DDKError):
    """A configuration file or option is malformed or contradicts another option."""


class TeacherError(DDKError):
    """The teacher model cannot be loaded or cannot serve the requested k / seq_len."""


class BackendUnavailableError(DDKError):
    """A requested backend (e.g. vLLM) is not installed or cannot start here."""


class StoreError(DDKError):
    """The output store cannot be created, opened or written."""


class StoreMismatchError(StoreError):
    """An existing store was written with different parameters than the ones requested."""


class IncompleteCacheError(StoreError):
    """A cache is missing shards, domains or teacher validation loss that the caller needs."""
