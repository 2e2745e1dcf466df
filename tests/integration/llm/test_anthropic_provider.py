"""AnthropicProvider through the real ``anthropic`` SDK against a fake Messages API."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from orchestrator.errors import InvalidArgument, ProviderError
from orchestrator.llm.anthropic_provider import AnthropicProvider
from orchestrator.llm.types import ChatMessage, CompletionRequest, ToolCall, ToolSpec
from orchestrator.secrets import Secret
from tests.fakes.fake_anthropic import FakeAnthropic

MODEL = "claude-sonnet-5-5"
KEY = "sk-ant-api03-integration-test-key-0123456789"
SHELL = ToolSpec(
    "shell",
    "Run a command",
    {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
)

MakeProvider = Callable[..., AnthropicProvider]


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key=KEY) as server:
        yield server


@pytest.fixture
async def make_provider(fake: FakeAnthropic) -> AsyncIterator[MakeProvider]:
    made: list[AnthropicProvider] = []

    def make(
        key: str = KEY, timeout_s: float = 10.0, max_retries: int = 0, base_url: str = ""
    ) -> AnthropicProvider:
        provider = AnthropicProvider(
            Secret(key),
            base_url=base_url or fake.url,
            timeout_s=timeout_s,
            max_retries=max_retries,
        )
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


def _request(*messages: ChatMessage, **fields: Any) -> CompletionRequest:
    return CompletionRequest(messages=messages, model=MODEL, max_tokens=1024, **fields)


async def test_text_completion(fake: FakeAnthropic, make_provider: MakeProvider) -> None:
    fake.enqueue_text("2 + 2 = 4", input_tokens=15, output_tokens=8)

    result = await make_provider().complete(
        _request(ChatMessage("system", "Be brief."), ChatMessage("user", "What is 2+2?"))
    )

    assert (result.content, result.finish_reason) == ("2 + 2 = 4", "stop")
    assert (result.input_tokens, result.output_tokens) == (15, 8)
    sent = fake.last
    assert sent.path == "/v1/messages"
    assert sent.api_key == KEY
    assert "anthropic-version" in sent.headers
    assert sent.body == {
        "model": MODEL,
        "max_tokens": 1024,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}],
    }


async def test_tool_calls_round_trip(fake: FakeAnthropic, make_provider: MakeProvider) -> None:
    provider = make_provider()
    fake.enqueue_message(
        [
            {"type": "text", "text": "Two commands."},
            {"type": "tool_use", "id": "toolu_a", "name": "shell", "input": {"command": "ls"}},
            {"type": "tool_use", "id": "toolu_b", "name": "shell", "input": {"command": "pwd"}},
        ],
        stop_reason="tool_use",
    )
    conversation = [ChatMessage("user", "Where am I and what is here?")]

    first = await provider.complete(_request(*conversation, tools=(SHELL,), tool_choice="required"))

    assert first.finish_reason == "tool_use"
    assert first.content == "Two commands."
    assert first.tool_calls == (
        ToolCall("toolu_a", "shell", {"command": "ls"}),
        ToolCall("toolu_b", "shell", {"command": "pwd"}),
    )
    assert fake.last.body["tools"] == [
        {
            "name": "shell",
            "description": "Run a command",
            "input_schema": dict(SHELL.parameters),
        }
    ]
    assert fake.last.body["tool_choice"] == {"type": "any"}

    # The fake refuses, as the real API does, tool results that are not all in the one user
    # message right after the tool calls: this call passing is part of the check.
    fake.enqueue_text("You are in /workspace, which holds a.txt.")
    conversation += [
        ChatMessage("assistant", first.content, tool_calls=first.tool_calls),
        ChatMessage("tool", "a.txt", tool_call_id="toolu_a"),
        ChatMessage("tool", "/workspace", tool_call_id="toolu_b"),
    ]
    second = await provider.complete(_request(*conversation, tools=(SHELL,)))

    assert second.content == "You are in /workspace, which holds a.txt."
    assert fake.last.body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Two commands."},
                {"type": "tool_use", "id": "toolu_a", "name": "shell", "input": {"command": "ls"}},
                {"type": "tool_use", "id": "toolu_b", "name": "shell", "input": {"command": "pwd"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_a", "content": "a.txt"},
                {"type": "tool_result", "tool_use_id": "toolu_b", "content": "/workspace"},
            ],
        },
    ]


async def test_provider_500_is_a_provider_error_without_the_key(
    fake: FakeAnthropic, make_provider: MakeProvider
) -> None:
    # An upstream that echoes the key back must not get it into our error.
    fake.enqueue_error(500, "api_error", f"Internal server error (key {KEY})")

    with pytest.raises(ProviderError) as caught:
        await make_provider().complete(_request(ChatMessage("user", "hi")))

    message = caught.value.message
    assert message.startswith(f"anthropic ({fake.url}): HTTP 500 api_error: Internal server error")
    assert "(key ***)" in message
    assert KEY not in message
    assert caught.value.__cause__ is None  # the SDK error carries the key too


async def test_wrong_key_is_reported_with_the_upstream_reason(
    fake: FakeAnthropic, make_provider: MakeProvider
) -> None:
    wrong = "sk-ant-wrong-key-000000000000"
    with pytest.raises(ProviderError) as caught:
        await make_provider(key=wrong).complete(_request(ChatMessage("user", "hi")))
    assert "HTTP 401 authentication_error: " in caught.value.message
    assert wrong not in caught.value.message
    assert fake.pending == 0


async def test_timeout_is_a_provider_error(
    fake: FakeAnthropic, make_provider: MakeProvider
) -> None:
    fake.enqueue_stall()

    with pytest.raises(ProviderError) as caught:
        await make_provider(timeout_s=0.3).complete(_request(ChatMessage("user", "hi")))

    assert (
        caught.value.message == f"anthropic ({fake.url}): request timed out after 0.3 s (1 attempt)"
    )


async def test_retries_then_succeeds(fake: FakeAnthropic, make_provider: MakeProvider) -> None:
    fake.enqueue_error(529, "overloaded_error", "Overloaded", retry_after_ms=1)
    fake.enqueue_text("finally")

    result = await make_provider(max_retries=1).complete(_request(ChatMessage("user", "hi")))

    assert result.content == "finally"
    assert len(fake.requests) == 2


async def test_retries_exhausted(fake: FakeAnthropic, make_provider: MakeProvider) -> None:
    for _ in range(2):
        fake.enqueue_error(529, "overloaded_error", "Overloaded", retry_after_ms=1)

    with pytest.raises(ProviderError, match="HTTP 529 overloaded_error: Overloaded"):
        await make_provider(max_retries=1).complete(_request(ChatMessage("user", "hi")))
    assert len(fake.requests) == 2


async def test_unreachable_provider(make_provider: MakeProvider) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = make_provider(base_url=f"http://127.0.0.1:{port}")

    with pytest.raises(ProviderError, match=r"could not connect \(.*1 attempt\)"):
        await provider.complete(_request(ChatMessage("user", "hi")))


async def test_bad_request_is_refused_before_any_call(
    fake: FakeAnthropic, make_provider: MakeProvider
) -> None:
    with pytest.raises(InvalidArgument):
        await make_provider().complete(_request(ChatMessage("tool", "orphan result")))
    assert fake.requests == []
