"""ddk.cache: everything between text and a trained student, one subpackage per stage.

    corpus/ -> teacher/ -> store/ -> train/      (cache_job/ runs the first three as one job;
                                                  demo.py runs them all on the embedded default)

docs/architecture.md draws the data path on this tree. The package itself re-exports the
named errors of `ddk.cache.errors` (root: `DDKError`), so `except ddk.cache.DDKError` works.
"""

from ddk.cache import errors as _errors
from ddk.cache.errors import *  # the error classes listed in errors.__all__

__all__ = _errors.__all__
