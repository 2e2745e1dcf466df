"""Stopping the worker promptly on SIGTERM, without leaving a command it started behind.

The first SIGTERM raises :class:`Terminated` wherever the main thread is blocked (an HTTP read, a
running command), so ``finally`` blocks clean up on the way out. Code that starts a process wraps
the start in :func:`termination_deferred`, so the exception cannot land between the fork and the
``try`` that guarantees the process is killed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class Terminated(BaseException):
    """Raised by the SIGTERM handler. A BaseException, so no ``except Exception`` in the loop or
    the tools can swallow it."""


# Only the main thread runs signal handlers, so only its deferrals matter; both values are
# touched from that thread alone.
_deferring = 0
_pending = False


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _pending
    # A second SIGTERM kills outright: the operator insists.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if _deferring:
        _pending = True
        return
    raise Terminated


@contextlib.contextmanager
def termination_deferred() -> Iterator[None]:
    """Holds back :class:`Terminated` inside the block; a SIGTERM received meanwhile raises it
    when the block ends. A no-op outside the main thread, where signals are never handled."""
    global _deferring, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if _deferring == 0 and _pending:
        _pending = False
        raise Terminated


@contextlib.contextmanager
def sigterm_raises_terminated() -> Iterator[None]:
    """Installs the SIGTERM handler for the duration of the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
