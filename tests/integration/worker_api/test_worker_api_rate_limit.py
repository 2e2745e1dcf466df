"""The per-job rate limit of status lines and events, against a real orchestrator: over it the
answer is 429 ``rate_limited`` with ``Retry-After``, nothing is recorded, the job goes on, and
the worker's own client waits it out (or drops a line, saying so) instead of ending the job."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from ironclaw_contract.worker_api import Refusal
from orchestrator.domain.jobs import JobState, UpdateKind
from orchestrator.service import Orchestrator
from tests.integration.worker_api.conftest import Job, JobFactory, WorkerHttp
from worker.client import RetryPolicy, WorkerApiClient

pytestmark = pytest.mark.docker

RATE = 2.0
BURST = 5


@pytest.fixture
async def limited(
    start_orch: Any, make_settings: Any, test_agent_image: str, jobs: JobFactory
) -> tuple[Orchestrator, Job]:
    orch = await start_orch(
        make_settings(
            WORKER_IMAGE=test_agent_image, JOB_EVENT_RATE=str(RATE), JOB_EVENT_BURST=str(BURST)
        )
    )
    # Ready: the test agent's own first status line is in, nothing else will come from it.
    return orch, await jobs.create(orch, ready=True)


async def _recorded(updates_of: Any, orch: Orchestrator, job: Job, after: int) -> list[Any]:
    """The status lines and events recorded after sequence ``after`` (read over watch)."""
    updates = await updates_of(orch, job.job_id, after)
    return [u.payload for u in updates if u.kind in (UpdateKind.EVENT, UpdateKind.STATUS)]


async def test_over_the_rate_is_429_rate_limited_with_retry_after_and_nothing_is_recorded(
    limited: tuple[Orchestrator, Job],
    api_for: Callable[[Orchestrator], WorkerHttp],
    http_session: aiohttp.ClientSession,
    updates_of: Any,
) -> None:
    orch, job = limited
    api = api_for(orch)
    before = orch.manager.get_job(job.job_id).last_sequence
    started = asyncio.get_running_loop().time()
    statuses = []
    for i in range(3 * BURST):
        if i % 2:
            reply = await api.call(job, "POST", "status", {"message": f"line {i}", "iteration": i})
        else:
            reply = await api.call(
                job, "POST", "event", {"event_type": "message", "data": {"n": i}}
            )
        statuses.append(reply.status)
    elapsed = asyncio.get_running_loop().time() - started
    accepted = statuses.count(200)
    assert set(statuses) == {200, 429}, statuses
    # The agent's own first status line took one token.
    assert BURST - 1 <= accepted <= BURST + RATE * elapsed + 1, (statuses, elapsed)
    recorded = await _recorded(updates_of, orch, job, before)
    assert len(recorded) == accepted  # the refused ones left no trace

    url = f"{api.base_url}/worker/{job.job_id}/event"
    async with http_session.post(
        url,
        json={"event_type": "message", "data": {"n": "again"}},
        headers={"Authorization": f"Bearer {job.token}"},
    ) as response:
        body = await response.json()
        assert response.status == 429
        assert 1 <= int(response.headers["Retry-After"]) <= 2
    assert body["error"] == "rate_limited"
    assert body["refusal"] == Refusal.RATE_LIMITED.value
    assert "JOB_EVENT_RATE" in body["message"]
    assert job.token not in body["message"]
    assert orch.manager.get_job(job.job_id).state is JobState.RUNNING
    # The LLM routes and the others are not limited by it.
    assert (await api.call(job, "GET", "job")).status == 200


async def test_the_worker_client_waits_the_limit_out_and_never_ends_the_job(
    limited: tuple[Orchestrator, Job], caplog: pytest.LogCaptureFixture, updates_of: Any
) -> None:
    orch, job = limited
    before = orch.manager.get_job(job.job_id).last_sequence
    url = f"http://{orch.http_host}:{orch.http_port}"
    patient = WorkerApiClient(
        url,
        job.job_id,
        job.token,
        retry=RetryPolicy(max_attempts=10, base_delay_s=0.05, max_delay_s=1.5, max_total_s=30),
    )
    count = 3 * BURST

    def send_all() -> None:
        for n in range(count):
            patient.post_event("message", {"n": n})

    try:
        await asyncio.to_thread(send_all)  # raises nothing
    finally:
        patient.close()
    numbers = [p["data"]["n"] for p in await _recorded(updates_of, orch, job, before)]
    assert numbers == list(range(count))  # every one, once, in order
    assert orch.manager.get_job(job.job_id).state is JobState.RUNNING

    # A client that may not wait drops what is refused, with a log line, and goes on.
    hasty = WorkerApiClient(url, job.job_id, job.token, retry=RetryPolicy(max_attempts=1))
    try:
        with caplog.at_level(logging.WARNING, logger="worker.client"):
            for n in range(2 * BURST):
                await asyncio.to_thread(hasty.post_status, f"line {n}", n)
        assert (await asyncio.to_thread(hasty.get_job))["job_id"] == job.job_id
    finally:
        hasty.close()
    dropped = [r for r in caplog.records if "status line dropped" in r.getMessage()]
    assert dropped
    assert all(job.token not in r.getMessage() for r in caplog.records)
    assert orch.manager.get_job(job.job_id).state is JobState.RUNNING
