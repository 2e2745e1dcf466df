"""The worker API's LLM routes under 100 concurrent calls from one job: each is reserved on the
job's ledger before the provider sees it, so what the provider served (a model that always
writes to ``max_tokens``) never exceeds the job's token budget, and a refused call never
reaches the provider."""

from __future__ import annotations

import asyncio
from typing import Any

from orchestrator.domain.jobs import JobLimitOverrides
from tests.fakes.fake_openai import answer_to_the_cap

BUDGET = 50_000
CALLS = 100


async def test_concurrent_calls_never_get_the_provider_past_the_budget(
    api: Any, shared_orch: Any, jobs: Any, openai_fake: Any
) -> None:
    openai_fake.responder = answer_to_the_cap
    sent_before = len(openai_fake.requests)
    served_before = openai_fake.served_tokens
    try:
        job = await jobs.create(shared_orch, limits=JobLimitOverrides(llm_token_budget=BUDGET))

        async def call(index: int) -> int:
            route = "llm/complete" if index % 2 else "llm/complete_with_tools"
            body: dict[str, Any] = {
                "messages": [{"role": "user", "content": f"call {index}: say everything"}],
                "max_tokens": 2048,
            }
            if route == "llm/complete_with_tools":
                body["tools"] = [{"name": "noop", "description": "does nothing"}]
            answer = await api.call(job, "POST", route, body)
            return int(answer.status)

        statuses = await asyncio.gather(*(call(i) for i in range(CALLS)))
    finally:
        openai_fake.responder = None
    sent = len(openai_fake.requests) - sent_before
    served = openai_fake.served_tokens - served_before
    assert statuses.count(200) == sent
    assert 0 < sent < CALLS
    assert set(statuses) == {200, 429}
    assert served <= BUDGET
    usage = shared_orch.manager.get_job(job.job_id).usage
    assert usage.total_tokens == served
    assert usage.calls == sent
