"""The Anthropic fake speaks the real protocol: the official SDK's own parsers accept its JSON
and its server-sent events, and it refuses what the real API refuses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import anthropic
import pytest

from tests.fakes.fake_anthropic import FakeAnthropic

KEY = "sk-ant-fake-protocol-test"
MODEL = "claude-sonnet-5-5"


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key=KEY) as server:
        yield server


@pytest.fixture
async def client(fake: FakeAnthropic) -> AsyncIterator[anthropic.AsyncAnthropic]:
    sdk = anthropic.AsyncAnthropic(api_key=KEY, base_url=fake.url, max_retries=0, timeout=10)
    yield sdk
    await sdk.close()


async def _sse(fake: FakeAnthropic, body: dict[str, object]) -> list[tuple[str, dict[str, object]]]:
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fake.url}/v1/messages", json=body, headers=headers) as response,
    ):
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = await response.text()
    events = []
    for chunk in text.strip().split("\n\n"):
        event_line, data_line = chunk.split("\n")
        events.append((event_line.removeprefix("event: "), json.loads(data_line[len("data: ") :])))
    return events


async def test_sdk_accumulates_the_streamed_answer(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.enqueue_message(
        [
            {"type": "text", "text": "Let me run a rather long command for you."},
            {
                "type": "tool_use",
                "id": "toolu_s",
                "name": "Bash",
                "input": {"command": "ls -la /workspace", "description": "List files"},
            },
        ],
        stop_reason="tool_use",
        input_tokens=42,
        output_tokens=17,
    )

    async with client.messages.stream(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "list"}]
    ) as stream:
        message = await stream.get_final_message()

    assert fake.last.body["stream"] is True
    assert [block.type for block in message.content] == ["text", "tool_use"]
    assert message.content[0].type == "text"
    assert message.content[0].text == "Let me run a rather long command for you."
    assert message.content[1].type == "tool_use"
    assert message.content[1].input == {"command": "ls -la /workspace", "description": "List files"}
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (42, 17)


async def test_event_sequence_is_the_real_one(fake: FakeAnthropic) -> None:
    fake.enqueue_text("Hello there")

    events = await _sse(
        fake,
        {
            "model": MODEL,
            "max_tokens": 10,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )

    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(data["type"] == name for name, data in events)
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert "".join(d["text"] for d in deltas) == "Hello there"  # type: ignore[index]
    assert events[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}


async def test_held_stream_sends_its_first_event_before_the_rest(fake: FakeAnthropic) -> None:
    fake.enqueue_text("slow answer", hold_stream=True)
    body = {
        "model": MODEL,
        "max_tokens": 10,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}

    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fake.url}/v1/messages", json=body, headers=headers) as response,
    ):
        first = await response.content.readuntil(b"\n\n")
        assert first.startswith(b"event: message_start\n")
        fake.release_stalled()
        rest = await response.content.read()
    assert rest.rstrip().endswith(b'data: {"type": "message_stop"}')


async def test_wrong_key_gets_the_real_401(fake: FakeAnthropic) -> None:
    sdk = anthropic.AsyncAnthropic(api_key="wrong", base_url=fake.url, max_retries=0)
    try:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await sdk.messages.create(
                model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
    finally:
        await sdk.close()
    assert caught.value.status_code == 401
    assert caught.value.body["type"] == "error"  # type: ignore[index]
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        (
            [
                {"role": "user", "content": "go"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "x", "input": {}}],
                },
                {"role": "user", "content": "ignored the tool"},
            ],
            "`tool_use` ids were found without `tool_result` blocks immediately after: t1",
        ),
        (
            [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "nope"}]}],
            "unexpected `tool_use_id` found in `tool_result` blocks: nope",
        ),
        ([{"role": "user", "content": [{"type": "text", "text": ""}]}], "must be non-empty"),
        ([{"role": "system", "content": "x"}], "Input should be 'user' or 'assistant'"),
    ],
)
async def test_refuses_what_the_real_api_refuses(
    client: anthropic.AsyncAnthropic, messages: list[dict[str, object]], error: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(model=MODEL, max_tokens=10, messages=messages)  # type: ignore[arg-type]
    assert error in str(caught.value)


async def test_unscripted_call_fails_loudly(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.InternalServerError, match="no reply queued"):
        await client.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )


async def test_wait_for_requests(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    stall = fake.enqueue_stall(then=None)
    fake.enqueue_text("after the stall")
    call = asyncio.create_task(
        client.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    )
    await fake.wait_for_requests(1)
    assert not call.done()
    stall.released.set()
    message = await call
    assert message.content[0].type == "text"
    assert message.content[0].text == "after the stall"
