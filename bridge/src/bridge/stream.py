"""Claude Code's ``--output-format stream-json`` output, turned into job events.

One JSON object per line (as printed by the real CLI 2.1.327):

- ``{"type": "system", "subtype": "init", "session_id", "model", "tools", ...}`` → a status;
  ``"subtype": "api_retry"`` (the CLI retrying a failed API call) → a status;
- ``{"type": "assistant", "message": {"content": [...]}}``: each ``text`` block → ``message``,
  each ``tool_use`` block → ``tool_use`` (its name remembered by id), ``thinking`` →
  ``reasoning``;
- ``{"type": "user", "message": {"content": [{"type": "tool_result", "tool_use_id", ...}]}}``
  → ``tool_result`` with the name of the tool that ``tool_use_id`` called;
- ``{"type": "result", ...}`` → the session's :class:`SessionResult` (reported once, by the
  bridge, as the job's result; not an event).

Any other line becomes a status too: a line of a type (or a ``system`` subtype) this mapper does
not know, newer CLIs add some, is named by its type, subtype and field names, never its values
(they can be anything, of any size); a line that is not JSON is shown as it is, truncated.
Every status is bounded and masked for secret-shaped text. Nothing here raises on odd input:
the CLI's output is data, never a reason to crash.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ironclaw_contract.secret_patterns import mask_secrets

# Keys of the result's usage that are summed over a job's sessions.
USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)
MAX_STATUS_LINE = 2000
# What an unknown line's status shows of it: its type and subtype, and the names of its fields.
_MAX_FIELDS_SHOWN = 12
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_ROUTINE_FIELDS = frozenset({"type", "subtype", "session_id", "uuid", "parent_tool_use_id"})


@dataclass(frozen=True)
class BridgeEvent:
    """One job event: ``event_type`` is ``message``, ``tool_use``, ``tool_result``,
    ``reasoning`` or ``status`` (``data`` is ``{"message"}`` for a status)."""

    event_type: str
    data: dict[str, Any]


@dataclass(frozen=True)
class SessionResult:
    """The ``result`` line of one ``claude -p`` run."""

    session_id: str
    subtype: str
    is_error: bool
    text: str
    num_turns: int = 0
    duration_ms: int = 0
    total_cost_usd: float = 0.0
    usage: Mapping[str, int] = field(default_factory=dict)
    api_error_status: int | None = None
    terminal_reason: str = ""
    errors: tuple[str, ...] = ()

    @property
    def succeeded(self) -> bool:
        """The CLI says the work is done. (A failed API call is ``is_error`` with subtype
        ``success``: both must agree.)"""
        return self.subtype == "success" and not self.is_error

    @classmethod
    def from_line(cls, line: Mapping[str, Any]) -> SessionResult:
        """Reads a ``{"type": "result", ...}`` object, tolerating missing or odd fields."""
        usage = line.get("usage")
        errors = line.get("errors")
        status = line.get("api_error_status")
        return cls(
            session_id=_str(line.get("session_id")),
            subtype=_str(line.get("subtype")) or "unknown",
            is_error=bool(line.get("is_error", False)),
            text=_str(line.get("result")),
            num_turns=_int(line.get("num_turns")),
            duration_ms=_int(line.get("duration_ms")),
            total_cost_usd=_float(line.get("total_cost_usd")),
            usage={key: _int(usage.get(key)) for key in USAGE_KEYS if isinstance(usage, Mapping)},
            api_error_status=status if isinstance(status, int) else None,
            terminal_reason=_str(line.get("terminal_reason")),
            errors=tuple(str(e) for e in errors) if isinstance(errors, list) else (),
        )


class StreamJsonMapper:
    """Maps the CLI's stdout, line by line, to events; keeps the session id and the result.

    One mapper per ``claude`` run; the tool names it learned are handed to the next run's
    mapper (a resumed session can return results for calls made earlier)."""

    def __init__(self, tool_names: Mapping[str, str] | None = None) -> None:
        self.tool_names: dict[str, str] = dict(tool_names or {})
        self.session_id: str | None = None
        self.result: SessionResult | None = None

    def feed(self, line: str) -> list[BridgeEvent]:
        """The events of one output line (often none)."""
        text = line.strip()
        if not text:
            return []
        try:
            item = json.loads(text)
        except ValueError:
            return [_status(f"claude: {text}")]
        if not isinstance(item, dict):
            return [_status(f"claude: {text}")]
        session_id = item.get("session_id")
        if isinstance(session_id, str) and session_id:
            self.session_id = session_id
        kind = item.get("type")
        if kind == "system":
            return self._system(item)
        if kind == "assistant":
            return self._assistant(item)
        if kind == "user":
            return self._user(item)
        if kind == "result":
            self.result = SessionResult.from_line(item)
            return []
        return [_unknown_line(item)]

    def _system(self, item: Mapping[str, Any]) -> list[BridgeEvent]:
        subtype = item.get("subtype")
        if subtype == "init":
            tools = item.get("tools")
            names = ", ".join(str(t) for t in tools) if isinstance(tools, list) else "?"
            version = _str(item.get("claude_code_version"))
            return [
                _status(
                    f"Claude Code{' ' + version if version else ''} session "
                    f"{self.session_id or '?'} started: model {_str(item.get('model')) or '?'}, "
                    f"tools {names}"
                )
            ]
        if subtype == "api_retry":
            return [
                _status(
                    f"Anthropic API call failed (HTTP {item.get('error_status')}, "
                    f"{item.get('error')}); retry {item.get('attempt')} of "
                    f"{item.get('max_retries')} in {_int(item.get('retry_delay_ms')) / 1000:g} s"
                )
            ]
        return [_unknown_line(item)]

    def _assistant(self, item: Mapping[str, Any]) -> list[BridgeEvent]:
        events: list[BridgeEvent] = []
        for block in _blocks(item):
            kind = block.get("type")
            if kind == "text":
                text = _str(block.get("text"))
                if text.strip():
                    events.append(BridgeEvent("message", {"role": "assistant", "content": text}))
            elif kind == "tool_use":
                tool_id = _str(block.get("id"))
                name = _str(block.get("name")) or "unknown"
                if tool_id:
                    self.tool_names[tool_id] = name
                tool_input = block.get("input")
                events.append(
                    BridgeEvent(
                        "tool_use",
                        {
                            "tool_name": name,
                            "tool_use_id": tool_id,
                            "input": tool_input if isinstance(tool_input, dict) else {},
                        },
                    )
                )
            elif kind == "thinking":
                thinking = _str(block.get("thinking"))
                if thinking.strip():
                    events.append(BridgeEvent("reasoning", {"text": thinking}))
        return events

    def _user(self, item: Mapping[str, Any]) -> list[BridgeEvent]:
        events: list[BridgeEvent] = []
        for block in _blocks(item):
            if block.get("type") != "tool_result":
                continue
            tool_id = _str(block.get("tool_use_id"))
            events.append(
                BridgeEvent(
                    "tool_result",
                    {
                        "tool_name": self.tool_names.get(tool_id, "unknown"),
                        "tool_use_id": tool_id,
                        "output": tool_output(block.get("content")),
                        "is_error": bool(block.get("is_error", False)),
                    },
                )
            )
        return events


def tool_output(content: Any) -> str:
    """A tool result's content as text: a string, or the text of its blocks (an image is
    shown as ``[image]``)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for block in content:
            if isinstance(block, Mapping):
                if block.get("type") == "text":
                    parts.append(_str(block.get("text")))
                elif block.get("type") == "image":
                    parts.append("[image]")
            elif isinstance(block, str):
                parts.append(block)
        return "\n".join(parts)
    if content is None:
        return ""
    return json.dumps(content, ensure_ascii=False)


