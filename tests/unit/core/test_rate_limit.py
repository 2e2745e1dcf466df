"""The per-job token bucket of the report routes."""

from __future__ import annotations

import pytest

from orchestrator.errors import RateLimited
from orchestrator.http_api.rate_limit import (
    BYTES_PER_TOKEN,
    JobRateLimiter,
    call_cost,
    retry_after_header,
)

JOB_A = "a"
JOB_B = "b"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_the_rate_refills_it() -> None:
    clock = Clock()
    limiter = JobRateLimiter(2.0, 5, clock=clock)
    for _ in range(5):
        limiter.check(JOB_A)
    with pytest.raises(RateLimited) as info:
        limiter.check(JOB_A)
    assert info.value.retry_after_s == pytest.approx(0.5)
    assert "at most 5 at once and 2 a second" in info.value.message
    limiter.check(JOB_B)  # another job has its own bucket
    clock.now += 0.5
    limiter.check(JOB_A)  # one token back
    with pytest.raises(RateLimited):
        limiter.check(JOB_A)
    clock.now += 100
    for _ in range(5):  # refilled to the burst, never beyond
        limiter.check(JOB_A)
    with pytest.raises(RateLimited):
        limiter.check(JOB_A)


def test_a_refused_call_takes_nothing() -> None:
    clock = Clock()
    limiter = JobRateLimiter(1.0, 1, clock=clock)
    limiter.check(JOB_A)
    for _ in range(10):
        with pytest.raises(RateLimited):
            limiter.check(JOB_A)
    clock.now += 1.0
    limiter.check(JOB_A)


def test_large_bodies_cost_more_and_a_debt_delays_the_next_call() -> None:
    clock = Clock()
    limiter = JobRateLimiter(10.0, 20, clock=clock)
    assert call_cost(0) == 1
    assert call_cost(BYTES_PER_TOKEN - 1) == 1
    assert call_cost(10 * BYTES_PER_TOKEN) == 11
    limiter.check(JOB_A, call_cost(10 * BYTES_PER_TOKEN))
    with pytest.raises(RateLimited) as info:
        limiter.check(JOB_A, 11)
    assert info.value.retry_after_s == pytest.approx(0.2)
    # A cost above the burst counts as the burst: 9 tokens are left, 11 more are needed.
    with pytest.raises(RateLimited) as info:
        limiter.check(JOB_A, 1000)
    assert info.value.retry_after_s == pytest.approx(1.1)


def test_a_cost_is_capped_at_the_burst() -> None:
    clock = Clock()
    limiter = JobRateLimiter(10.0, 20, clock=clock)
    limiter.check(JOB_A, 10_000)  # a full bucket lets any call through once
    with pytest.raises(RateLimited):
        limiter.check(JOB_A)
    limiter.charge(JOB_A, 10)  # learnt after the call: the bucket goes below empty
    clock.now += 1.0
    with pytest.raises(RateLimited):
        limiter.check(JOB_A)
    clock.now += 0.1
    limiter.check(JOB_A)


def test_rate_zero_is_unlimited() -> None:
    limiter = JobRateLimiter(0.0, 1)
    assert not limiter.enabled
    for _ in range(10_000):
        limiter.check(JOB_A, 500)
    assert len(limiter) == 0


def test_refilled_buckets_are_forgotten() -> None:
    clock = Clock()
    limiter = JobRateLimiter(100.0, 10, clock=clock)
    for job in range(500):
        limiter.check(f"job-{job}")
    assert len(limiter) == 500
    clock.now += 1.0  # every bucket is full again
    for _ in range(1024):
        limiter.check(JOB_A)
        clock.now += 0.01
    assert len(limiter) <= 2
    limiter.forget(JOB_A)
    assert len(limiter) <= 1


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert retry_after_header(0.001) == "1"
    assert retry_after_header(1.0) == "1"
    assert retry_after_header(1.2) == "2"
