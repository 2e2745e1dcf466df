"""The stream-json → job event mapping, on lines as the real Claude Code CLI 2.1.327 prints them
(trimmed of fields the bridge does not read)."""

from __future__ import annotations

import json
from typing import Any

from bridge.stream import BridgeEvent, SessionResult, StreamJsonMapper, tool_output

SID = "d09522c9-6bfa-4ced-ac04-4db0b311f5ef"
TOOL_ID = "toolu_0a27444e7de58aabd362aad6"


def _line(item: dict[str, Any]) -> str:
    return json.dumps(item) + "\n"


INIT = _line(
    {
        "type": "system",
        "subtype": "init",
        "cwd": "/workspace",
        "session_id": SID,
        "tools": ["Bash", "Read", "Write"],
        "model": "claude-sonnet-5-5",
        "permissionMode": "default",
        "apiKeySource": "ANTHROPIC_API_KEY",
        "claude_code_version": "2.1.327",
    }
)
TEXT = _line(
    {
        "type": "assistant",
        "message": {
            "id": "msg_17aa",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-5-5",
            "content": [{"type": "text", "text": "I'll write the file."}],
            "stop_reason": None,
            "usage": {"input_tokens": 10, "output_tokens": 1},
        },
        "parent_tool_use_id": None,
        "session_id": SID,
    }
)
TOOL_USE = _line(
    {
        "type": "assistant",
        "message": {
            "id": "msg_17aa",
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": TOOL_ID,
                    "name": "Bash",
                    "input": {"command": "echo hi > note.txt", "description": "write note"},
                }
            ],
        },
        "session_id": SID,
    }
)
TOOL_RESULT = _line(
    {
        "type": "user",
        "message": {
            "role": "user",
            "content": [
                {
                    "tool_use_id": TOOL_ID,
                    "type": "tool_result",
                    "content": "(Bash completed with no output)",
                    "is_error": False,
                }
            ],
        },
        "session_id": SID,
        "tool_use_result": {"stdout": "", "stderr": "", "interrupted": False},
    }
)
RESULT = _line(
    {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "duration_ms": 364,
        "duration_api_ms": 118,
        "num_turns": 2,
        "result": "Done: note.txt written.",
        "stop_reason": "end_turn",
        "session_id": SID,
        "total_cost_usd": 0.00014,
        "usage": {
            "input_tokens": 20,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 10,
            "server_tool_use": {"web_search_requests": 0},
            "service_tier": "standard",
        },
        "terminal_reason": "completed",
    }
)


