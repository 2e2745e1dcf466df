"""Mapping between the worker API's messages and the Anthropic Messages API, without network."""

from __future__ import annotations

from typing import Any

import pytest
from anthropic.types import Message

from orchestrator.errors import InvalidArgument
from orchestrator.llm.anthropic_provider import (
    build_request,
    map_messages,
    map_tool,
    map_tool_choice,
    parse_response,
)
from orchestrator.llm.types import ChatMessage, CompletionRequest, ToolCall, ToolSpec


def _message(content: list[dict[str, Any]], stop_reason: str = "end_turn", **usage: int) -> Message:
    return Message.model_validate(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 7, **usage},
        }
    )


class TestMessages:
    def test_system_messages_become_the_system_parameter(self) -> None:
        system, messages = map_messages(
            [
                ChatMessage("system", "You are careful."),
                ChatMessage("user", "hi"),
                ChatMessage("system", "Answer briefly."),
            ]
        )
        assert system == "You are careful.\n\nAnswer briefly."
        assert messages == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]

    def test_no_system_message_means_no_system_parameter(self) -> None:
        system, _ = map_messages([ChatMessage("user", "hi")])
        assert system is None

    def test_tool_round_trip_merges_consecutive_results_into_one_user_message(self) -> None:
        _, messages = map_messages(
            [
                ChatMessage("user", "list and read"),
                ChatMessage(
                    "assistant",
                    "Looking.",
                    tool_calls=(
                        ToolCall("toolu_1", "list_dir", {"path": "."}),
                        ToolCall("toolu_2", "read_file", {"path": "a.txt"}),
                    ),
                ),
                ChatMessage("tool", "a.txt\nb.txt", tool_call_id="toolu_1"),
                ChatMessage("tool", "hello", tool_call_id="toolu_2"),
                ChatMessage("user", "and now?"),
            ]
        )
        assert messages == [
            {"role": "user", "content": [{"type": "text", "text": "list and read"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Looking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "list_dir",
                        "input": {"path": "."},
                    },
                    {
                        "type": "tool_use",
                        "id": "toolu_2",
                        "name": "read_file",
                        "input": {"path": "a.txt"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.txt\nb.txt"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "hello"},
                    {"type": "text", "text": "and now?"},
                ],
            },
        ]

    def test_empty_text_is_dropped_because_the_api_refuses_it(self) -> None:
        _, messages = map_messages(
            [
                ChatMessage("user", "go"),
                ChatMessage("assistant", None, tool_calls=(ToolCall("t1", "shell", {}),)),
                ChatMessage("tool", "", tool_call_id="t1"),
                ChatMessage("assistant", ""),
            ]
        )
        assert messages[1] == {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "shell", "input": {}}],
        }
        assert messages[2] == {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1"}],
        }
        assert len(messages) == 3

    def test_tool_message_without_id_is_invalid(self) -> None:
        with pytest.raises(InvalidArgument, match=r"messages\[1\].*tool_call_id"):
            map_messages([ChatMessage("user", "x"), ChatMessage("tool", "out")])


class TestTools:
    def test_tool_spec_maps_to_input_schema(self) -> None:
        schema = {"type": "object", "properties": {"command": {"type": "string"}}}
        assert map_tool(ToolSpec("shell", "Run a command", schema)) == {
            "name": "shell",
            "description": "Run a command",
            "input_schema": schema,
        }

    def test_schema_without_type_becomes_an_object_schema(self) -> None:
        assert map_tool(ToolSpec("noop", "", {}))["input_schema"] == {"type": "object"}

    @pytest.mark.parametrize(
        ("choice", "expected"),
        [
            ("auto", {"type": "auto"}),
            ("none", {"type": "none"}),
            ("required", {"type": "any"}),
            ({"name": "shell"}, {"type": "tool", "name": "shell"}),
            (
                {"type": "function", "function": {"name": "shell"}},
                {"type": "tool", "name": "shell"},
            ),
            ({"type": "tool", "name": "shell"}, {"type": "tool", "name": "shell"}),
            (None, None),
        ],
    )
    def test_tool_choice(self, choice: Any, expected: Any) -> None:
        assert map_tool_choice(choice) == expected

    @pytest.mark.parametrize("choice", ["sometimes", {"type": "tool"}, {"foo": 1}])
    def test_unknown_tool_choice_is_invalid(self, choice: Any) -> None:
        with pytest.raises(InvalidArgument, match="tool_choice"):
            map_tool_choice(choice)


class TestBuildRequest:
    def test_full_request(self) -> None:
        params = build_request(
            CompletionRequest(
                messages=(ChatMessage("system", "Be brief."), ChatMessage("user", "hi")),
                model="claude-sonnet-4-5",
                max_tokens=100,
                temperature=0.2,
                stop_sequences=("END",),
                tools=(ToolSpec("shell", "Run", {"type": "object"}),),
                tool_choice="required",
            )
        )
        assert params == {
            "model": "claude-sonnet-4-5",
            "max_tokens": 100,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "temperature": 0.2,
            "stop_sequences": ["END"],
            "tools": [{"name": "shell", "description": "Run", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
        }

    def test_minimal_request_sends_no_optional_parameters(self) -> None:
        params = build_request(
            CompletionRequest(messages=(ChatMessage("user", "hi"),), model="m", max_tokens=5)
        )
        assert set(params) == {"model", "max_tokens", "messages"}

    def test_tool_choice_without_tools_is_left_out(self) -> None:
        # The API refuses tool_choice when no tools are offered.
        params = build_request(
            CompletionRequest(
                messages=(ChatMessage("user", "hi"),), model="m", max_tokens=5, tool_choice="auto"
            )
        )
        assert "tool_choice" not in params


class TestParseResponse:
    def test_text_blocks_are_joined(self) -> None:
        result = parse_response(
            _message([{"type": "text", "text": "2 + 2 "}, {"type": "text", "text": "= 4"}])
        )
        assert result.content == "2 + 2 = 4"
        assert result.tool_calls == ()
        assert result.finish_reason == "stop"
        assert (result.input_tokens, result.output_tokens) == (12, 7)

    def test_tool_use_blocks_become_tool_calls(self) -> None:
        result = parse_response(
            _message(
                [
                    {"type": "text", "text": "Listing."},
                    {
                        "type": "tool_use",
                        "id": "toolu_9",
                        "name": "list_dir",
                        "input": {"path": "."},
                    },
                ],
                stop_reason="tool_use",
            )
        )
        assert result.content == "Listing."
        assert result.tool_calls == (ToolCall("toolu_9", "list_dir", {"path": "."}),)
        assert result.finish_reason == "tool_use"

    def test_no_text_means_none_content(self) -> None:
        result = parse_response(
            _message([{"type": "tool_use", "id": "t", "name": "shell", "input": {}}], "tool_use")
        )
        assert result.content is None

    @pytest.mark.parametrize(
        ("stop_reason", "finish"),
        [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_use"),
            ("refusal", "content_filter"),
            ("model_context_window_exceeded", "length"),
        ],
    )
    def test_stop_reasons(self, stop_reason: str, finish: str) -> None:
        result = parse_response(_message([{"type": "text", "text": "x"}], stop_reason))
        assert result.finish_reason == finish

    def test_cached_input_counts_as_input(self) -> None:
        result = parse_response(
            _message(
                [{"type": "text", "text": "x"}],
                cache_creation_input_tokens=100,
                cache_read_input_tokens=1000,
            )
        )
        assert result.input_tokens == 1112
