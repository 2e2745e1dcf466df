"""What the per-job Anthropic route forwards is what it checked, through real HTTP: a body with
a key given twice (a disallowed model first, an allowed one after) is refused instead of sent,
``max_tokens`` given as a float is clamped and sent as an integer, a fraction or a string is
refused, and a body nested 200,000 levels deep (or as deep as the size limit allows) is a 400
in Anthropic's error document, never a RecursionError and a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ironclaw_contract.worker_api import MAX_JSON_DEPTH
from tests.integration.claude.conftest import ClaudeRoute, RecordingAnthropic

pytestmark = pytest.mark.docker

MESSAGES = [{"role": "user", "content": "create note.txt"}]
BODY_LIMIT = 32 * 1024 * 1024  # ORCHESTRATOR_HTTP_MAX_BODY_MB's default


async def _post(route: ClaudeRoute, token: str, job_id: str, raw: bytes) -> tuple[int, Any, str]:
    async with route.session.post(
        route.url(job_id, "v1/messages"), headers=route.headers(token), data=raw
    ) as response:
        text = await response.text()
        return response.status, json.loads(text), text


def _refusal(status: int, body: Any, text: str) -> str:
    assert status == 400, text[:500]
    assert body["type"] == "error", body
    assert body["error"]["type"] == "invalid_request_error", body
    assert "Traceback" not in text
    return str(body["error"]["message"])


async def test_a_duplicate_model_key_is_refused_and_nothing_goes_upstream(
    route_for: Any, upstream: RecordingAnthropic
) -> None:
    route: ClaudeRoute = await route_for(upstream.url)
    job = await route.create()
    # The job may use sonnet; opus is not allowed. Either reading order must not matter.
    for first, last in (("opus", "sonnet"), ("sonnet", "opus")):
        raw = (
            f'{{"model": "{first}", "max_tokens": 1024, "stream": false, '
            f'"messages": {json.dumps(MESSAGES)}, "model": "{last}"}}'
        ).encode()
        message = _refusal(*await _post(route, job.key, job.job_id, raw))
        assert "'model' appears twice" in message
    assert upstream.requests == []
    assert route.orch.manager.get_job(job.job_id).usage.calls == 0


async def test_max_tokens_as_a_float_is_clamped_and_forwarded_as_an_integer(
    route_for: Any, upstream: RecordingAnthropic
) -> None:
    route: ClaudeRoute = await route_for(upstream.url)
    job = await route.create()
    upstream.enqueue_text("ok")
    raw = json.dumps(
        {"model": "claude-sonnet-5-5", "max_tokens": 64000.0, "stream": False, "messages": MESSAGES}
    ).encode()
    status, _, text = await _post(route, job.key, job.job_id, raw)
    assert status == 200, text
    forwarded = upstream.raw_bodies[-1]
    assert b'"max_tokens":8192' in forwarded  # JOB_LLM_MAX_TOKENS_PER_CALL, an integer
    assert b"64000" not in forwarded
    assert json.loads(forwarded)["max_tokens"] == 8192


@pytest.mark.parametrize("value", ["64000.5", '"64000"', "true", "null", "-1"])
async def test_max_tokens_that_is_not_a_whole_number_is_refused(
    route_for: Any, upstream: RecordingAnthropic, value: str
) -> None:
    route: ClaudeRoute = await route_for(upstream.url)
    job = await route.create()
    raw = (
        f'{{"model": "claude-sonnet-5-5", "max_tokens": {value}, '
        f'"messages": {json.dumps(MESSAGES)}}}'
    ).encode()
    assert "max_tokens" in _refusal(*await _post(route, job.key, job.job_id, raw))
    assert upstream.requests == []


async def test_a_body_within_policy_is_forwarded_byte_for_byte(
    route_for: Any, upstream: RecordingAnthropic
) -> None:
    route: ClaudeRoute = await route_for(upstream.url)
    job = await route.create()
    upstream.enqueue_text("ok")
    raw = b'{"model": "claude-sonnet-5-5", "max_tokens": 1024, "stream": false, "messages": '
    raw += json.dumps(MESSAGES).encode() + b"}"
    status, _, text = await _post(route, job.key, job.job_id, raw)
    assert status == 200, text
    assert upstream.raw_bodies[-1] == raw


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 200_000, BODY_LIMIT // 2 - 1024])
async def test_deep_nesting_is_a_400_not_a_500(
    route_for: Any, upstream: RecordingAnthropic, depth: int
) -> None:
    route: ClaudeRoute = await route_for(upstream.url)
    job = await route.create()
    levels = depth - 1  # the body's own object is the first level
    raw = b'{"model": "claude-sonnet-5-5", "messages": ' + b"[" * levels + b"]" * levels + b"}"
    assert len(raw) <= BODY_LIMIT
    message = _refusal(*await _post(route, job.key, job.job_id, raw))
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in message
    assert upstream.requests == []
