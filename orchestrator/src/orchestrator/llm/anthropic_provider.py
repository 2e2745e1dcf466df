"""The Anthropic Messages API as an :class:`~orchestrator.llm.types.LlmProvider`.

The mapping between the worker API's messages and Anthropic's is done by pure functions
(:func:`build_request`, :func:`parse_response`) so it is tested without a network; the provider
class only adds the official SDK client and the translation of its errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anthropic
from anthropic.types import Message

from orchestrator.errors import InvalidArgument, ProviderError
from orchestrator.llm.types import (
    ChatMessage,
    CompletionRequest,
    CompletionResult,
    FinishReason,
    ToolCall,
    ToolSpec,
)
from orchestrator.llm.upstream import display_url, safe_cause, scrub
from orchestrator.secrets import Secret

_FINISH_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    # A paused server-tool turn is not a tool call the worker must answer; it simply ended.
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_use",
    "refusal": "content_filter",
}

_TOOL_CHOICES: dict[str, dict[str, str]] = {
    "auto": {"type": "auto"},
    "none": {"type": "none"},
    "required": {"type": "any"},
    "any": {"type": "any"},
}


def build_request(request: CompletionRequest) -> dict[str, Any]:
    """Returns the keyword arguments of ``messages.create`` for a provider-neutral request."""
    system, messages = map_messages(request.messages)
    params: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": messages,
    }
    if system is not None:
        params["system"] = system
    if request.temperature is not None:
        params["temperature"] = request.temperature
    if request.stop_sequences:
        params["stop_sequences"] = list(request.stop_sequences)
    if request.tools:
        params["tools"] = [map_tool(tool) for tool in request.tools]
        choice = map_tool_choice(request.tool_choice)
        if choice is not None:
            params["tool_choice"] = choice
    return params


def map_messages(messages: Sequence[ChatMessage]) -> tuple[str | None, list[dict[str, Any]]]:
    """Splits the conversation into Anthropic's ``system`` parameter and its ``messages``.

    Tool results become ``tool_result`` blocks of a user message, and consecutive messages of
    one role are merged into one: Anthropic wants every result of an assistant's tool calls in
    the single user message that follows it. Empty text is dropped because the API refuses
    empty text blocks.
    """
    system_parts: list[str] = []
    out: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if message.role == "system":
            if message.content:
                system_parts.append(message.content)
            continue
        blocks: list[dict[str, Any]]
        if message.role == "tool":
            if not message.tool_call_id:
                raise InvalidArgument(f"messages[{index}]: a tool message needs a tool_call_id")
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
            if message.content:
                result["content"] = message.content
            role, blocks = "user", [result]
        elif message.role == "assistant":
            blocks = _text_blocks(message.content)
            blocks += [
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.name,
                    "input": dict(call.arguments),
                }
                for call in message.tool_calls
            ]
            role = "assistant"
        else:
            role, blocks = "user", _text_blocks(message.content)
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return ("\n\n".join(system_parts) if system_parts else None), out


def _text_blocks(text: str | None) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text}] if text else []


def map_tool(tool: ToolSpec) -> dict[str, Any]:
    """Maps a tool spec to Anthropic's ``{"name", "description", "input_schema"}``."""
    schema = dict(tool.parameters)
    # Anthropic requires an object schema; workers often send {} for a tool without arguments.
    schema.setdefault("type", "object")
    spec: dict[str, Any] = {"name": tool.name, "input_schema": schema}
    if tool.description:
        spec["description"] = tool.description
    return spec


