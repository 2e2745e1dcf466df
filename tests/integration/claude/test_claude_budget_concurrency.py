"""The Anthropic route under 100 concurrent calls (streamed and not) from one job: every call is
reserved on the job's ledger before it goes upstream, so what the upstream served (a model that
always writes to ``max_tokens``, the worst a call can cost) never exceeds the job's token budget,
however the calls interleave. The attack this closes ended a 10,000-token job at 243,045."""

from __future__ import annotations

import asyncio
from typing import Any

from orchestrator.domain.jobs import JobLimitOverrides
from tests.fakes.fake_anthropic import answer_to_the_cap
from tests.integration.claude.conftest import ClaudeRoute, RecordingAnthropic

BUDGET = 60_000
CALLS = 100


async def _call(route: ClaudeRoute, job: Any, index: int) -> int:
    body = {
        "model": "claude-sonnet-5-5",
        "max_tokens": 4096,
        "stream": index % 2 == 0,
        "messages": [{"role": "user", "content": f"call {index}: write as much as you can"}],
    }
    async with route.session.post(
        route.url(job.job_id), headers=route.headers(job.key), json=body
    ) as response:
        await response.read()
        return response.status


async def test_concurrent_calls_never_get_the_upstream_past_the_budget(
    route_for: Any, upstream: RecordingAnthropic
) -> None:
    upstream.responder = answer_to_the_cap
    # One source with a hundred calls in flight: above the default cap per source.
    route: ClaudeRoute = await route_for(
        upstream.url, ORCHESTRATOR_HTTP_MAX_CONNECTIONS_PER_SOURCE="256"
    )
    job = await route.create(limits=JobLimitOverrides(llm_token_budget=BUDGET))
    statuses = await asyncio.gather(*(_call(route, job, i) for i in range(CALLS)))

    served = [r for r in upstream.requests if r.path == "/v1/messages"]
    assert statuses.count(200) == len(served)  # a refused call never went upstream
    assert 0 < statuses.count(200) < CALLS
    assert set(statuses) == {200, 429}
    assert upstream.served_tokens <= BUDGET
    usage = route.orch.manager.get_job(job.job_id).usage
    assert usage.total_tokens == upstream.served_tokens  # every served token was metered
    assert usage.calls == len(served)
    # Calls were capped: none asked for more than the per-call limit, the last ones for less.
    asked = [r.body["max_tokens"] for r in served]
    assert max(asked) <= 4096
