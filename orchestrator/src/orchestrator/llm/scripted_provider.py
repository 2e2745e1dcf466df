"""A provider that replays a response file: demos, tests and offline runs without a model.

The file (``LLM_SCRIPT``; YAML or JSON, chosen by extension) is a list of turns::

    - content: "Let me look at the project."
      tool_calls:
        - {name: shell, arguments: {command: "ls"}}
    - content: "Done."
      finish_reason: stop      # optional: tool_use when there are tool calls, else stop
      input_tokens: 120        # optional: a len/4 estimate otherwise
      output_tokens: 8

The provider keeps no state: the turn it answers with is the number of assistant messages
already in the request's conversation, so every job replays the script from its start, however
many jobs run at once, and a retried call gets the same answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml

from orchestrator.errors import ConfigError
from orchestrator.llm.types import (
    CompletionRequest,
    CompletionResult,
    FinishReason,
    ToolCall,
)

EXHAUSTED_CONTENT = "(script exhausted)"

_TURN_KEYS = frozenset({"content", "tool_calls", "finish_reason", "input_tokens", "output_tokens"})
_CALL_KEYS = frozenset({"name", "arguments", "id"})
_FINISH_REASONS: tuple[str, ...] = get_args(FinishReason)


@dataclass(frozen=True)
class ScriptedTurn:
    """One scripted answer; token counts left as None are estimated from the text."""

    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason = "stop"
    input_tokens: int | None = None
    output_tokens: int | None = None


def load_script(path: Path) -> tuple[ScriptedTurn, ...]:
    """Reads and validates a script; raises ConfigError naming LLM_SCRIPT and the bad turn."""
    where = f"LLM_SCRIPT={path}"
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise ConfigError(f"{where}: use a .yaml, .yml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read it ({exc})") from exc
    try:
        document: object = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{where}: not valid {suffix[1:].upper()} ({exc})") from exc
    return parse_script(document, where)


def parse_script(document: object, where: str = "LLM_SCRIPT") -> tuple[ScriptedTurn, ...]:
    """Validates a decoded script document (a list of turns)."""
    if not isinstance(document, list):
        raise ConfigError(f"{where}: the script must be a list of turns")
    if not document:
        raise ConfigError(f"{where}: the script has no turns")
    return tuple(
        _parse_turn(raw, f"{where}: turn {number}") for number, raw in enumerate(document, 1)
    )


def _parse_turn(raw: object, where: str) -> ScriptedTurn:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping with content and/or tool_calls")
    unknown = set(raw) - _TURN_KEYS
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
            f"(known: {', '.join(sorted(_TURN_KEYS))})"
        )
    content = raw.get("content")
    if content is not None and not isinstance(content, str):
        raise ConfigError(f"{where}: content must be a string")
    raw_calls = raw.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise ConfigError(f"{where}: tool_calls must be a list")
    calls = tuple(
        _parse_call(call, f"{where}: tool_calls[{index}]") for index, call in enumerate(raw_calls)
    )
    if content is None and not calls:
        raise ConfigError(f"{where}: needs content or tool_calls")
    finish = raw.get("finish_reason", "tool_use" if calls else "stop")
    if finish not in _FINISH_REASONS:
        raise ConfigError(f"{where}: finish_reason must be one of {', '.join(_FINISH_REASONS)}")
    return ScriptedTurn(
        content=content,
        tool_calls=calls,
        finish_reason=finish,
        input_tokens=_token_count(raw, "input_tokens", where),
        output_tokens=_token_count(raw, "output_tokens", where),
    )


def _parse_call(raw: object, where: str) -> ToolCall:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping with name and arguments")
    unknown = set(raw) - _CALL_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: name must be a non-empty string")
    arguments = raw.get("arguments", {})
    if not isinstance(arguments, Mapping):
        raise ConfigError(f"{where}: arguments must be a mapping")
    call_id = raw.get("id")
    if call_id is not None and (not isinstance(call_id, str) or not call_id):
        raise ConfigError(f"{where}: id must be a non-empty string")
    # The id is filled in per turn at replay time when the script does not set one.
    return ToolCall(id=call_id or "", name=name, arguments=dict(arguments))


def _token_count(raw: Mapping[str, Any], key: str, where: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: {key} must be a non-negative integer")
    return value


def _estimate_tokens(*texts: str) -> int:
    # Roughly four characters per token: enough for budgets to behave as they would for real.
    return max(1, sum(len(text) for text in texts) // 4)


class ScriptedProvider:
    """Replays scripted turns; the turn is chosen by the conversation, never by call order."""

    def __init__(self, turns: Sequence[ScriptedTurn], *, source: str = "script") -> None:
        self._turns = tuple(turns)
        self._name = f"scripted (replays {source})"

    @classmethod
    def from_file(cls, path: Path) -> ScriptedProvider:
        """Loads and validates ``path`` (see :func:`load_script`)."""
        return cls(load_script(path), source=path.name)

    @property
    def name(self) -> str:
        """``scripted (replays <file name>)``: what answers the jobs, said plainly."""
        return self._name

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        """Answers with turn N, where N is the number of assistant messages so far."""
        index = sum(1 for message in request.messages if message.role == "assistant")
        turn = (
            self._turns[index]
            if index < len(self._turns)
            else ScriptedTurn(content=EXHAUSTED_CONTENT)
        )
        calls = tuple(
            call if call.id else ToolCall(f"call_t{index + 1}_{n}", call.name, call.arguments)
            for n, call in enumerate(turn.tool_calls)
        )
        input_tokens = turn.input_tokens
        if input_tokens is None:
            input_tokens = _estimate_tokens(*(m.content or "" for m in request.messages))
        output_tokens = turn.output_tokens
        if output_tokens is None:
            output_tokens = _estimate_tokens(
                turn.content or "", *(json.dumps(dict(c.arguments)) for c in calls)
            )
        return CompletionResult(
            content=turn.content,
            tool_calls=calls,
            finish_reason=turn.finish_reason,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )

    async def aclose(self) -> None:
        """Nothing to release."""
