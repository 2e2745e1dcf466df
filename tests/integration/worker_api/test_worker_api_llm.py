"""The LLM proxy routes through real HTTP, with the official SDKs talking to the fake provider
servers: answers, tool calls, metering, budgets, the model allowlist and provider failures."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest

from orchestrator.domain.jobs import JobLimitOverrides, JobState, TerminalReason
from orchestrator.jobs.ledger import OVERHEAD_TOKENS
from tests.fakes.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.docker

SHELL_TOOL = {
    "name": "shell",
    "description": "Run a command",
    "parameters": {
        "type": "object",
        "properties": {"command": {"type": "string"}},
        "required": ["command"],
    },
}


def _messages(*texts: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text} for text in texts]


# -- OpenAI-compatible provider (the module orchestrator) ----------------------------------


async def test_text_completion_goes_through_the_provider_with_its_key(
    api: Any, shared_orch: Any, jobs: Any, openai_fake: Any, openai_key: str
) -> None:
    job = await jobs.create(shared_orch)
    openai_fake.enqueue_text("2 + 2 = 4", prompt_tokens=15, completion_tokens=8)

    reply = await api.call(
        job,
        "POST",
        "llm/complete",
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 2+2?"},
            ],
            "max_tokens": 4096,
            "temperature": 0.2,
            "stop_sequences": ["END"],
        },
    )

    assert reply.status == 200, reply.text
    assert reply.body == {
        "content": "2 + 2 = 4",
        "finish_reason": "stop",
        "input_tokens": 15,
        "output_tokens": 8,
    }
    sent = openai_fake.last
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {openai_key}"
    assert sent.body["model"] == "gpt-4o-mini"
    assert sent.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
    ]
    assert (sent.body["max_tokens"], sent.body["temperature"], sent.body["stop"]) == (
        4096,
        0.2,
        ["END"],
    )
    # The container never sees the provider key; the provider never sees the job token.
    api.assert_never_returned(openai_key, job.token)
    assert job.token not in json.dumps(sent.body) + json.dumps(dict(sent.headers))


async def test_max_tokens_is_clamped_to_the_jobs_per_call_cap(
    api: Any, shared_orch: Any, jobs: Any, openai_fake: Any
) -> None:
    job = await jobs.create(shared_orch, limits=JobLimitOverrides(llm_max_tokens_per_call=256))
    for asked in (100_000, None, 100):
        openai_fake.enqueue_text("ok")
        body: dict[str, Any] = {"messages": _messages("hi")}
        if asked is not None:
            body["max_tokens"] = asked
        reply = await api.call(job, "POST", "llm/complete", body)
        assert reply.status == 200, reply.text
        assert openai_fake.last.body["max_tokens"] == min(asked or 256, 256)


async def test_tool_calls_come_back_and_their_results_round_trip(
    api: Any, shared_orch: Any, jobs: Any, openai_fake: Any
) -> None:
    job = await jobs.create(shared_orch)
    openai_fake.enqueue_tool_calls(
        [
            {"id": "call_a", "name": "shell", "arguments": {"command": "ls"}},
            {"id": "call_b", "name": "shell", "arguments": {"command": "pwd"}},
        ],
        prompt_tokens=20,
        completion_tokens=7,
    )
    conversation = _messages("Where am I and what is here?")

    first = await api.call(
        job,
        "POST",
        "llm/complete_with_tools",
        {"messages": conversation, "tools": [SHELL_TOOL], "tool_choice": "required"},
    )

    assert first.status == 200, first.text
    assert first.body == {
        "content": None,
        "tool_calls": [
            {"id": "call_a", "name": "shell", "arguments": {"command": "ls"}},
            {"id": "call_b", "name": "shell", "arguments": {"command": "pwd"}},
        ],
        "finish_reason": "tool_use",
        "input_tokens": 20,
        "output_tokens": 7,
    }
    assert openai_fake.last.body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "shell",
                "description": "Run a command",
                "parameters": SHELL_TOOL["parameters"],
            },
        }
    ]
    assert openai_fake.last.body["tool_choice"] == "required"

    # The fake refuses, as the real API does, tool results that answer no call: this call
    # passing is part of the check.
    openai_fake.enqueue_text("You are in /workspace, which holds a.txt.")
    conversation += [
        {"role": "assistant", "content": None, "tool_calls": first.body["tool_calls"]},
        {"role": "tool", "tool_call_id": "call_a", "content": "a.txt"},
        {"role": "tool", "tool_call_id": "call_b", "content": "/workspace"},
    ]
    second = await api.call(
        job, "POST", "llm/complete_with_tools", {"messages": conversation, "tools": [SHELL_TOOL]}
    )

    assert second.status == 200, second.text
    assert second.body["content"] == "You are in /workspace, which holds a.txt."
    assert (second.body["tool_calls"], second.body["finish_reason"]) == ([], "stop")
    sent = openai_fake.last.body["messages"]
    assert sent[1]["tool_calls"][0] == {
        "id": "call_a",
        "type": "function",
        "function": {"name": "shell", "arguments": json.dumps({"command": "ls"})},
    }
    assert sent[2:] == [
        {"role": "tool", "tool_call_id": "call_a", "content": "a.txt"},
        {"role": "tool", "tool_call_id": "call_b", "content": "/workspace"},
    ]


async def test_provider_extras_are_passed_through(
    api: Any, shared_orch: Any, jobs: Any, openai_fake: Any
) -> None:
    job = await jobs.create(shared_orch)
    openai_fake.enqueue_tool_calls(
        [{"id": "call_r", "name": "shell", "arguments": {"command": "ls"}}],
        extra_message_fields={"reasoning_content": "List the files first."},
    )
    reply = await api.call(
        job,
        "POST",
        "llm/complete_with_tools",
        {"messages": _messages("go"), "tools": [SHELL_TOOL]},
    )
    assert reply.status == 200, reply.text
    assert reply.body["reasoning_content"] == "List the files first."

    # ... and sent back untouched on the assistant message of the next turn.
    openai_fake.enqueue_text("done")
    follow_up = [
        *_messages("go"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": reply.body["tool_calls"],
            "reasoning_content": reply.body["reasoning_content"],
        },
        {"role": "tool", "tool_call_id": "call_r", "content": "a.txt"},
    ]
    again = await api.call(
        job, "POST", "llm/complete_with_tools", {"messages": follow_up, "tools": [SHELL_TOOL]}
    )
    assert again.status == 200, again.text
    assert openai_fake.last.body["messages"][1]["reasoning_content"] == "List the files first."


async def test_an_answer_with_extras_matches_the_documented_schema(
    api: Any, shared_orch: Any, jobs: Any, openai_fake: Any
) -> None:
    job = await jobs.create(shared_orch)
    openai_fake.enqueue_tool_calls(
        [{"id": "call_r", "name": "shell", "arguments": {"command": "ls"}}],
        extra_message_fields={"reasoning_content": "List the files first."},
    )
    reply = await api.call(
        job, "POST", "llm/complete_with_tools", {"messages": _messages("go"), "tools": [SHELL_TOOL]}
    )
    assert reply.status == 200, reply.text
    schema = (await api.request("GET", "/openapi.json")).body["components"]["schemas"][
        "ToolCompletionBody"
    ]
    if schema.get("additionalProperties") is False:
        assert set(reply.body) <= set(schema["properties"])


async def test_provider_extras_cannot_overwrite_the_answer_fields(
    api: Any, shared_orch: Any, jobs: Any, openai_fake: Any
) -> None:
    job = await jobs.create(shared_orch)
    openai_fake.enqueue_tool_calls(
        [{"id": "call_x", "name": "shell", "arguments": {"command": "ls"}}],
        prompt_tokens=20,
        completion_tokens=7,
        extra_message_fields={"finish_reason": "banana", "input_tokens": 0, "output_tokens": 0},
    )
    reply = await api.call(
        job, "POST", "llm/complete_with_tools", {"messages": _messages("go"), "tools": [SHELL_TOOL]}
    )
    assert reply.status == 200, reply.text
    assert shared_orch.manager.get_job(job.job_id).usage.input_tokens == 20  # metered right
    assert (reply.body["finish_reason"], reply.body["input_tokens"]) == ("tool_use", 20)
    assert reply.body["output_tokens"] == 7


async def test_usage_accumulates_on_the_job(
    api: Any, shared_orch: Any, jobs: Any, openai_fake: Any
) -> None:
    job = await jobs.create(shared_orch)
    openai_fake.enqueue_text("one", prompt_tokens=15, completion_tokens=8)
    openai_fake.enqueue_tool_calls(
        [{"name": "shell", "arguments": {"command": "ls"}}], prompt_tokens=30, completion_tokens=4
    )
    openai_fake.enqueue_text("three", prompt_tokens=100, completion_tokens=1)

    first = await api.call(job, "POST", "llm/complete", {"messages": _messages("1")})
    second = await api.call(
        job,
        "POST",
        "llm/complete_with_tools",
        {"messages": _messages("2"), "tools": [SHELL_TOOL]},
    )
    third = await api.call(job, "POST", "llm/complete", {"messages": _messages("3")})

    assert [r.status for r in (first, second, third)] == [200, 200, 200]
    usage = shared_orch.manager.get_job(job.job_id).usage
    assert (usage.calls, usage.input_tokens, usage.output_tokens) == (3, 145, 13)


async def test_provider_500_is_502_without_the_key(
    api: Any, shared_orch: Any, jobs: Any, openai_fake: Any, openai_key: str
) -> None:
    job = await jobs.create(shared_orch)
    openai_fake.enqueue_error(500, "The server had an error while processing your request.")
    # An upstream that echoes the key back must not get it to the container either.
    openai_fake.enqueue_error(
        401,
        f"Incorrect API key provided: {openai_key}.",
        error_type="invalid_request_error",
        code="invalid_api_key",
    )

    failed = await api.call(job, "POST", "llm/complete", {"messages": _messages("hi")})
    echoed = await api.call(job, "POST", "llm/complete", {"messages": _messages("hi")})

    message = failed.expect_error(502, "provider_failed")
    assert "HTTP 500" in message
    assert "The server had an error" in message
    assert "HTTP 401" in echoed.expect_error(502, "provider_failed")
    api.assert_never_returned(openai_key, job.token)
    assert shared_orch.manager.get_job(job.job_id).state is JobState.RUNNING


async def test_call_budget_exhausted_is_429_with_the_numbers(
    api: Any, shared_orch: Any, jobs: Any, openai_fake: Any
) -> None:
    job = await jobs.create(shared_orch, limits=JobLimitOverrides(llm_call_budget=2))
    openai_fake.enqueue_text("one")
    openai_fake.enqueue_text("two")
    before = len(openai_fake.requests)

    answers = [
        await api.call(job, "POST", "llm/complete", {"messages": _messages(str(i))})
        for i in range(2)
    ]
    refused = await api.call(
        job,
        "POST",
        "llm/complete_with_tools",
        {"messages": _messages("3"), "tools": [SHELL_TOOL]},
    )

    assert [a.status for a in answers] == [200, 200]
    message = refused.expect_error(429, "budget_exceeded", "call_budget_exhausted")
    assert "call budget" in message
    assert "2 of 2" in message
    assert len(openai_fake.requests) == before + 2  # the refused call never left
    assert shared_orch.manager.get_job(job.job_id).usage.calls == 2


async def test_token_budget_exhausted_is_429_and_types_a_later_failure(
    api: Any, shared_orch: Any, jobs: Any, openai_fake: Any
) -> None:
    # Room for one call's worst case (its request's bytes, the ledger's overhead, some output).
    budget = OVERHEAD_TOKENS + 300
    job = await jobs.create(shared_orch, limits=JobLimitOverrides(llm_token_budget=budget))
    openai_fake.enqueue_text("2 + 2 = 4", prompt_tokens=900, completion_tokens=100)

    # The first call is reserved and sent with max_tokens capped to what the budget leaves;
    # after its usage is settled the next one cannot fit and never goes upstream.
    first = await api.call(job, "POST", "llm/complete", {"messages": _messages("2+2?")})
    assert first.status == 200, first.text
    assert openai_fake.last.body["max_tokens"] <= 300
    sent = len(openai_fake.requests)
    refused = await api.call(job, "POST", "llm/complete", {"messages": _messages("again")})
    message = refused.expect_error(429, "budget_exceeded", "token_budget_exhausted")
    assert "token budget" in message
    assert f"1000 of {budget}" in message
    assert len(openai_fake.requests) == sent

    # Recorded on the job, as its code: GET /job tells the agent why its calls fail.
    info = await api.call(job, "GET", "job")
    assert info.body["llm_refusal"] == "token_budget_exhausted"

    # The worker then gives up; the failure is typed from the refusal.
    done = await api.call(job, "POST", "complete", {"success": False, "message": "out of budget"})
    assert done.status == 200, done.text
    final = shared_orch.manager.get_job(job.job_id)
    assert final.state is JobState.FAILED
    assert final.result.reason is TerminalReason.BUDGET_EXCEEDED


async def test_a_model_outside_the_allowlist_is_403_model_not_allowed(
    api: Any, shared_orch: Any, jobs: Any, openai_fake: Any
) -> None:
    job = await jobs.create(shared_orch)
    openai_fake.enqueue_text("allowed")
    allowed = await api.call(
        job, "POST", "llm/complete", {"messages": _messages("hi"), "model": "gpt-4o"}
    )
    assert allowed.status == 200, allowed.text
    assert openai_fake.last.body["model"] == "gpt-4o"
    before = len(openai_fake.requests)

    for route, extra in (("llm/complete", {}), ("llm/complete_with_tools", {"tools": []})):
        refused = await api.call(
            job, "POST", route, {"messages": _messages("hi"), "model": "gpt-5-pro", **extra}
        )
        message = refused.expect_error(403, "permission_denied", "model_not_allowed")
        assert "'gpt-5-pro' is not allowed" in message
        assert "gpt-4o-mini" in message
        assert "gpt-4o" in message

    assert len(openai_fake.requests) == before
    assert shared_orch.manager.get_job(job.job_id).usage.calls == 1


@pytest.mark.parametrize(
    "body",
    [
        {"messages": []},
        {"messages": [{"role": "robot", "content": "hi"}]},
        {"messages": _messages("hi"), "max_tokens": 0},
        {"messages": _messages("hi"), "temperature": 3.5},
        {"messages": _messages("hi"), "stop_sequences": ["x"] * 17},
        {"messages": _messages("hi"), "tools": [{"name": "bad name!"}]},
        {"messages": _messages("hi"), "stream": True},
    ],
    ids=["no-messages", "bad-role", "zero-max-tokens", "hot", "many-stops", "bad-tool", "extra"],
)
async def test_llm_bodies_that_break_the_schema_are_422_and_not_sent(
    api: Any, shared_orch: Any, jobs: Any, openai_fake: Any, body: dict[str, Any]
) -> None:
    job = await jobs.create(shared_orch)
    before = len(openai_fake.requests)
    reply = await api.call(job, "POST", "llm/complete_with_tools", body)
    reply.expect_error(422, "invalid_body")
    assert len(openai_fake.requests) == before
    assert shared_orch.manager.get_job(job.job_id).usage.calls == 0


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "tool", "content": "a.txt"}]},
        {"messages": _messages("hi"), "tools": [SHELL_TOOL], "tool_choice": "sometimes"},
    ],
    ids=["tool-message-without-id", "unknown-tool-choice"],
)
async def test_a_request_refused_before_the_provider_is_not_a_counted_call(
    api: Any, shared_orch: Any, jobs: Any, openai_fake: Any, body: dict[str, Any]
) -> None:
    job = await jobs.create(shared_orch, limits=JobLimitOverrides(llm_call_budget=1))
    before = len(openai_fake.requests)
    refused = await api.call(job, "POST", "llm/complete_with_tools", body)
    assert 400 <= refused.status < 500, refused.text
    assert len(openai_fake.requests) == before  # nothing went upstream...
    assert shared_orch.manager.get_job(job.job_id).usage.calls == 0  # ...so nothing is counted
    openai_fake.enqueue_text("ok")
    fine = await api.call(job, "POST", "llm/complete", {"messages": _messages("hi")})
    assert fine.status == 200, fine.text


# -- other provider configurations (their own orchestrator) --------------------------------


async def test_provider_timeout_is_502(
    start_orch: Any,
    make_settings: Any,
    test_agent_image: str,
    shared_settings_env: dict[str, str],
    openai_fake: Any,
    jobs: Any,
    api_for: Any,
) -> None:
    orch = await start_orch(
        make_settings(
            WORKER_IMAGE=test_agent_image, **{**shared_settings_env, "LLM_TIMEOUT_S": "0.5"}
        )
    )
    api = api_for(orch)
    job = await jobs.create(orch)
    openai_fake.enqueue_stall()

    reply = await api.call(job, "POST", "llm/complete", {"messages": _messages("hi")})

    message = reply.expect_error(502, "provider_failed")
    assert "timed out after 0.5 s" in message
    assert orch.manager.get_job(job.job_id).state is JobState.RUNNING


async def test_no_provider_configured_is_503(
    start_orch: Any, make_settings: Any, test_agent_image: str, jobs: Any, api_for: Any
) -> None:
    orch = await start_orch(make_settings(WORKER_IMAGE=test_agent_image))
    api = api_for(orch)
    job = await jobs.create(orch)
    for route, extra in (("llm/complete", {}), ("llm/complete_with_tools", {"tools": []})):
        reply = await api.call(job, "POST", route, {"messages": _messages("hi"), **extra})
        assert "LLM_PROVIDER" in reply.expect_error(503, "no_provider")
    assert orch.manager.get_job(job.job_id).usage.calls == 0


async def test_anthropic_text_and_tool_round_trip(
    start_orch: Any, make_settings: Any, test_agent_image: str, jobs: Any, api_for: Any
) -> None:
    key = "sk-ant-api03-" + secrets.token_hex(20)
    async with FakeAnthropic(api_key=key) as fake:
        orch = await start_orch(
            make_settings(
                WORKER_IMAGE=test_agent_image,
                LLM_PROVIDER="anthropic",
                ANTHROPIC_API_KEY=key,
                ANTHROPIC_BASE_URL=fake.url,
                LLM_MAX_RETRIES="0",
            )
        )
        api = api_for(orch)
        job = await jobs.create(orch)

        fake.enqueue_text("2 + 2 = 4", input_tokens=15, output_tokens=8)
        text = await api.call(
            job,
            "POST",
            "llm/complete",
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "What is 2+2?"},
                ],
                "max_tokens": 1024,
            },
        )
        assert text.status == 200, text.text
        assert text.body == {
            "content": "2 + 2 = 4",
            "finish_reason": "stop",
            "input_tokens": 15,
            "output_tokens": 8,
        }
        assert fake.last.path == "/v1/messages"
        assert fake.last.api_key == key
        assert fake.last.body["system"] == "Be brief."
        assert fake.last.body["model"] == orch.settings.llm_model

        fake.enqueue_tool_use("shell", {"command": "ls"}, tool_id="toolu_a", text="Looking.")
        conversation = _messages("What is here?")
        tools = await api.call(
            job,
            "POST",
            "llm/complete_with_tools",
            {"messages": conversation, "tools": [SHELL_TOOL], "tool_choice": "required"},
        )
        assert tools.status == 200, tools.text
        assert tools.body["content"] == "Looking."
        assert tools.body["finish_reason"] == "tool_use"
        assert tools.body["tool_calls"] == [
            {"id": "toolu_a", "name": "shell", "arguments": {"command": "ls"}}
        ]
        assert fake.last.body["tools"][0]["input_schema"] == SHELL_TOOL["parameters"]
        assert fake.last.body["tool_choice"] == {"type": "any"}

        # The fake checks tool_use/tool_result pairing as the real API does.
        fake.enqueue_text("There is a.txt.")
        conversation += [
            {"role": "assistant", "content": "Looking.", "tool_calls": tools.body["tool_calls"]},
            {"role": "tool", "tool_call_id": "toolu_a", "content": "a.txt"},
        ]
        final = await api.call(
            job,
            "POST",
            "llm/complete_with_tools",
            {"messages": conversation, "tools": [SHELL_TOOL]},
        )
        assert final.status == 200, final.text
        assert final.body["content"] == "There is a.txt."
        assert fake.last.body["messages"][-1] == {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_a", "content": "a.txt"}],
        }
        usage = orch.manager.get_job(job.job_id).usage
        assert (usage.calls, usage.input_tokens, usage.output_tokens) == (3, 35, 18)
        api.assert_never_returned(key, job.token)
