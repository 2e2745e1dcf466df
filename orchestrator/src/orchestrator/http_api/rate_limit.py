"""A token bucket per job, for the calls a job may make as often as it likes otherwise.

Each job may send ``burst`` calls at once and ``rate`` a second after that. A bucket that has
refilled is the same as no bucket, so full ones are forgotten now and then: the table holds only
the jobs that sent something lately, however many jobs have come and gone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from orchestrator.errors import RateLimited

_SWEEP_EVERY = 1024  # checks between two sweeps of the refilled buckets


class JobRateLimiter:
    """``check(job_id)`` takes one token from the job's bucket or raises RateLimited."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        what: str = "calls",
        setting: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self._rate = rate
        self._burst = float(burst)
        self._what = what
        self._setting = setting
        self._clock = clock
        # job id → [tokens, time of that count]
        self._buckets: dict[str, list[float]] = {}
        self._checks = 0

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def check(self, job_id: str) -> None:
        """Counts one call of the job; raises RateLimited (with the wait) when over the rate."""
        if self._rate <= 0:
            return
        now = self._clock()
        self._checks += 1
        if self._checks >= _SWEEP_EVERY:
            self._sweep(now)
        bucket = self._buckets.get(job_id)
        if bucket is None:
            self._buckets[job_id] = [self._burst - 1.0, now]
            return
        tokens = min(self._burst, bucket[0] + (now - bucket[1]) * self._rate)
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            bucket[1] = now
            return
        bucket[0] = tokens
        bucket[1] = now
        wait = (1.0 - tokens) / self._rate
        raise RateLimited(
            f"too many {self._what}: at most {self._burst:g} at once and {self._rate:g} a "
            f"second per job ({self._setting}); send again in {wait:.2f} s",
            retry_after_s=wait,
        )

    def forget(self, job_id: str) -> None:
        """Drops the job's bucket (its job ended)."""
        self._buckets.pop(job_id, None)

    def __len__(self) -> int:
        return len(self._buckets)

    def _sweep(self, now: float) -> None:
        self._checks = 0
        refill_s = self._burst / self._rate
        idle = [job for job, (_, stamp) in self._buckets.items() if now - stamp >= refill_s]
        for job in idle:
            del self._buckets[job]


def retry_after_header(seconds: float) -> str:
    """The ``Retry-After`` value (whole seconds, at least 1) for a wait of ``seconds``."""
    return str(max(1, math.ceil(seconds)))
