"""The OpenAI routes' pure parts: what goes upstream (model, caps, the usage option), how an
answer's usage and text are read, the stream cut's event, and the shared client's retry rules."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator.errors import InvalidArgument, ModelNotAllowed
from orchestrator.http_api.openai_body import (
    CHAT,
    CHAT_COMPAT,
    RESPONSES,
    parse_openai_request,
    upstream_body,
)
from orchestrator.http_api.openai_meter import OpenAIMeter
from orchestrator.http_api.sse import SseSplitter, encode_event, event_fields
from orchestrator.llm.http_upstream import backoff_s, should_retry

ALLOW = {"default_model": "gpt-4o-mini", "allowlist": ("gpt-4o",)}


def parse(body: Any, api: Any = CHAT_COMPAT, **kwargs: Any) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_openai_request(raw, api, **{**ALLOW, **kwargs})


def test_a_body_within_its_grant_goes_upstream_as_its_own_bytes() -> None:
    raw = b'{"model":  "gpt-4o", "messages": [], "max_tokens": 50}'
    request = parse(raw)
    assert upstream_body(request, granted=50) is raw
    assert upstream_body(request, granted=80) is raw


def test_caps_are_lowered_to_the_grant_and_added_when_missing() -> None:
    both = parse({"messages": [], "max_tokens": 900, "max_completion_tokens": 500.0})
    assert both.max_tokens == 500
    sent = json.loads(upstream_body(both, granted=400))
    assert (sent["max_tokens"], sent["max_completion_tokens"]) == (400, 400)
    assert sent["model"] == "gpt-4o-mini"  # the default, filled in
    float_within = json.loads(upstream_body(parse({"max_tokens": 64.0}), granted=100))
    assert float_within["max_tokens"] == 64
    assert isinstance(float_within["max_tokens"], int)
    # Without a cap the first field of the API is added: OpenAI's own for OpenAI itself.
    assert json.loads(upstream_body(parse({}, CHAT), 77))["max_completion_tokens"] == 77
    assert json.loads(upstream_body(parse({}, CHAT_COMPAT), 77))["max_tokens"] == 77
    assert json.loads(upstream_body(parse({"input": "x"}, RESPONSES), 77)) == {
        "input": "x",
        "model": "gpt-4o-mini",
        "max_output_tokens": 77,
    }


def test_a_chat_stream_is_made_to_report_its_usage() -> None:
    request = parse({"model": "gpt-4o", "stream": True, "stream_options": {"x": 1}})
    assert not request.client_wants_usage
    sent = json.loads(upstream_body(request, granted=10))
    assert sent["stream_options"] == {"x": 1, "include_usage": True}
    responses = parse({"model": "gpt-4o", "stream": True, "input": "x"}, RESPONSES)
    assert "stream_options" not in json.loads(upstream_body(responses, granted=10))


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'{"model": null}',
        b'{"model": 4}',
        b'{"max_tokens": "many"}',
        b'{"max_tokens": 0}',
        b'{"max_tokens": 1.5}',
        b'{"max_tokens": true}',
        b'{"a": 1, "a": 2}',
    ],
)
def test_malformed_bodies_are_invalid(body: bytes) -> None:
    with pytest.raises(InvalidArgument):
        parse(body)


def test_a_model_outside_the_allowlist_is_refused() -> None:
    with pytest.raises(ModelNotAllowed):
        parse({"model": "gpt-5-ultra"})


def _chat_event(document: dict[str, Any]) -> bytes:
    return encode_event(document)


def test_the_meter_reads_chat_stream_usage_and_hides_the_chunk_nobody_asked_for() -> None:
    meter = OpenAIMeter(CHAT, client_wants_usage=False)
    text = _chat_event({"choices": [{"delta": {"content": "hello"}}]})
    call = _chat_event(
        {"choices": [{"delta": {"tool_calls": [{"function": {"arguments": '{"a":1}'}}]}}]}
    )
    usage = _chat_event({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}})
    assert meter.read_event(text)
    assert meter.read_event(call)
    assert not meter.read_event(usage)
    assert meter.read_event(b"data: [DONE]\n\n")
    assert (meter.input_tokens, meter.output_tokens, meter.reported) == (7, 3, True)
    assert meter.text_chars == len("hello") + len('{"a":1}')
    assert OpenAIMeter(CHAT, client_wants_usage=True).read_event(usage)


def test_the_meter_reads_responses_usage_from_the_completed_event() -> None:
    meter = OpenAIMeter(RESPONSES, client_wants_usage=False)
    delta = encode_event(
        {"type": "response.output_text.delta", "delta": "abc", "sequence_number": 4},
        "response.output_text.delta",
    )
    done = encode_event(
        {
            "type": "response.completed",
            "sequence_number": 5,
            "response": {"usage": {"input_tokens": 20, "output_tokens": 2}},
        },
        "response.completed",
    )
    assert meter.read_event(delta)
    assert meter.read_event(done)
    assert (meter.input_tokens, meter.output_tokens, meter.text_chars) == (20, 2, 3)
    name, payload = event_fields(meter.cut_event("cut", "token_budget_exhausted"))
    assert name == "error"
    assert json.loads(payload) == {
        "type": "error",
        "code": "token_budget_exhausted",
        "message": "cut",
        "param": None,
        "sequence_number": 6,
    }


def test_a_stream_is_past_its_grant_by_its_own_count_or_its_text() -> None:
    meter = OpenAIMeter(CHAT, client_wants_usage=False)
    meter.read_event(_chat_event({"choices": [{"delta": {"content": "x" * 600}}]}))
    assert not meter.past(100)
    meter.read_event(_chat_event({"choices": [{"delta": {"content": "x"}}]}))
    assert meter.past(100)  # 601 characters for 100 tokens
    counted = OpenAIMeter(CHAT, client_wants_usage=False)
    counted.read_event(_chat_event({"choices": [], "usage": {"completion_tokens": 101}}))
    assert counted.past(100)
    name, payload = event_fields(meter.cut_event("cut", "token_budget_exhausted"))
    assert name == ""
    assert json.loads(payload)["error"]["code"] == "token_budget_exhausted"


def test_the_splitter_yields_whole_events_whatever_the_chunks() -> None:
    stream = b"data: 1\n\nevent: x\r\ndata: 2\r\n\r\ndata: 3\n\n"
    for size in (1, 2, 5, len(stream)):
        splitter = SseSplitter()
        events = [
            e for i in range(0, len(stream), size) for e in splitter.feed(stream[i : i + size])
        ]
        assert events == [b"data: 1\n\n", b"event: x\r\ndata: 2\r\n\r\n", b"data: 3\n\n"]
        assert splitter.rest() == b""


def test_retries_follow_the_upstreams_word_then_the_status() -> None:
    assert should_retry(503, {})
    assert should_retry(429, {})
    assert not should_retry(400, {})
    assert not should_retry(503, {"x-should-retry": "false"})
    assert should_retry(400, {"x-should-retry": "true"})
    assert backoff_s(1, {"retry-after-ms": "250"}) == 0.25
    assert backoff_s(1, {"retry-after": "2"}) == 2.0
    # A hint too long (or not a number) is ignored: exponential back-off with jitter instead.
    assert 0.375 <= backoff_s(1, {"retry-after": "3600"}) <= 0.5
    assert 3.0 <= backoff_s(4, None) <= 4.0
    assert backoff_s(30, None) <= 8.0
