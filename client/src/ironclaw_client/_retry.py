"""When to try again: the one policy both clients follow."""

from __future__ import annotations

import random
import time

import grpc

from ironclaw_client.errors import looks_like_tls_failure


class Backoff:
    """Exponential backoff with jitter, bounded by a deadline for one outage: ``next_delay``
    returns None once retrying would pass it."""

    def __init__(self, budget: float, first: float = 0.1, most: float = 2.0) -> None:
        self._budget = budget
        self._first = first
        self._most = most
        self._delay = first
        self._deadline: float | None = None

    def reset(self) -> None:
        """The call got through: the next failure starts a new outage."""
        self._delay = self._first
        self._deadline = None

    def next_delay(self) -> float | None:
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now + self._budget
        left = self._deadline - now
        if left <= 0:
            return None
        delay = min(self._delay, left) * random.uniform(0.5, 1.0)  # noqa: S311 - jitter only
        self._delay = min(self._delay * 2, self._most)
        return delay


def is_transient(exc: grpc.RpcError) -> bool:
    """UNAVAILABLE that is not a TLS failure: the server may be restarting."""
    code = exc.code()
    if code is not grpc.StatusCode.UNAVAILABLE:
        return False
    return not looks_like_tls_failure(exc.details() or "")
