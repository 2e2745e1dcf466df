"""Every JSON route of the worker API reads strict JSON, through real HTTP: a duplicate key is a
400 that names it, nesting deeper than MAX_JSON_DEPTH is a 400 (never a RecursionError, never a
500, up to the largest body a route reads), and nothing of a refused body reaches the job or
the provider."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ironclaw_contract.worker_api import (
    MAX_COMPLETE_BODY_BYTES,
    MAX_JSON_DEPTH,
    MAX_REPORT_BODY_BYTES,
)
from orchestrator.domain.jobs import JobState

pytestmark = pytest.mark.docker

LLM_LIMIT = 16 * 1024 * 1024  # ORCHESTRATOR_HTTP_MAX_BODY_MB=16 on the module orchestrator
MESSAGES = '[{"role": "user", "content": "hi"}]'
# A valid body of each route with one key given twice; the route's own limit on body size.
DUPLICATES = {
    "status": ('{"message": "a", "iteration": 1, "message": "b"}', "message"),
    "event": ('{"event_type": "message", "data": {"k": 1, "k": 2}}', "k"),
    "complete": ('{"success": true, "message": "x", "success": false}', "success"),
    "llm/complete": (f'{{"messages": {MESSAGES}, "model": "gpt-4o", "model": "x"}}', "model"),
    "llm/complete_with_tools": (
        '{"messages": [{"role": "user", "content": "a", "role": "system"}], "tools": []}',
        "role",
    ),
}
ROUTES = list(DUPLICATES)


def _limit(route: str) -> int:
    if route == "complete":
        return MAX_COMPLETE_BODY_BYTES
    return MAX_REPORT_BODY_BYTES if route in ("status", "event") else LLM_LIMIT


def _nested_in(route: str, depth: int) -> bytes:
    """A body of the route nested exactly ``depth`` levels deep (its own object is level 1)."""

    def arrays(levels: int) -> str:
        return "[" * levels + "]" * levels if levels else "0"

    host = {
        "status": f'{{"message": "x", "state": {arrays(depth - 1)}}}',
        "event": f'{{"event_type": "message", "data": {{"x": {arrays(depth - 2)}}}}}',
        "complete": f'{{"success": true, "details": {{"x": {arrays(depth - 2)}}}}}',
        "llm/complete": f'{{"messages": {MESSAGES}, "stop_sequences": {arrays(depth - 1)}}}',
        "llm/complete_with_tools": f'{{"messages": {MESSAGES}, "tools": {arrays(depth - 1)}}}',
    }[route]
    return host.encode()


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@pytest.mark.parametrize("route", ROUTES)
async def test_a_duplicate_key_is_400_naming_it_and_changes_nothing(
    api: Any, shared_orch: Any, jobs: Any, openai_fake: Any, updates_of: Any, route: str
) -> None:
    job = await jobs.create(shared_orch)
    after = shared_orch.manager.get_job(job.job_id).last_sequence
    provider_calls = len(openai_fake.requests)
    raw, key = DUPLICATES[route]
    reply = await api.call(job, "POST", route, data=raw.encode())
    message = reply.expect_error(400, "invalid_request")
    assert f"the key '{key}' appears twice" in message
    snapshot = shared_orch.manager.get_job(job.job_id)
    assert snapshot.state is JobState.RUNNING
    assert snapshot.result is None
    assert len(openai_fake.requests) == provider_calls
    assert [u for u in await updates_of(shared_orch, job.job_id, after)] == []


@pytest.mark.parametrize("route", ROUTES)
async def test_nesting_is_bounded_before_any_recursion(
    api: Any, shared_orch: Any, jobs: Any, openai_fake: Any, route: str
) -> None:
    job = await jobs.create(shared_orch)
    provider_calls = len(openai_fake.requests)
    deepest = (_limit(route) - 1024) // 2
    for depth in (MAX_JSON_DEPTH + 1, 200_000, deepest):
        raw = _nested_in(route, depth)
        if len(raw) > _limit(route):
            # The report routes read less than 200,000 levels take: refused unread.
            (await api.call(job, "POST", route, data=raw)).expect_error(413, "body_too_large")
            continue
        if depth < 500:  # (the standard library cannot even parse the deeper ones)
            assert _depth(json.loads(raw)) == depth
        reply = await api.call(job, "POST", route, data=raw)
        message = reply.expect_error(400, "invalid_request")
        assert f"nested deeper than {MAX_JSON_DEPTH} levels" in message
    assert len(openai_fake.requests) == provider_calls
    assert shared_orch.manager.get_job(job.job_id).state is JobState.RUNNING


async def test_an_event_nested_right_up_to_the_bound_is_recorded(
    api: Any, shared_orch: Any, jobs: Any, updates_of: Any
) -> None:
    job = await jobs.create(shared_orch)
    after = shared_orch.manager.get_job(job.job_id).last_sequence
    raw = _nested_in("event", MAX_JSON_DEPTH)
    assert _depth(json.loads(raw)) == MAX_JSON_DEPTH
    reply = await api.call(job, "POST", "event", data=raw)
    assert reply.status == 200, reply.text
    (event,) = await updates_of(shared_orch, job.job_id, after)
    assert _depth(event.payload["data"]) == MAX_JSON_DEPTH - 1
