"""Log lines for events a job can make happen at will (refused connections, timeouts, accept
errors): at most one line per interval, carrying how many times the event happened.

A flood then costs a counter increment per event instead of a log line (or a traceback) each:
the log stays readable and small while the metrics keep the exact count.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

DEFAULT_INTERVAL_S = 10.0


class ThrottledLog:
    """One ``event`` line at once, then at most one per ``interval_s`` with the count since the
    previous line and the fields of the latest occurrence.

    What happened after the last line is flushed by a timer on the running loop, so a burst
    that stops is still reported; outside a loop it waits for the next occurrence.
    """

    def __init__(
        self,
        logger: Any,
        event: str,
        interval_s: float = DEFAULT_INTERVAL_S,
        level: str = "warning",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._emit_line = getattr(logger, level)
        self._event = event
        self._interval = interval_s
        self._clock = clock
        self._count = 0
        self._total = 0
        self._fields: dict[str, Any] = {}
        self._next_line_at = float("-inf")
        self._flush: asyncio.TimerHandle | None = None

    @property
    def total(self) -> int:
        """Occurrences since this log was made, reported or not."""
        return self._total

    def record(self, **fields: Any) -> None:
        """Counts one occurrence; writes a line now if none was written this interval."""
        self._count += 1
        self._total += 1
        self._fields = fields
        now = self._clock()
        if now >= self._next_line_at:
            self._write(now)
        elif self._flush is None:
            with contextlib.suppress(RuntimeError):  # no running loop: the next record reports
                loop = asyncio.get_running_loop()
                self._flush = loop.call_later(self._next_line_at - now, self._flush_now)

    def close(self) -> None:
        """Writes what is still unreported and stops the flush timer."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._count:
            self._write(self._clock())

    def _flush_now(self) -> None:
        self._flush = None
        if self._count:
            self._write(self._clock())

    def _write(self, now: float) -> None:
        self._emit_line(
            self._event, **self._fields, count=self._count, per_interval_s=self._interval
        )
        self._count = 0
        self._next_line_at = now + self._interval
