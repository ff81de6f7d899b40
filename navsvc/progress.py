"""Progress reporting and cancellation for long-running pure functions.

A long step takes ``progress: ProgressFn`` and ``cancel: CancelToken``; it reports
``progress(stage, fraction, message)`` with ``fraction`` in [0, 1] of the whole job, and
calls ``cancel.check()`` between iterations, which raises :class:`~navsvc.errors.Cancelled`.
The CLI turns reports into a progress bar, the server into a watch stream.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from navsvc.errors import Cancelled

ProgressFn = Callable[[str, float, str], None]


def no_progress(stage: str, fraction: float, message: str) -> None:
    """A progress callback that ignores every report."""


class CancelToken:
    """A thread-safe cancellation flag."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def cancel(self, reason: str = "cancelled by user") -> None:
        self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if cancellation was requested."""
        if self._event.is_set():
            raise Cancelled(self.reason or "cancelled")


def scaled(progress: ProgressFn, start: float, end: float) -> ProgressFn:
    """A callback that maps a sub-step's 0..1 onto ``start..end`` of the parent's range."""

    def report(stage: str, fraction: float, message: str) -> None:
        progress(stage, start + (end - start) * min(max(fraction, 0.0), 1.0), message)

    return report
