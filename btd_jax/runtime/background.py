"""Quiets the checkpoint library's background noise while a damaged checkpoint step is skipped.

When tensorstore fails to read a damaged step, its pending callbacks later find orbax's asyncio loop
closed and each reports ``RuntimeError: Event loop is closed`` through ``sys.unraisablehook``: one
traceback per array, thousands for a full-size model, burying the one warning that matters. The
filter drops exactly those reports and passes every other one on to the hook it wraps.
"""

from __future__ import annotations

import sys

__all__ = ["drop_closed_loop_reports"]


def _is_closed_loop(unraisable) -> bool:
    e = unraisable.exc_value
    return isinstance(e, RuntimeError) and str(e) == "Event loop is closed"


def drop_closed_loop_reports() -> None:
    """Wraps the current ``sys.unraisablehook`` (once) so closed-event-loop reports are dropped."""
    current = sys.unraisablehook
    if getattr(current, "_drops_closed_loop", False):
        return

    def hook(unraisable):
        if not _is_closed_loop(unraisable):
            current(unraisable)

    hook._drops_closed_loop = True
    sys.unraisablehook = hook
