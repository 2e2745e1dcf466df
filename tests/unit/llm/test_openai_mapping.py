"""Mapping between the worker API's messages and OpenAI Chat Completions, without network."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.errors import InvalidArgument, ProviderError
from orchestrator.llm.openai_provider import (
    build_request,
    decode_arguments,
    encode_arguments,
    map_message,
    map_tool,
    map_tool_choice,
    parse_response,
)
from orchestrator.llm.types import ChatMessage, CompletionRequest, ToolCall, ToolSpec


def _completion(
    message: dict[str, Any], finish_reason: str = "stop", usage: dict[str, int] | None = None
) -> dict[str, Any]:
    """The JSON document of a Chat Completions answer, as the provider decodes it."""
    document: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", **message},
                "finish_reason": finish_reason,
            }
        ],
    }
    if usage is not None:
        document["usage"] = {**usage, "total_tokens": sum(usage.values())}
    return document


class TestMessages:
    def test_plain_roles(self) -> None:
        assert map_message(ChatMessage("system", "Be brief.")) == {
            "role": "system",
            "content": "Be brief.",
        }
        assert map_message(ChatMessage("user", "hi")) == {"role": "user", "content": "hi"}

    def test_assistant_tool_calls_carry_json_string_arguments(self) -> None:
        message = ChatMessage(
            "assistant", None, tool_calls=(ToolCall("call_1", "shell", {"command": "ls -l"}),)
        )
        assert map_message(message) == {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "shell", "arguments": '{"command": "ls -l"}'},
                }
            ],
        }

    def test_tool_result(self) -> None:
        assert map_message(ChatMessage("tool", None, tool_call_id="call_1")) == {
            "role": "tool",
            "content": "",
            "tool_call_id": "call_1",
        }

    def test_tool_result_without_id_is_invalid(self) -> None:
        with pytest.raises(InvalidArgument, match=r"messages\[3\]"):
            map_message(ChatMessage("tool", "x"), 3)

    def test_extras_are_sent_untouched_but_cannot_override_the_message(self) -> None:
        message = ChatMessage(
            "assistant",
            "Done.",
            extras={"reasoning_content": "I thought.", "role": "system", "name": "bot"},
        )
        assert map_message(message) == {
            "role": "assistant",
            "content": "Done.",
            "reasoning_content": "I thought.",
            "name": "bot",
        }


class TestArguments:
    def test_round_trip(self) -> None:
        assert decode_arguments(encode_arguments({"a": [1, "é"]})) == {"a": [1, "é"]}

    @pytest.mark.parametrize("raw", ['{"command": "ls"', "ls -l", "[1, 2]", '"text"'])
    def test_anything_but_a_json_object_is_kept_raw(self, raw: str) -> None:
        assert decode_arguments(raw) == {"_raw": raw}

    def test_raw_arguments_are_sent_back_verbatim(self) -> None:
        assert encode_arguments({"_raw": '{"command": "ls"'}) == '{"command": "ls"'

    @pytest.mark.parametrize("raw", [None, "", "  "])
    def test_empty_arguments_are_an_empty_object(self, raw: str | None) -> None:
        assert decode_arguments(raw) == {}


class TestTools:
    def test_tool_spec(self) -> None:
        schema = {"type": "object", "properties": {"path": {"type": "string"}}}
        assert map_tool(ToolSpec("read_file", "Read a file", schema)) == {
            "type": "function",
            "function": {"name": "read_file", "description": "Read a file", "parameters": schema},
        }

    @pytest.mark.parametrize(
        ("choice", "expected"),
        [
            ("auto", "auto"),
            ("none", "none"),
            ("required", "required"),
            ({"name": "shell"}, {"type": "function", "function": {"name": "shell"}}),
            (
                {"type": "function", "function": {"name": "shell"}},
                {"type": "function", "function": {"name": "shell"}},
            ),
            (None, None),
        ],
    )
    def test_tool_choice(self, choice: Any, expected: Any) -> None:
        assert map_tool_choice(choice) == expected

    def test_unknown_tool_choice_is_invalid(self) -> None:
        with pytest.raises(InvalidArgument):
            map_tool_choice("sometimes")


class TestBuildRequest:
    def _request(self, **fields: Any) -> CompletionRequest:
        return CompletionRequest(
            messages=(ChatMessage("user", "hi"),), model="m", max_tokens=64, **fields
        )

    def test_compatible_servers_get_max_tokens(self) -> None:
        params = build_request(self._request(), official_api=False)
        assert params == {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 64,
        }

    def test_openai_itself_gets_max_completion_tokens(self) -> None:
        params = build_request(self._request(), official_api=True)
        assert params["max_completion_tokens"] == 64
        assert "max_tokens" not in params

    def test_optional_parameters(self) -> None:
        params = build_request(
            self._request(
                temperature=0.0,
                stop_sequences=("END",),
                tools=(ToolSpec("shell", "Run", {"type": "object"}),),
                tool_choice={"name": "shell"},
            ),
            official_api=False,
        )
        assert params["temperature"] == 0.0
        assert params["stop"] == ["END"]
        assert params["tools"][0]["function"]["name"] == "shell"
        assert params["tool_choice"] == {"type": "function", "function": {"name": "shell"}}

    def test_tool_choice_without_tools_is_left_out(self) -> None:
        params = build_request(self._request(tool_choice="auto"), official_api=False)
        assert "tool_choice" not in params


class TestParseResponse:
    def test_text(self) -> None:
        result = parse_response(
            _completion(
                {"content": "2 + 2 = 4"}, usage={"prompt_tokens": 15, "completion_tokens": 8}
            )
        )
        assert result.content == "2 + 2 = 4"
        assert result.finish_reason == "stop"
        assert (result.input_tokens, result.output_tokens) == (15, 8)
        assert result.extras == {}

    def test_tool_calls(self) -> None:
        result = parse_response(
            _completion(
                {
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "shell", "arguments": '{"command": "ls"}'},
                        },
                        {
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "shell", "arguments": "rm -rf"},
                        },
                    ],
                },
                finish_reason="tool_calls",
                usage={"prompt_tokens": 1, "completion_tokens": 1},
            )
        )
        assert result.content is None
        assert result.finish_reason == "tool_use"
        assert result.tool_calls == (
            ToolCall("call_a", "shell", {"command": "ls"}),
            ToolCall("call_b", "shell", {"_raw": "rm -rf"}),
        )

    @pytest.mark.parametrize(
        ("reason", "finish"),
        [
            ("stop", "stop"),
            ("length", "length"),
            ("tool_calls", "tool_use"),
            ("function_call", "tool_use"),
            ("content_filter", "content_filter"),
        ],
    )
    def test_finish_reasons(self, reason: str, finish: str) -> None:
        result = parse_response(_completion({"content": "x"}, finish_reason=reason))
        assert result.finish_reason == finish

    def test_reasoning_fields_are_passed_through_as_extras(self) -> None:
        result = parse_response(
            _completion({"content": "4", "reasoning_content": "2 and 2 make 4", "reasoning": "r"})
        )
        assert result.extras == {"reasoning_content": "2 and 2 make 4", "reasoning": "r"}

    def test_refusal_without_text_is_reported_as_content_filter(self) -> None:
        result = parse_response(_completion({"content": None, "refusal": "I can't help."}))
        assert result.content == "I can't help."
        assert result.finish_reason == "content_filter"

    def test_missing_usage_is_estimated(self) -> None:
        request = CompletionRequest(
            messages=(ChatMessage("user", "y" * 80),), model="m", max_tokens=5
        )
        result = parse_response(_completion({"content": "x" * 40}), request)
        assert (result.input_tokens, result.output_tokens) == (20, 10)

    def test_no_choices_is_a_provider_error(self) -> None:
        completion = _completion({"content": "x"})
        with pytest.raises(ProviderError, match="no choices"):
            parse_response({**completion, "choices": []})
