"""A token bucket per job, for the calls a job may make as often as it likes otherwise.

Each job may spend ``burst`` tokens at once and ``rate`` a second after that; a call costs one
token, plus one for each :data:`BYTES_PER_TOKEN` of its body, so large bodies (which cost the
orchestrator more to parse, bound and keep) are limited sooner than small ones. A bucket that
has refilled is the same as no bucket, so full ones are forgotten now and then: the table holds
only the jobs that sent something lately, however many jobs have come and gone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from orchestrator.errors import RateLimited

_SWEEP_EVERY = 1024  # checks between two sweeps of the refilled buckets
BYTES_PER_TOKEN = 8192


def call_cost(body_bytes: int) -> int:
    """The tokens a call with a body of ``body_bytes`` costs."""
    return 1 + body_bytes // BYTES_PER_TOKEN


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

    def check(self, job_id: str, cost: int = 1) -> None:
        """Takes ``cost`` tokens from the job's bucket (never more than the burst, so any call
        can pass once the bucket is full); raises RateLimited, with the wait, when it holds
        fewer. Nothing is taken from a refused call."""
        if self._rate <= 0:
            return
        need = min(float(cost), self._burst)
        now = self._clock()
        self._checks += 1
        if self._checks >= _SWEEP_EVERY:
            self._sweep(now)
        bucket = self._buckets.get(job_id)
        if bucket is None:
            self._buckets[job_id] = [self._burst - need, now]
            return
        tokens = min(self._burst, bucket[0] + (now - bucket[1]) * self._rate)
        bucket[1] = now
        if tokens >= need:
            bucket[0] = tokens - need
            return
        bucket[0] = tokens
        wait = (need - tokens) / self._rate
        raise RateLimited(
            f"too many {self._what}: at most {self._burst:g} at once and {self._rate:g} a "
            f"second per job, large ones counting for more ({self._setting}); send again in "
            f"{wait:.2f} s",
            retry_after_s=wait,
        )

    def charge(self, job_id: str, cost: int) -> None:
        """Takes ``cost`` more tokens from the job's bucket without refusing (the bucket may go
        below empty): for what was learnt only after the call was let in."""
        if self._rate <= 0 or cost <= 0:
            return
        bucket = self._buckets.get(job_id)
        if bucket is not None:
            bucket[0] -= cost

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
