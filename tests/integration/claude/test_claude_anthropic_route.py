"""The per-job Anthropic route through real HTTP: the orchestrator between a client speaking as
the Claude Code CLI does and a fake Anthropic upstream speaking the real protocol (SSE
included). Passthrough byte for byte and as it arrives, metering, budgets, the model map and
allowlist, authentication, upstream failures, OAuth, and no secret in any answer or log."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from typing import Any

import grpc
import pytest
from grpc import aio
from structlog.testing import capture_logs

from ironclaw_client.api.v1 import jobs_pb2 as pb
from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc
from orchestrator.domain.jobs import JobLimitOverrides, JobMode
from tests.fakes.fake_anthropic import ErrorReply, anthropic_error_body
from tests.helpers import wait_for
from tests.integration.claude.conftest import UPSTREAM_KEY, ClaudeRoute, RecordingAnthropic

pytestmark = pytest.mark.docker


def _messages_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-5-5",
        "max_tokens": 4096,
        "stream": True,
        "messages": [{"role": "user", "content": "create note.txt"}],
        **extra,
    }


def _usage(route: ClaudeRoute, job_id: str) -> tuple[int, int, int]:
    usage = route.orch.manager.get_job(job_id).usage
    return usage.calls, usage.input_tokens, usage.output_tokens


def _assert_anthropic_error(status: int, body: Any, error_type: str) -> str:
    assert body["type"] == "error", body
    assert body["error"]["type"] == error_type, body
    assert isinstance(body["error"]["message"], str)
    return str(body["error"]["message"])


async def test_a_stream_passes_through_as_it_arrives_byte_for_byte_and_is_metered(
    route_for: Any, upstream: RecordingAnthropic
) -> None:
    route: ClaudeRoute = await route_for(upstream.url)
    job = await route.create()
    for _ in range(2):  # once through the route, once straight from the upstream
        upstream.enqueue_tool_use(
            "Bash",
            {"command": "echo hi > note.txt"},
            tool_id="toolu_0123456789abcdef",
            text="I'll write it.",
            input_tokens=120,
            output_tokens=33,
        )

    async with route.session.post(
        route.url(job.job_id), headers=route.headers(job.key), json=_messages_body()
    ) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        assert response.headers["request-id"].startswith("req_")
        streamed = await response.read()
    async with route.session.post(
        f"{upstream.url}/v1/messages",
        headers={"x-api-key": UPSTREAM_KEY, "anthropic-version": "2023-06-01"},
        json=_messages_body(),
    ) as direct:
        reference = await direct.read()
    # Byte for byte: only the message id, fresh per answer, differs.
    assert _without_message_ids(streamed) == _without_message_ids(reference)
    assert b'"partial_json"' in streamed
    assert _usage(route, job.job_id) == (1, 120, 33)

    # What reached the upstream: the real key, not the job's; the CLI's headers and query.
    sent = upstream.requests[0]
    assert sent.headers["x-api-key"] == UPSTREAM_KEY
    assert "authorization" not in sent.headers
    assert job.key not in json.dumps(dict(sent.headers))
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["anthropic-beta"].startswith("claude-code-20250219")
    assert sent.headers["x-app"] == "cli"
    assert sent.headers["user-agent"].startswith("claude-cli/")
    assert upstream.query_strings[0] == "beta=true"
    assert sent.body == _messages_body()

    # As it arrives: the held answer's message_start is read before the rest exists upstream.
    upstream.enqueue_text("held", hold_stream=True, input_tokens=7, output_tokens=2)
    async with route.session.post(
        route.url(job.job_id), headers=route.headers(job.key), json=_messages_body()
    ) as response:
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), timeout=10)
        assert b"message_start" in first
        assert b"content_block" not in first
        upstream.release_stalled()
        rest = await response.read()
    assert b"message_stop" in rest
    assert _usage(route, job.job_id) == (2, 127, 35)


def _without_message_ids(raw: bytes) -> bytes:
    return re.sub(rb'"msg_[0-9a-f]+"', b'"msg"', raw)


async def test_json_answers_bearer_tokens_aliases_and_clamped_max_tokens(
    route_for: Any, upstream: RecordingAnthropic
) -> None:
    route: ClaudeRoute = await route_for(upstream.url, JOB_LLM_MAX_TOKENS_PER_CALL="1000")
    job = await route.create()
    upstream.enqueue_text("2 + 2 = 4", input_tokens=15, output_tokens=8)
    headers = route.headers(job.key)
    del headers["x-api-key"]
    headers["Authorization"] = f"Bearer {job.key}"
    async with route.session.post(
        route.url(job.job_id, "v1/messages"),
        headers=headers,
        json=_messages_body(model="sonnet", stream=False, max_tokens=32000),
    ) as response:
        body = await response.json()
    assert response.status == 200
    assert body["content"] == [{"type": "text", "text": "2 + 2 = 4"}]
    assert upstream.last.body["model"] == "claude-sonnet-5-5"
    assert upstream.last.body["max_tokens"] == 1000
    assert upstream.query_strings[-1] == ""
    assert _usage(route, job.job_id) == (1, 15, 8)


async def test_count_tokens_is_forwarded_and_counts_as_a_call(
    route_for: Any, upstream: RecordingAnthropic
) -> None:
    route: ClaudeRoute = await route_for(upstream.url)
    job = await route.create(limits=JobLimitOverrides(llm_call_budget=1))
    counting = {"model": "claude-sonnet-5-5", "messages": [{"role": "user", "content": "hi"}]}
    async with route.session.post(
        route.url(job.job_id, "v1/messages/count_tokens?beta=true"),
        headers=route.headers(job.key),
        json=counting,
    ) as response:
        body = await response.json()
    assert response.status == 200
    assert body["input_tokens"] > 0
    assert upstream.last.path == "/v1/messages/count_tokens"
    # Free upstream, but a call: with the job's one call used, the next is refused here.
    assert _usage(route, job.job_id) == (1, 0, 0)
    sent = len(upstream.requests)
    async with route.session.post(
        route.url(job.job_id, "v1/messages/count_tokens?beta=true"),
        headers=route.headers(job.key),
        json=counting,
    ) as response:
        assert response.status == 429
        assert response.headers["x-should-retry"] == "false"
    assert len(upstream.requests) == sent


async def test_the_llm_key_is_required_and_bound_to_its_job(
    route_for: Any, upstream: RecordingAnthropic
) -> None:
    route: ClaudeRoute = await route_for(upstream.url)
    job = await route.create()
    other = await route.create()
    worker = await route.create(mode=JobMode.WORKER)
    assert job.key.startswith("ircl_")
    assert worker.key == ""  # a worker job has no LLM key
    bad = "ircl_" + "x" * 43
    cases = [
        (route.url(job.job_id), {}, 401, "authentication_error"),
        (route.url(job.job_id), {"x-api-key": bad}, 401, "authentication_error"),
        (route.url(job.job_id), {"x-api-key": other.key}, 401, "authentication_error"),
        # The worker token is the bridge's, and it opens nothing here.
        (route.url(job.job_id), {"x-api-key": job.token}, 401, "authentication_error"),
        (
            route.url(job.job_id),
            {"authorization": f"Bearer {job.token}"},
            401,
            "authentication_error",
        ),
        (route.url("not-a-uuid"), {"x-api-key": job.key}, 400, "invalid_request_error"),
        (route.url(worker.job_id), {"x-api-key": worker.token}, 401, "authentication_error"),
    ]
    for url, headers, status, error_type in cases:
        async with route.session.post(url, headers=headers, json=_messages_body()) as response:
            assert response.status == status, (url, headers)
            _assert_anthropic_error(status, await response.json(), error_type)
    async with route.session.post(
        route.url(job.job_id), headers=route.headers(job.key), data=b"{not json"
    ) as response:
        assert response.status == 400
        _assert_anthropic_error(400, await response.json(), "invalid_request_error")
    assert upstream.requests == []
    # The key opens nothing else of its job: GET /job, credentials, events, the end.
    routes = [("GET", "job"), ("GET", "credentials"), ("POST", "event"), ("POST", "complete")]
    for method, path in routes:
        for headers in ({"x-api-key": job.key}, {"authorization": f"Bearer {job.key}"}):
            async with route.session.request(
                method,
                f"{route.base_url}/worker/{job.job_id}/{path}",
                headers=headers,
                json={"success": True, "message": "x"} if method == "POST" else None,
            ) as response:
                assert response.status == 401, (method, path)
                assert (await response.json())["error"] == "invalid_token"
    assert not route.orch.manager.get_job(job.job_id).state.is_terminal
    # Once the job ends its key is dead here too.
    await route.orch.manager.stop_job(job.job_id)
    async with route.session.post(
        route.url(job.job_id), headers=route.headers(job.key), json=_messages_body()
    ) as response:
        assert response.status == 401


async def test_budget_and_model_refusals_tell_the_cli_not_to_retry(
    route_for: Any, upstream: RecordingAnthropic
) -> None:
    route: ClaudeRoute = await route_for(upstream.url)
    job = await route.create(limits=JobLimitOverrides(llm_call_budget=1))
    upstream.enqueue_text("one", input_tokens=10, output_tokens=5)
    url, headers = route.url(job.job_id), route.headers(job.key)

    async with route.session.post(
        url, headers=headers, json=_messages_body(model="claude-opus-5-5")
    ) as response:
        assert response.status == 403
        assert response.headers["x-should-retry"] == "false"
        refused = await response.json()
        message = _assert_anthropic_error(403, refused, "permission_error")
    assert refused["error"]["refusal"] == "model_not_allowed"
    assert "'claude-opus-5-5' is not allowed for this job" in message
    assert "claude-sonnet-5-5" in message
    # Recorded on the job, where the bridge asks why the CLI stopped.
    assert (await route.get_job(job.job_id, job.token))["llm_refusal"] == "model_not_allowed"

    async with route.session.post(url, headers=headers, json=_messages_body()) as response:
        assert response.status == 200
        await response.read()
    async with route.session.post(url, headers=headers, json=_messages_body()) as response:
        assert response.status == 429
        assert response.headers["x-should-retry"] == "false"
        refused = await response.json()
        message = _assert_anthropic_error(429, refused, "rate_limit_error")
    assert refused["error"]["refusal"] == "call_budget_exhausted"
    assert message == "LLM call budget exhausted: 1 of 1 calls used"
    assert (await route.get_job(job.job_id, job.token))["llm_refusal"] == "call_budget_exhausted"
    assert len(upstream.requests) == 1
    assert _usage(route, job.job_id) == (1, 10, 5)


async def test_upstream_errors_pass_through_except_credential_refusals(
    route_for: Any, upstream: RecordingAnthropic
) -> None:
    route: ClaudeRoute = await route_for(upstream.url)
    job = await route.create()
    url, headers = route.url(job.job_id), route.headers(job.key)

    upstream.enqueue_error(400, "invalid_request_error", "messages.1.role: Input should be 'user'")
    async with route.session.post(url, headers=headers, json=_messages_body()) as response:
        assert response.status == 400
        assert "x-should-retry" not in response.headers
        message = _assert_anthropic_error(400, await response.json(), "invalid_request_error")
    assert message == "messages.1.role: Input should be 'user'"

    upstream.enqueue_error(529, "overloaded_error", "Overloaded", retry_after_ms=10)
    async with route.session.post(url, headers=headers, json=_messages_body()) as response:
        assert response.status == 529
        assert response.headers["retry-after-ms"] == "10"
        _assert_anthropic_error(529, await response.json(), "overloaded_error")

    # An upstream that echoes the key back: the key never reaches the job.
    upstream.enqueue(
        ErrorReply(401, anthropic_error_body("authentication_error", f"bad key {UPSTREAM_KEY}"))
    )
    with capture_logs() as logs:
        async with route.session.post(url, headers=headers, json=_messages_body()) as response:
            text = await response.text()
    assert response.status == 502
    assert response.headers["x-should-retry"] == "false"
    message = _assert_anthropic_error(502, json.loads(text), "api_error")
    assert "refused the orchestrator's Anthropic credential (HTTP 401" in message
    assert UPSTREAM_KEY not in text
    assert "bad key ***" in message
    assert UPSTREAM_KEY not in repr(logs)
    assert job.key not in repr(logs)

    upstream.enqueue(ErrorReply(500, anthropic_error_body("api_error", f"echo {UPSTREAM_KEY}")))
    async with route.session.post(url, headers=headers, json=_messages_body()) as response:
        assert response.status == 500
        assert UPSTREAM_KEY not in await response.text()
    # Each attempt counted as a call, none had usage.
    assert _usage(route, job.job_id) == (4, 0, 0)


async def test_an_unreachable_upstream_is_a_502(route_for: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    route: ClaudeRoute = await route_for(f"http://127.0.0.1:{port}")
    job = await route.create()
    async with route.session.post(
        route.url(job.job_id), headers=route.headers(job.key), json=_messages_body()
    ) as response:
        assert response.status == 502
        message = _assert_anthropic_error(502, await response.json(), "api_error")
    assert "could not be reached" in message
    assert UPSTREAM_KEY not in message


async def test_an_oauth_token_goes_upstream_as_bearer_with_the_oauth_beta(route_for: Any) -> None:
    oauth = "sk-ant-oat01-" + "o" * 30
    async with RecordingAnthropic(api_key=oauth) as upstream:
        route: ClaudeRoute = await route_for(
            upstream.url, ANTHROPIC_API_KEY="", CLAUDE_CODE_OAUTH_TOKEN=oauth
        )
        job = await route.create()
        upstream.enqueue_text("hello", input_tokens=3, output_tokens=2)
        async with route.session.post(
            route.url(job.job_id), headers=route.headers(job.key), json=_messages_body()
        ) as response:
            assert response.status == 200, await response.text()
            await response.read()
        sent = upstream.last.headers
        assert sent["authorization"] == f"Bearer {oauth}"
        assert "x-api-key" not in sent
        betas = sent["anthropic-beta"].split(",")
        assert betas[0] == "oauth-2025-04-20"
        assert "claude-code-20250219" in betas
        assert _usage(route, job.job_id) == (1, 3, 2)


async def test_a_client_that_goes_away_mid_stream_is_still_metered(
    route_for: Any, upstream: RecordingAnthropic
) -> None:
    route: ClaudeRoute = await route_for(upstream.url)
    job = await route.create()
    upstream.enqueue_text("slow", hold_stream=True, input_tokens=50, output_tokens=9)
    response = await route.session.post(
        route.url(job.job_id), headers=route.headers(job.key), json=_messages_body()
    )
    await response.content.readuntil(b"\n\n")
    response.close()
    upstream.release_stalled()
    # message_start carried the input tokens; the rest never reached anyone.
    await wait_for(lambda: _usage(route, job.job_id)[1] == 50, what="usage of the broken call")


async def test_claude_code_mode_needs_an_anthropic_credential(
    start_orch: Any, make_settings: Any
) -> None:
    orch = await start_orch(make_settings(LLM_PROVIDER="none"))
    channel = aio.insecure_channel(f"127.0.0.1:{orch.grpc_port}")
    try:
        stub = pb_grpc.JobServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateJob(pb.CreateJobRequest(task="hello", mode=pb.JOB_MODE_CLAUDE_CODE))
    finally:
        await channel.close(None)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN" in (refused.value.details() or "")
    assert orch.manager.job_ids() == []
