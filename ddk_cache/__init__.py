"""ddk.cache: text -> packed sequences -> teacher top-k -> Zarr store -> reader.

The public API re-exported here is what the CLI uses; users can call it directly.
"""

from ddk.cache.errors import (
    BackendUnavailableError,
    ConfigError,
    CorpusError,
    DDKError,
    IncompleteCacheError,
    StoreError,
    StoreMismatchError,
    TeacherError,
)

__all__ = [
    "BackendUnavailableError",
    "ConfigError",
    "CorpusError",
    "DDKError",
    "IncompleteCacheError",
    "StoreError",
    "StoreMismatchError",
    "TeacherError",
]
