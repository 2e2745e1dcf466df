"""The scripted provider: loading and validating a script, and choosing the turn to replay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.llm.scripted_provider import (
    EXHAUSTED_CONTENT,
    ScriptedProvider,
    ScriptedTurn,
    load_script,
)
from orchestrator.llm.types import ChatMessage, CompletionRequest, ToolCall


def _request(*messages: ChatMessage) -> CompletionRequest:
    return CompletionRequest(messages=messages, model="scripted", max_tokens=100)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


class TestLoad:
    def test_yaml(self, tmp_path: Path) -> None:
        path = _write(
            tmp_path,
            "s.yaml",
            """
- content: Looking.
  tool_calls:
    - {name: shell, arguments: {command: ls}, id: call_x}
- content: Done.
  input_tokens: 3
  output_tokens: 4
""",
        )
        assert load_script(path) == (
            ScriptedTurn("Looking.", (ToolCall("call_x", "shell", {"command": "ls"}),), "tool_use"),
            ScriptedTurn("Done.", (), "stop", 3, 4),
        )

    def test_json(self, tmp_path: Path) -> None:
        path = _write(
            tmp_path, "s.json", json.dumps([{"content": "hi", "finish_reason": "length"}])
        )
        assert load_script(path) == (ScriptedTurn("hi", finish_reason="length"),)

    @pytest.mark.parametrize(
        ("text", "error"),
        [
            ("{content: hi}", "must be a list of turns"),
            ("[]", "has no turns"),
            ("- content: hi\n- 42", "turn 2: must be a mapping"),
            ("- {}", "turn 1: needs content or tool_calls"),
            ("- {content: hi, finsh_reason: stop}", "turn 1: unknown key(s) finsh_reason"),
            ("- {content: [1]}", "turn 1: content must be a string"),
            ("- {content: hi, finish_reason: done}", "turn 1: finish_reason must be one of"),
            ("- {content: hi, output_tokens: -1}", "turn 1: output_tokens must be a non-negative"),
            ("- {content: hi, input_tokens: true}", "turn 1: input_tokens must be a non-negative"),
            ("- {tool_calls: {name: x}}", "turn 1: tool_calls must be a list"),
            ("- {tool_calls: [{arguments: {}}]}", "turn 1: tool_calls[0]: name must be"),
            ("- {tool_calls: [{name: x, arguments: ls}]}", "tool_calls[0]: arguments must be a"),
            ("- {tool_calls: [{name: x, args: {}}]}", "tool_calls[0]: unknown key(s) args"),
            ("- [unclosed", "not valid YAML"),
        ],
    )
    def test_invalid_scripts_name_the_variable_and_the_turn(
        self, tmp_path: Path, text: str, error: str
    ) -> None:
        path = _write(tmp_path, "bad.yaml", text)
        with pytest.raises(ConfigError) as caught:
            load_script(path)
        assert str(caught.value).startswith(f"LLM_SCRIPT={path}: ")
        assert error in str(caught.value)

    def test_unknown_extension(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=r"\.yaml, \.yml or \.json"):
            load_script(_write(tmp_path, "s.txt", "[]"))

    def test_invalid_json(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="not valid JSON"):
            load_script(_write(tmp_path, "s.json", "[{"))

    def test_example_scripts_are_valid(self) -> None:
        scripts = sorted((Path(__file__).parents[2] / "fixtures" / "scripts").glob("*.yaml"))
        assert scripts
        for path in scripts:
            assert load_script(path)


class TestReplay:
    provider = ScriptedProvider(
        [
            ScriptedTurn("first", (ToolCall("", "shell", {"command": "ls"}),), "tool_use"),
            ScriptedTurn("second", input_tokens=7, output_tokens=9),
        ],
        source="demo.yaml",
    )

    def test_name_says_what_it_is(self) -> None:
        assert self.provider.name == "scripted (replays demo.yaml)"

    async def test_turn_is_the_number_of_assistant_messages(self) -> None:
        first = await self.provider.complete(_request(ChatMessage("user", "go")))
        assert first.content == "first"
        assert first.finish_reason == "tool_use"
        assert first.tool_calls == (ToolCall("call_t1_0", "shell", {"command": "ls"}),)

        second = await self.provider.complete(
            _request(
                ChatMessage("system", "sys"),
                ChatMessage("user", "go"),
                ChatMessage("assistant", "first", tool_calls=first.tool_calls),
                ChatMessage("tool", "a b c", tool_call_id="call_t1_0"),
            )
        )
        assert (second.content, second.input_tokens, second.output_tokens) == ("second", 7, 9)

    async def test_same_conversation_gets_the_same_answer(self) -> None:
        request = _request(ChatMessage("user", "go"))
        assert await self.provider.complete(request) == await self.provider.complete(request)

    async def test_past_the_end_the_script_is_exhausted(self) -> None:
        result = await self.provider.complete(
            _request(ChatMessage("assistant", "a"), ChatMessage("assistant", "b"))
        )
        assert result.content == EXHAUSTED_CONTENT
        assert result.finish_reason == "stop"
        assert result.tool_calls == ()

    async def test_tokens_default_to_a_length_estimate(self) -> None:
        result = await self.provider.complete(_request(ChatMessage("user", "x" * 400)))
        assert result.input_tokens == 100
        assert result.output_tokens == len('first{"command": "ls"}') // 4
