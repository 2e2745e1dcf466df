"""Pure parts of the orchestrator's side of Claude Code mode: the model map and allowlist, the
request body checks, token metering from SSE, the settings. What the CLI is given (its route, its
key) is in tests/unit/core/test_job_info.py."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from orchestrator.domain.jobs import JobLimits
from orchestrator.errors import ConfigError, InvalidArgument
from orchestrator.http_api.anthropic_route import (
    ModelNotAllowed,
    UsageMeter,
    allowed_claude_models,
    prepare_request_body,
    resolve_claude_model,
)
from orchestrator.settings import Settings
from tests.fakes.fake_anthropic import MessageReply, _message_document, sse_events

ALIASES = {
    "sonnet": "claude-sonnet-5-5",
    "opus": "claude-opus-5-5",
    "haiku": "claude-haiku-5-5",
}
LIMITS = JobLimits(
    max_iterations=50,
    timeout_seconds=3600,
    memory_mb=4096,
    llm_token_budget=0,
    llm_call_budget=0,
    llm_max_tokens_per_call=8192,
    claude_max_turns=50,
    claude_model="sonnet",
)

# -- models ----------------------------------------------------------------------------------


def test_a_job_may_use_its_model_the_small_model_and_the_allowlist() -> None:
    assert allowed_claude_models("sonnet", ALIASES, ()) == [
        "claude-sonnet-5-5",
        "claude-haiku-5-5",
    ]
    assert allowed_claude_models("claude-x-1", ALIASES, ("opus", "gpt-4o")) == [
        "claude-x-1",
        "claude-haiku-5-5",
        "claude-opus-5-5",
        "gpt-4o",
    ]


def test_aliases_are_mapped_and_other_models_refused() -> None:
    assert resolve_claude_model("sonnet", "sonnet", ALIASES, ()) == "claude-sonnet-5-5"
    assert resolve_claude_model("claude-sonnet-5-5", "sonnet", ALIASES, ()) == "claude-sonnet-5-5"
    assert resolve_claude_model("haiku", "sonnet", ALIASES, ()) == "claude-haiku-5-5"
    with pytest.raises(ModelNotAllowed, match=r"'claude-opus-5-5' is not allowed for this job"):
        resolve_claude_model("opus", "sonnet", ALIASES, ())
    assert resolve_claude_model("opus", "sonnet", ALIASES, ("opus",)) == "claude-opus-5-5"


# -- request bodies --------------------------------------------------------------------------


def _body(**fields: Any) -> bytes:
    body = {"model": "claude-sonnet-5-5", "max_tokens": 4096, "messages": [], "stream": True}
    body.update(fields)
    return json.dumps(body).encode()


def test_a_body_within_policy_goes_out_byte_for_byte() -> None:
    raw = _body()
    assert prepare_request_body(raw, limits=LIMITS, aliases=ALIASES, allowlist=()) == (
        raw,
        "claude-sonnet-5-5",
    )


def test_an_alias_is_rewritten_and_max_tokens_clamped_with_the_thinking_budget() -> None:
    raw = _body(
        model="sonnet", max_tokens=128000, thinking={"type": "enabled", "budget_tokens": 31999}
    )
    out, model = prepare_request_body(raw, limits=LIMITS, aliases=ALIASES, allowlist=())
    body = json.loads(out)
    assert model == body["model"] == "claude-sonnet-5-5"
    assert body["max_tokens"] == 8192
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 8191}
    # Adaptive thinking (what the CLI sends) has no budget to fit.
    out, _ = prepare_request_body(
        _body(max_tokens=128000, thinking={"type": "adaptive"}),
        limits=LIMITS,
        aliases=ALIASES,
        allowlist=(),
    )
    assert json.loads(out)["thinking"] == {"type": "adaptive"}


def test_bad_bodies_and_refused_models() -> None:
    for raw, match in (
        (b"not json", "not valid JSON"),
        (b"[1]", "JSON object"),
        (json.dumps({"max_tokens": 1}).encode(), "model"),
    ):
        with pytest.raises(InvalidArgument, match=match):
            prepare_request_body(raw, limits=LIMITS, aliases=ALIASES, allowlist=())
    with pytest.raises(ModelNotAllowed):
        prepare_request_body(
            _body(model="claude-opus-5-5"), limits=LIMITS, aliases=ALIASES, allowlist=()
        )


def _prepare(raw: bytes) -> tuple[bytes, str]:
    return prepare_request_body(raw, limits=LIMITS, aliases=ALIASES, allowlist=())


def test_a_duplicate_key_is_refused_so_nothing_but_what_was_checked_goes_out() -> None:
    # The check would read one model and the upstream another.
    raw = b'{"model": "claude-opus-5-5", "max_tokens": 10, "model": "claude-sonnet-5-5"}'
    with pytest.raises(InvalidArgument, match="'model' appears twice"):
        _prepare(raw)
    with pytest.raises(InvalidArgument, match="'type' appears twice"):
        _prepare(
            _body(messages=[]).replace(b'"messages": []', b'"messages": [{"type": 1, "type": 2}]')
        )


def test_max_tokens_as_a_whole_float_is_clamped_and_sent_as_an_integer() -> None:
    out, _ = _prepare(_body(max_tokens=64000.0))
    assert b'"max_tokens":8192' in out
    assert json.loads(out)["max_tokens"] == 8192
    # A whole float under the cap is sent as the integer too (the bytes change, so the checked
    # body is what goes out).
    out, _ = _prepare(_body(max_tokens=512.0))
    assert b'"max_tokens":512,' in out
    out, _ = _prepare(_body(thinking={"type": "enabled", "budget_tokens": 2048.0}))
    assert json.loads(out)["thinking"]["budget_tokens"] == 2048
    assert b"2048.0" not in out


@pytest.mark.parametrize("value", [64000.5, "64000", True, None, [1], {"n": 1}, -5, float("inf")])
def test_max_tokens_that_is_not_a_whole_number_is_refused(value: Any) -> None:
    raw = json.dumps({"model": "claude-sonnet-5-5", "max_tokens": value, "messages": []})
    with pytest.raises(InvalidArgument, match="max_tokens"):
        _prepare(raw.replace("Infinity", "1e400").encode())


def test_a_fractional_thinking_budget_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"thinking\.budget_tokens"):
        _prepare(_body(thinking={"type": "enabled", "budget_tokens": 1024.5}))


def test_a_body_nested_past_the_bound_is_refused_before_any_recursion() -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    raw = b'{"model": "claude-sonnet-5-5", "messages": ' + deep + b"}"
    with pytest.raises(InvalidArgument, match="nested deeper than 64"):
        _prepare(raw)
    within = b"[" * 60 + b"]" * 60
    assert _prepare(b'{"model": "claude-sonnet-5-5", "messages": ' + within + b"}")[1]


# -- metering --------------------------------------------------------------------------------


def _sse_bytes(reply: MessageReply) -> bytes:
    message = _message_document(reply, "claude-sonnet-5-5")
    return b"".join(
        f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
        for name, data in sse_events(reply, message)
    )


@pytest.mark.parametrize("seed", range(5))
def test_stream_usage_is_read_across_any_chunking(seed: int) -> None:
    reply = MessageReply(
        content=({"type": "text", "text": "hello " * 50},),
        input_tokens=120,
        output_tokens=37,
        usage_extra={"cache_read_input_tokens": 1000, "cache_creation_input_tokens": 5},
    )
    data = _sse_bytes(reply)
    rng = random.Random(seed)
    meter = UsageMeter(streaming=True)
    position = 0
    while position < len(data):
        size = rng.randint(1, 64)
        meter.feed(data[position : position + size])
        position += size
    meter.finish()
    assert meter.input_tokens == 120 + 1000 + 5
    assert meter.output_tokens == 37


def test_json_usage_and_garbage() -> None:
    meter = UsageMeter(streaming=False)
    document = _message_document(MessageReply(content=(), input_tokens=7, output_tokens=3), "m")
    raw = json.dumps(document).encode()
    meter.feed(raw[:10])
    meter.feed(raw[10:])
    meter.finish()
    assert (meter.input_tokens, meter.output_tokens) == (7, 3)
    broken = UsageMeter(streaming=True)
    broken.feed(b"data: {not json message_start\n\ndata: " + b"x" * (2 << 20))
    broken.feed(b"\ndata: [1]\n")
    broken.finish()
    assert (broken.input_tokens, broken.output_tokens) == (0, 0)


# -- settings and the container --------------------------------------------------------------


def test_model_map_settings_merge_over_the_defaults() -> None:
    settings = Settings.from_env({"CLAUDE_CODE_MODEL_MAP": "sonnet=claude-sonnet-4-5, fable=x-1"})
    assert settings.claude_model_aliases == {
        "sonnet": "claude-sonnet-4-5",
        "opus": "claude-opus-5-5",
        "haiku": "claude-haiku-5-5",
        "fable": "x-1",
    }
    assert Settings.from_env({}).claude_model_aliases == ALIASES
    assert not Settings.from_env({}).claude_key_in_container
    for bad in ("sonnet", "=x", "sonnet=bad model", "9x=y"):
        with pytest.raises(ConfigError, match="CLAUDE_CODE_MODEL_MAP"):
            Settings.from_env({"CLAUDE_CODE_MODEL_MAP": bad})
    with pytest.raises(ConfigError, match="CLAUDE_CODE_KEY_IN_CONTAINER"):
        Settings.from_env({"CLAUDE_CODE_KEY_IN_CONTAINER": "maybe"})