def _blocks(item: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    message = item.get("message")
    content = message.get("content") if isinstance(message, Mapping) else None
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        return []
    return [block for block in content if isinstance(block, Mapping)]


def _unknown_line(item: Mapping[str, Any]) -> BridgeEvent:
    """A status naming a line this mapper does not know, without any of its values."""
    described = f"type {_name(item.get('type'))}"
    if "subtype" in item:
        described += f", subtype {_name(item.get('subtype'))}"
    fields = [_name(key) for key in item if key not in _ROUTINE_FIELDS]
    if len(fields) > _MAX_FIELDS_SHOWN:
        fields = [*fields[:_MAX_FIELDS_SHOWN], f"… {len(fields) - _MAX_FIELDS_SHOWN} more"]
    shown = f" (fields: {', '.join(fields)})" if fields else ""
    return _status(f"claude: stream-json line not mapped to an event: {described}{shown}")


def _name(value: Any) -> str:
    # A type, subtype or field name as an identifier; anything else is not shown.
    return value if isinstance(value, str) and _NAME.fullmatch(value) else "?"


def _status(message: str) -> BridgeEvent:
    message = mask_secrets(message)
    if len(message) > MAX_STATUS_LINE:
        message = message[:MAX_STATUS_LINE] + f"…[truncated {len(message) - MAX_STATUS_LINE}]"
    return BridgeEvent("status", {"message": message})


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    return 0


def _float(value: Any) -> float:
    if isinstance(value, bool):
        return 0.0
    return float(value) if isinstance(value, int | float) else 0.0
