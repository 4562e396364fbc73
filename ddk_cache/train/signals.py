"""Graceful stop on SIGTERM / SIGINT: the trainer finishes its step, checkpoints, returns.

A signal only sets a flag (handlers must not touch the model mid-step); the step loop reads it
once per step and all-reduces it, so every DDP rank stops after the same step. A second SIGINT
raises KeyboardInterrupt for a user who does not want to wait.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["StopFlag"]


class StopFlag:
    """SIGTERM/SIGINT set `signum`, which the loop checks after each step (a 2nd SIGINT aborts).

    A context manager: installs the handlers on entry (main thread only; elsewhere signals
    cannot be handled and the flag stays unset), restores the previous ones on exit.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._prev: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopFlag:  # noqa: PYI034
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._prev[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._prev.items():
            signal.signal(s, h)
