"""Graceful stop on SIGTERM/SIGINT: the signal only raises a flag; the loop finishes its step, saves, exits.

SIGTERM is what SLURM, Kubernetes and ``kill`` send before killing a job; SIGINT is Ctrl-C. After the
first signal the previous handlers are back in place, so a second Ctrl-C interrupts at once
(``KeyboardInterrupt``) and a second SIGTERM terminates as usual.
"""

from __future__ import annotations

import signal
import threading
from typing import Dict, Optional, Sequence

__all__ = ["GracefulStop", "Stopped", "exit_code"]

_DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by signal ``signum``: 128 + signum (SIGTERM 143, SIGINT 130)."""
    return 128 + int(signum)


class Stopped(Exception):
    """Work stopped early on a signal, after saving what it had; ``signum`` and ``step`` say when."""

    def __init__(self, message: str, signum: int, step: Optional[int] = None):
        super().__init__(message)
        self.signum = int(signum)
        self.step = step

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


class GracefulStop:
    """``with GracefulStop() as stop: ... if stop.requested: save; break``.

    Handlers are installed only in the main thread (Python delivers signals there); elsewhere the
    object is inert and ``requested`` stays False. Previous handlers are restored on exit.
    """

    def __init__(self, signals: Sequence[int] = _DEFAULT_SIGNALS):
        self.signals = tuple(signals)
        self.signum: Optional[int] = None
        self._previous: Dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        self._restore()  # a second signal acts as it would without us

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
