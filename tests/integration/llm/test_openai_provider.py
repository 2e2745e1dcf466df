"""OpenAIProvider through the real ``openai`` SDK against a fake Chat Completions server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from orchestrator.errors import ProviderError
from orchestrator.llm.openai_provider import OpenAIProvider
from orchestrator.llm.types import ChatMessage, CompletionRequest, ToolCall, ToolSpec
from orchestrator.secrets import Secret
from tests.fakes.fake_openai import FakeOpenAI

KEY = "sk-proj-integration-test-key-0123456789"
READ_FILE = ToolSpec(
    "read_file",
    "Read a file",
    {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
)

MakeProvider = Callable[..., OpenAIProvider]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key=KEY) as server:
        yield server


@pytest.fixture
async def make_provider(fake: FakeOpenAI) -> AsyncIterator[MakeProvider]:
    made: list[OpenAIProvider] = []

    def make(
        key: str | None = KEY, timeout_s: float = 10.0, max_retries: int = 0
    ) -> OpenAIProvider:
        provider = OpenAIProvider(
            Secret(key) if key else None,
            base_url=fake.base_url,
            timeout_s=timeout_s,
            max_retries=max_retries,
        )
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


def _request(*messages: ChatMessage, **fields: Any) -> CompletionRequest:
    return CompletionRequest(messages=messages, model="qwen2.5-coder", max_tokens=512, **fields)


async def test_text_completion_with_reasoning(
    fake: FakeOpenAI, make_provider: MakeProvider
) -> None:
    fake.enqueue_text(
        "2 + 2 = 4",
        prompt_tokens=15,
        completion_tokens=8,
        extra_message_fields={"reasoning_content": "Two plus two."},
    )

    result = await make_provider().complete(
        _request(ChatMessage("system", "Be brief."), ChatMessage("user", "What is 2+2?"))
    )

    assert (result.content, result.finish_reason) == ("2 + 2 = 4", "stop")
    assert (result.input_tokens, result.output_tokens) == (15, 8)
    assert result.extras == {"reasoning_content": "Two plus two."}
    sent = fake.last
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body == {
        "model": "qwen2.5-coder",
        "max_tokens": 512,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2+2?"},
        ],
    }


async def test_tool_calls_round_trip(fake: FakeOpenAI, make_provider: MakeProvider) -> None:
    provider = make_provider()
    fake.enqueue_tool_calls(
        [
            {"id": "call_ok", "name": "read_file", "arguments": {"path": "README.md"}},
            {"id": "call_bad", "name": "read_file", "arguments": '{"path": "a.txt"'},
        ],
        extra_message_fields={"reasoning": "Read both."},
    )
    conversation = [ChatMessage("user", "Read README.md and a.txt")]

    first = await provider.complete(
        _request(*conversation, tools=(READ_FILE,), tool_choice={"name": "read_file"})
    )

    assert first.finish_reason == "tool_use"
    assert first.content is None
    assert first.tool_calls == (
        ToolCall("call_ok", "read_file", {"path": "README.md"}),
        ToolCall("call_bad", "read_file", {"_raw": '{"path": "a.txt"'}),
    )
    assert fake.last.body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "read_file",
                "description": "Read a file",
                "parameters": dict(READ_FILE.parameters),
            },
        }
    ]
    assert fake.last.body["tool_choice"] == {"type": "function", "function": {"name": "read_file"}}

    # The assistant turn goes back with its extras and the model's own argument strings; the
    # fake refuses, as the real API does, tool results that answer no tool call.
    fake.enqueue_text("The README says hello; a.txt could not be read.")
    conversation += [
        ChatMessage("assistant", None, tool_calls=first.tool_calls, extras=first.extras),
        ChatMessage("tool", "hello", tool_call_id="call_ok"),
        ChatMessage("tool", "error: arguments are not JSON", tool_call_id="call_bad"),
    ]
    second = await provider.complete(_request(*conversation, tools=(READ_FILE,)))

    assert second.content == "The README says hello; a.txt could not be read."
    assert fake.last.body["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "reasoning": "Read both.",
            "tool_calls": [
                {
                    "id": "call_ok",
                    "type": "function",
                    "function": {"name": "read_file", "arguments": '{"path": "README.md"}'},
                },
                {
                    "id": "call_bad",
                    "type": "function",
                    "function": {"name": "read_file", "arguments": '{"path": "a.txt"'},
                },
            ],
        },
        {"role": "tool", "content": "hello", "tool_call_id": "call_ok"},
        {"role": "tool", "content": "error: arguments are not JSON", "tool_call_id": "call_bad"},
    ]


async def test_server_without_a_key(make_provider: MakeProvider) -> None:
    async with FakeOpenAI(api_key=None) as local:
        local.enqueue_text("hi from a local model", usage=False)
        provider = OpenAIProvider(None, base_url=local.base_url, timeout_s=10, max_retries=0)
        try:
            result = await provider.complete(_request(ChatMessage("user", "x" * 40)))
        finally:
            await provider.aclose()
    assert result.content == "hi from a local model"
    assert (result.input_tokens, result.output_tokens) == (10, 5)
    assert local.last.headers["authorization"] == "Bearer unused"


async def test_provider_500_is_a_provider_error_without_the_key(
    fake: FakeOpenAI, make_provider: MakeProvider
) -> None:
    fake.enqueue_error(500, f"The server had an error processing key {KEY}")

    with pytest.raises(ProviderError) as caught:
        await make_provider().complete(_request(ChatMessage("user", "hi")))

    message = caught.value.message
    assert message.startswith(
        f"openai-compatible ({fake.base_url}): HTTP 500 server_error: The server had an error"
    )
    assert KEY not in message
    assert "key ***" in message
    assert caught.value.__cause__ is None


async def test_wrong_key(fake: FakeOpenAI, make_provider: MakeProvider) -> None:
    wrong = "sk-wrong-0000000000000000"
    with pytest.raises(ProviderError) as caught:
        await make_provider(key=wrong).complete(_request(ChatMessage("user", "hi")))
    assert "HTTP 401 invalid_request_error: invalid_api_key: Incorrect API key" in (
        caught.value.message
    )
    assert wrong not in caught.value.message


async def test_timeout_is_a_provider_error(fake: FakeOpenAI, make_provider: MakeProvider) -> None:
    fake.enqueue_stall()

    with pytest.raises(ProviderError) as caught:
        await make_provider(timeout_s=0.3).complete(_request(ChatMessage("user", "hi")))

    assert caught.value.message == (
        f"openai-compatible ({fake.base_url}): request timed out after 0.3 s (1 attempt)"
    )


async def test_retries_then_succeeds(fake: FakeOpenAI, make_provider: MakeProvider) -> None:
    fake.enqueue_error(503, "busy", retry_after_ms=1)
    fake.enqueue_text("finally")

    result = await make_provider(max_retries=1).complete(_request(ChatMessage("user", "hi")))

    assert result.content == "finally"
    assert len(fake.requests) == 2
