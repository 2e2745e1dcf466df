"""The LLM ledger: calls are reserved before they go upstream, so however many run at once a
job's calls and tokens never go past its budgets; ``max_tokens`` is capped to what is left; a
reservation is settled to the real usage or released when nothing was sent."""

from __future__ import annotations

import pytest

from orchestrator.domain.jobs import JobLimits
from orchestrator.errors import BudgetExceeded, InvalidArgument, JobNotFound
from orchestrator.jobs.ledger import MIN_USEFUL_OUTPUT_TOKENS, OVERHEAD_TOKENS, LlmLedger
from orchestrator.jobs.record import JobRecord
from tests.helpers import job_record


def make_ledger(**limits: int) -> tuple[LlmLedger, JobRecord, list[JobRecord]]:
    defaults = {
        "max_iterations": 50,
        "timeout_seconds": 3600,
        "memory_mb": 512,
        "llm_token_budget": 0,
        "llm_call_budget": 0,
        "llm_max_tokens_per_call": 8192,
        "claude_max_turns": 50,
    }
    job = job_record(limits=JobLimits(**{**defaults, **limits}, claude_model="sonnet"))
    announced: list[JobRecord] = []

    def lookup(job_id: str) -> JobRecord:
        if job_id != job.job_id:
            raise JobNotFound(job_id)
        return job

    return LlmLedger(lookup, announced.append), job, announced


def test_a_reservation_holds_the_worst_case_until_it_is_settled() -> None:
    ledger, job, announced = make_ledger(llm_token_budget=100_000)
    held = ledger.reserve(job.job_id, request_bytes=1000, max_tokens=2000)
    assert held.max_tokens == 2000
    assert held.tokens == 1000 + OVERHEAD_TOKENS + 2000
    assert (job.reserved_calls, job.reserved_tokens) == (1, held.tokens)
    ledger.settle(held, 300, 150)
    assert (job.reserved_calls, job.reserved_tokens) == (0, 0)
    assert (job.usage.calls, job.usage.input_tokens, job.usage.output_tokens) == (1, 300, 150)
    assert announced == [job]
    ledger.settle(held, 300, 150)  # settling twice changes nothing
    assert job.usage.calls == 1


def test_a_released_reservation_spends_nothing() -> None:
    ledger, job, announced = make_ledger(llm_call_budget=1)
    held = ledger.reserve(job.job_id, request_bytes=10, max_tokens=None)
    ledger.release(held)
    assert (job.usage.calls, job.reserved_calls, job.reserved_tokens) == (0, 0, 0)
    assert announced == []
    ledger.reserve(job.job_id, request_bytes=10, max_tokens=None)  # the call is still there


def test_concurrent_calls_never_hold_more_than_the_budgets() -> None:
    ledger, job, _ = make_ledger(llm_call_budget=30, llm_token_budget=100_000)
    held = []
    refusals = 0
    for _ in range(100):
        try:
            held.append(ledger.reserve(job.job_id, request_bytes=2000, max_tokens=4096))
        except BudgetExceeded:
            refusals += 1
    assert len(held) <= 30
    assert refusals == 100 - len(held)
    assert job.reserved_tokens <= 100_000
    # Whatever each reported (at most what it was allowed), the settled total stays in budget.
    for reservation in held:
        ledger.settle(reservation, 2000 + OVERHEAD_TOKENS, reservation.max_tokens)
    assert job.usage.total_tokens <= 100_000
    assert job.usage.calls <= 30


def test_max_tokens_is_capped_to_the_per_call_limit_and_to_what_is_left() -> None:
    ledger, job, _ = make_ledger(llm_token_budget=15_000, llm_max_tokens_per_call=4000)
    assert ledger.reserve(job.job_id, request_bytes=100, max_tokens=64_000).max_tokens == 4000
    assert ledger.reserve(job.job_id, request_bytes=100, max_tokens=None).max_tokens == 4000
    # Two full calls are held; what is left after this one's input is less than a full call.
    left = 15_000 - 2 * (100 + OVERHEAD_TOKENS + 4000) - (100 + OVERHEAD_TOKENS)
    assert 0 < left < 4000
    third = ledger.reserve(job.job_id, request_bytes=100, max_tokens=4000)
    assert third.max_tokens == left


def test_a_call_that_could_produce_next_to_nothing_is_refused_with_the_numbers() -> None:
    ledger, job, _ = make_ledger(llm_token_budget=OVERHEAD_TOKENS + 500)
    with pytest.raises(BudgetExceeded, match="token budget exhausted: 0 of 1524 tokens used"):
        ledger.reserve(
            job.job_id, request_bytes=500 - MIN_USEFUL_OUTPUT_TOKENS + 1, max_tokens=None
        )
    assert job.budget_refused is not None
    assert (job.reserved_calls, job.reserved_tokens) == (0, 0)
    # A call asking for little may still fit.
    small = ledger.reserve(job.job_id, request_bytes=400, max_tokens=50)
    assert small.max_tokens == 50


def test_the_call_budget_counts_calls_in_flight() -> None:
    ledger, job, _ = make_ledger(llm_call_budget=2)
    ledger.reserve(job.job_id, request_bytes=1, max_tokens=1)
    ledger.reserve(job.job_id, request_bytes=1, max_tokens=1)
    with pytest.raises(BudgetExceeded, match="0 of 2 calls used and 2 calls held"):
        ledger.reserve(job.job_id, request_bytes=1, max_tokens=1)


def test_a_call_without_output_holds_a_call_and_no_tokens() -> None:
    ledger, job, _ = make_ledger(llm_call_budget=1, llm_token_budget=10)
    counting = ledger.reserve(job.job_id, request_bytes=10_000, max_tokens=None, generates=False)
    assert (counting.tokens, counting.max_tokens) == (0, 0)
    ledger.settle(counting, 0, 0)
    assert job.usage.calls == 1
    with pytest.raises(BudgetExceeded, match="call budget exhausted"):
        ledger.reserve(job.job_id, request_bytes=1, max_tokens=None, generates=False)


def test_a_non_positive_max_tokens_is_invalid() -> None:
    ledger, job, _ = make_ledger()
    with pytest.raises(InvalidArgument):
        ledger.reserve(job.job_id, request_bytes=1, max_tokens=0)
    assert job.reserved_calls == 0