def test_a_session_maps_to_events_in_order_with_tool_names_on_results() -> None:
    mapper = StreamJsonMapper()
    events: list[BridgeEvent] = []
    for line in (INIT, TEXT, TOOL_USE, TOOL_RESULT, RESULT):
        events += mapper.feed(line)

    assert [e.event_type for e in events] == ["status", "message", "tool_use", "tool_result"]
    assert "session " + SID in events[0].data["message"]
    assert "claude-sonnet-5-5" in events[0].data["message"]
    assert events[1].data == {"role": "assistant", "content": "I'll write the file."}
    assert events[2].data == {
        "tool_name": "Bash",
        "tool_use_id": TOOL_ID,
        "input": {"command": "echo hi > note.txt", "description": "write note"},
    }
    assert events[3].data == {
        "tool_name": "Bash",
        "tool_use_id": TOOL_ID,
        "output": "(Bash completed with no output)",
        "is_error": False,
    }
    assert mapper.session_id == SID
    assert mapper.result == SessionResult(
        session_id=SID,
        subtype="success",
        is_error=False,
        text="Done: note.txt written.",
        num_turns=2,
        duration_ms=364,
        total_cost_usd=0.00014,
        usage={
            "input_tokens": 20,
            "output_tokens": 10,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
        terminal_reason="completed",
    )
    assert mapper.result.succeeded


def test_a_resumed_session_keeps_tool_names_learned_before() -> None:
    first = StreamJsonMapper()
    first.feed(TOOL_USE)
    second = StreamJsonMapper(first.tool_names)
    [event] = second.feed(TOOL_RESULT)
    assert event.data["tool_name"] == "Bash"


def test_a_result_for_an_unknown_call_still_maps() -> None:
    [event] = StreamJsonMapper().feed(TOOL_RESULT)
    assert event.event_type == "tool_result"
    assert event.data["tool_name"] == "unknown"


def test_non_json_and_odd_lines_become_status_never_errors() -> None:
    mapper = StreamJsonMapper()
    assert mapper.feed("\n") == []
    assert mapper.feed("Warning: something odd\n") == [
        BridgeEvent("status", {"message": "claude: Warning: something odd"})
    ]
    assert mapper.feed("[1, 2]\n") == [BridgeEvent("status", {"message": "claude: [1, 2]"})]
    assert mapper.feed('{"type": "stream_event", "event": {}}\n') == [
        BridgeEvent(
            "status",
            {
                "message": "claude: stream-json line not mapped to an event: type stream_event "
                "(fields: event)"
            },
        )
    ]
    assert mapper.feed('{"type": "assistant", "message": "not an object"}\n') == []
    assert mapper.feed('{"type": "user", "message": {"content": "typed text"}}\n') == []
    assert mapper.feed('{"type": "result"}\n') == []
    assert mapper.result is not None
    assert mapper.result.subtype == "unknown"
    assert not mapper.result.succeeded
    huge = mapper.feed("x" * 10_000)
    assert len(huge[0].data["message"]) < 2100


def test_an_unknown_line_type_becomes_a_status_naming_it_without_its_values() -> None:
    secret = "irc_" + "Q" * 43
    line = _line(
        {
            "type": "rate_limit_event",
            "session_id": SID,
            "uuid": "5c4e",
            "rate_limit_info": {"status": "allowed", "note": secret},
            "payload": "p" * 100_000,
        }
    )
    [event] = StreamJsonMapper().feed(line)
    assert event == BridgeEvent(
        "status",
        {
            "message": "claude: stream-json line not mapped to an event: type rate_limit_event "
            "(fields: rate_limit_info, payload)"
        },
    )


def test_an_unknown_system_subtype_becomes_a_status() -> None:
    [event] = StreamJsonMapper().feed(
        _line({"type": "system", "subtype": "compact_boundary", "compact_metadata": {}})
    )
    assert event.event_type == "status"
    assert event.data["message"] == (
        "claude: stream-json line not mapped to an event: type system, subtype "
        "compact_boundary (fields: compact_metadata)"
    )


def test_an_unknown_line_is_bounded_and_shows_no_odd_names() -> None:
    fields = {f"field_{n}": n for n in range(500)}
    fields["Bearer " + "t" * 40] = 1
    [event] = StreamJsonMapper().feed(_line({"type": {"nested": "x" * 5000}, **fields}))
    message = event.data["message"]
    assert message.startswith("claude: stream-json line not mapped to an event: type ?")
    assert "field_11" in message
    assert "field_12," not in message
    assert "… 489 more" in message
    assert "t" * 40 not in message
    assert len(message) < 400


def test_a_non_json_line_with_a_secret_is_masked() -> None:
    secret = "irc_" + "Z" * 43
    [event] = StreamJsonMapper().feed(f"debug: header Authorization: Bearer {secret}\n")
    assert secret not in event.data["message"]
    assert event.data["message"].startswith("claude: debug: header Authorization: ***")


def test_thinking_and_empty_text_blocks() -> None:
    line = _line(
        {
            "type": "assistant",
            "message": {
                "content": [
                    {"type": "thinking", "thinking": "Let me see.", "signature": "sig"},
                    {"type": "text", "text": "  "},
                    {"type": "redacted_thinking", "data": "..."},
                    {"type": "text", "text": "Answer"},
                ]
            },
        }
    )
    assert StreamJsonMapper().feed(line) == [
        BridgeEvent("reasoning", {"text": "Let me see."}),
        BridgeEvent("message", {"role": "assistant", "content": "Answer"}),
    ]


def test_api_retry_is_a_status() -> None:
    line = _line(
        {
            "type": "system",
            "subtype": "api_retry",
            "attempt": 1,
            "max_retries": 10,
            "retry_delay_ms": 536,
            "error_status": 429,
            "error": "rate_limit",
            "session_id": SID,
        }
    )
    [event] = StreamJsonMapper().feed(line)
    assert event.data == {
        "message": "Anthropic API call failed (HTTP 429, rate_limit); retry 1 of 10 in 0.536 s"
    }


def test_error_results_are_read_with_their_reason() -> None:
    max_turns = SessionResult.from_line(
        {
            "type": "result",
            "subtype": "error_max_turns",
            "is_error": True,
            "num_turns": 2,
            "session_id": SID,
            "terminal_reason": "max_turns",
            "errors": ["Reached maximum number of turns (1)"],
        }
    )
    assert max_turns.errors == ("Reached maximum number of turns (1)",)
    assert not max_turns.succeeded
    # A failed API call: subtype "success" but is_error, with the HTTP status.
    refused = SessionResult.from_line(
        {
            "type": "result",
            "subtype": "success",
            "is_error": True,
            "api_error_status": 429,
            "api_error_type": "rate_limit_error",
            "result": "API Error: Request rejected (429) · LLM token budget exhausted: 30 of 30",
            "terminal_reason": "api_error",
            "num_turns": 1,
        }
    )
    assert not refused.succeeded
    assert refused.api_error_status == 429


def test_tool_output_shapes() -> None:
    assert tool_output("plain") == "plain"
    assert tool_output([{"type": "text", "text": "a"}, {"type": "image"}, "b"]) == "a\n[image]\nb"
    assert tool_output(None) == ""
    assert tool_output({"x": 1}) == '{"x": 1}'