def map_tool_choice(choice: str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Maps ``auto``/``none``/``required`` or ``{"name": ...}`` to Anthropic's ``tool_choice``.

    The OpenAI shape ``{"type": "function", "function": {"name": ...}}`` and Anthropic's own
    shapes are accepted too, so a worker written against either provider works.
    """
    if choice is None:
        return None
    if isinstance(choice, str):
        mapped = _TOOL_CHOICES.get(choice.lower())
        if mapped is None:
            raise InvalidArgument(
                f"tool_choice {choice!r} must be auto, none, required or {{'name': ...}}"
            )
        return dict(mapped)
    kind = choice.get("type")
    if kind is None and isinstance(choice.get("name"), str):
        return {"type": "tool", "name": choice["name"]}
    function = choice.get("function")
    if (
        kind == "function"
        and isinstance(function, Mapping)
        and isinstance(function.get("name"), str)
    ):
        return {"type": "tool", "name": function["name"]}
    if kind in ("auto", "any", "none") or (kind == "tool" and isinstance(choice.get("name"), str)):
        return dict(choice)
    raise InvalidArgument(
        f"tool_choice {dict(choice)!r} is not a tool choice Anthropic understands"
    )


def parse_response(message: Message) -> CompletionResult:
    """Maps an Anthropic ``Message`` to the provider-neutral result.

    Text blocks are joined as they are (a cited answer arrives split into several blocks);
    cached input tokens count as input because the job's budget is about what was processed.
    """
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in message.content:
        if block.type == "text":
            texts.append(block.text)
        elif block.type == "tool_use":
            arguments = block.input if isinstance(block.input, Mapping) else {"_raw": block.input}
            calls.append(ToolCall(id=block.id, name=block.name, arguments=dict(arguments)))
    usage = message.usage
    input_tokens = (
        usage.input_tokens
        + (usage.cache_creation_input_tokens or 0)
        + (usage.cache_read_input_tokens or 0)
    )
    return CompletionResult(
        content="".join(texts) or None,
        tool_calls=tuple(calls),
        finish_reason=_FINISH_REASONS.get(message.stop_reason or "", "stop"),
        input_tokens=input_tokens,
        output_tokens=usage.output_tokens,
    )


def describe_error(exc: Exception, *, provider: str, timeout_s: float, attempts: int) -> str:
    """A person-readable reason for an SDK failure: status, upstream error type and message."""
    tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
    if isinstance(exc, anthropic.APITimeoutError):
        return f"{provider}: request timed out after {timeout_s:g} s ({tries})"
    if isinstance(exc, anthropic.APIConnectionError):
        cause = exc.__cause__
        reason = f"{type(cause).__name__}: {cause}" if cause else exc.message
        return f"{provider}: could not connect ({reason}; {tries})"
    if isinstance(exc, anthropic.APIStatusError):
        return f"{provider}: HTTP {exc.status_code} {_upstream_error_text(exc.body)}" + (
            f" (request id {exc.request_id})" if exc.request_id else ""
        )
    return f"{provider}: call failed: {type(exc).__name__}: {exc}"


def _upstream_error_text(body: object) -> str:
    # Anthropic's shape is {"type": "error", "error": {"type", "message"}}; a proxy in between
    # may answer with something else, even plain text.
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping):
            parts = [str(error[key]) for key in ("type", "message") if error.get(key)]
            if parts:
                return ": ".join(parts)
    if isinstance(body, str) and body.strip():
        return body.strip()[:300]
    return "(no error details in the response)"


class AnthropicProvider:
    """Sends completions to the Anthropic Messages API with the official ``anthropic`` SDK."""

    def __init__(
        self,
        api_key: Secret,
        *,
        base_url: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 2,
    ) -> None:
        self._key = api_key
        self._timeout_s = timeout_s
        self._attempts = max_retries + 1
        self._name = "anthropic" if base_url is None else f"anthropic ({display_url(base_url)})"
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key.reveal(),
            base_url=base_url,
            timeout=timeout_s,
            max_retries=max_retries,
        )

    @property
    def name(self) -> str:
        """``anthropic``, with the base URL when it is not Anthropic's own."""
        return self._name

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        """Sends one non-streaming Messages request; raises ProviderError on any failure."""
        params = build_request(request)
        try:
            message = await self._client.messages.create(**params)
            return parse_response(message)
        except Exception as exc:
            text = describe_error(
                exc, provider=self._name, timeout_s=self._timeout_s, attempts=self._attempts
            )
            raise ProviderError(scrub(text, self._key)) from safe_cause(exc, self._key)

    async def aclose(self) -> None:
        """Closes the SDK's connection pool."""
        await self._client.close()
