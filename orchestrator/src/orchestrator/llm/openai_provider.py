"""OpenAI-compatible Chat Completions as an :class:`~orchestrator.llm.types.LlmProvider`.

One provider covers OpenAI itself and every server that speaks its protocol at some base URL
(vLLM, Ollama, llama.cpp server, LM Studio). The mapping is done by pure functions
(:func:`build_request`, :func:`parse_response`) so it is tested without a network.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from yarl import URL

from orchestrator.errors import InvalidArgument, ProviderError
from orchestrator.llm.http_upstream import UpstreamHttp, UpstreamUnreachable
from orchestrator.llm.types import (
    ChatMessage,
    CompletionRequest,
    CompletionResult,
    FinishReason,
    ToolCall,
    ToolSpec,
)
from orchestrator.llm.upstream import display_url, scrub
from orchestrator.secrets import Secret

OPENAI_API_URL = "https://api.openai.com/v1"
# A tool-call argument string that is not a JSON object is kept under this key, and sent back
# verbatim, so a model's malformed call reaches the worker (which can report it) intact.
RAW_ARGUMENTS = "_raw"

_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "content_filter",
}

_TOOL_CHOICES = {"auto": "auto", "none": "none", "required": "required", "any": "required"}

# Fields of a response message the mapping consumes; every other field is an extra.
_MESSAGE_FIELDS = frozenset(
    {"role", "content", "tool_calls", "function_call", "refusal", "annotations", "audio"}
)


def build_request(request: CompletionRequest, *, official_api: bool) -> dict[str, Any]:
    """Returns the keyword arguments of ``chat.completions.create`` for a request.

    OpenAI's own API wants ``max_completion_tokens`` (its reasoning models refuse
    ``max_tokens``), while the compatible servers know ``max_tokens``: ``official_api`` picks.
    """
    params: dict[str, Any] = {
        "model": request.model,
        "messages": [map_message(message, index) for index, message in enumerate(request.messages)],
        ("max_completion_tokens" if official_api else "max_tokens"): request.max_tokens,
    }
    if request.temperature is not None:
        params["temperature"] = request.temperature
    if request.stop_sequences:
        params["stop"] = list(request.stop_sequences)
    if request.tools:
        params["tools"] = [map_tool(tool) for tool in request.tools]
        choice = map_tool_choice(request.tool_choice)
        if choice is not None:
            params["tool_choice"] = choice
    return params


def map_message(message: ChatMessage, index: int = 0) -> dict[str, Any]:
    """Maps one message to the Chat Completions shape; its ``extras`` are sent untouched."""
    # Extras go first so they can never overwrite the fields that give the message its meaning.
    out: dict[str, Any] = {**message.extras, "role": message.role, "content": message.content}
    if message.role == "assistant" and message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": encode_arguments(call.arguments)},
            }
            for call in message.tool_calls
        ]
    elif message.role == "tool":
        if not message.tool_call_id:
            raise InvalidArgument(f"messages[{index}]: a tool message needs a tool_call_id")
        out["tool_call_id"] = message.tool_call_id
        out["content"] = message.content or ""
    elif message.content is None:
        out["content"] = ""
    return out


def encode_arguments(arguments: Mapping[str, Any]) -> str:
    """The wire form of tool-call arguments: a JSON string, or the model's raw string back."""
    if set(arguments) == {RAW_ARGUMENTS} and isinstance(arguments[RAW_ARGUMENTS], str):
        return str(arguments[RAW_ARGUMENTS])
    return json.dumps(dict(arguments), ensure_ascii=False)


def decode_arguments(raw: str | None) -> dict[str, Any]:
    """Decodes a tool call's argument string; anything but a JSON object is kept as ``_raw``."""
    if raw is None or not raw.strip():
        # Some servers send "" for a call without arguments.
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {RAW_ARGUMENTS: raw}
    return value if isinstance(value, dict) else {RAW_ARGUMENTS: raw}


def map_tool(tool: ToolSpec) -> dict[str, Any]:
    """Maps a tool spec to ``{"type": "function", "function": {...}}``."""
    function: dict[str, Any] = {"name": tool.name, "parameters": dict(tool.parameters)}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def map_tool_choice(choice: str | Mapping[str, Any] | None) -> str | dict[str, Any] | None:
    """Maps ``auto``/``none``/``required`` or ``{"name": ...}`` to OpenAI's ``tool_choice``."""
    if choice is None:
        return None
    if isinstance(choice, str):
        mapped = _TOOL_CHOICES.get(choice.lower())
        if mapped is None:
            raise InvalidArgument(
                f"tool_choice {choice!r} must be auto, none, required or {{'name': ...}}"
            )
        return mapped
    name = choice.get("name")
    if choice.get("type") in (None, "tool") and isinstance(name, str):
        return {"type": "function", "function": {"name": name}}
    function = choice.get("function")
    if (
        choice.get("type") == "function"
        and isinstance(function, Mapping)
        and isinstance(function.get("name"), str)
    ):
        return {"type": "function", "function": {"name": function["name"]}}
    raise InvalidArgument(f"tool_choice {dict(choice)!r} is not a tool choice OpenAI understands")


def parse_response(
    completion: Mapping[str, Any], request: CompletionRequest | None = None
) -> CompletionResult:
    """Maps a Chat Completions answer (the decoded JSON document) to the provider-neutral
    result; raises ProviderError for a document that is not one.

    Fields the mapping does not know (``reasoning_content`` from vLLM/DeepSeek, ``reasoning``
    from Ollama and others) land in ``extras`` untouched. A refusal without text becomes the
    content, with ``content_filter``, so the worker sees why it got no answer. Without usage
    in the response (some local servers), tokens are estimated from ``request`` and the answer.
    """
    try:
        return _parse(completion, request)
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ProviderError(
            f"the provider's answer is not a Chat Completions document ({type(exc).__name__})"
        ) from None


def _parse(completion: Mapping[str, Any], request: CompletionRequest | None) -> CompletionResult:
    choices = completion.get("choices")
    if not choices:
        raise ProviderError("the provider returned no choices")
    choice = choices[0]
    message: Mapping[str, Any] = choice["message"]
    calls: list[ToolCall] = []
    for index, call in enumerate(message.get("tool_calls") or ()):
        if call.get("type", "function") == "function":
            function = call["function"]
            name, arguments = function["name"], decode_arguments(function.get("arguments"))
        else:
            custom = call["custom"]
            name, arguments = custom["name"], {RAW_ARGUMENTS: custom.get("input", "")}
        calls.append(ToolCall(id=call.get("id") or f"call_{index}", name=name, arguments=arguments))
    function_call = message.get("function_call")
    if not calls and function_call is not None:
        # The pre-tools protocol, still spoken by some compatible servers.
        calls.append(
            ToolCall(
                id="call_0",
                name=function_call["name"],
                arguments=decode_arguments(function_call.get("arguments")),
            )
        )
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise TypeError("content")
    finish = _FINISH_REASONS.get(choice.get("finish_reason") or "", "stop")
    refusal = message.get("refusal")
    if refusal and not content:
        content, finish = str(refusal), "content_filter"
    extras = {
        key: value
        for key, value in message.items()
        if key not in _MESSAGE_FIELDS and value is not None
    }
    usage = completion.get("usage")
    if isinstance(usage, Mapping) and "prompt_tokens" in usage:
        input_tokens = int(usage["prompt_tokens"])
        output_tokens = int(usage.get("completion_tokens") or 0)
    else:
        # Some local servers omit usage; the job's budget must still count something.
        output_tokens = _estimate_tokens(content or "", *(json.dumps(c.arguments) for c in calls))
        sent = request.messages if request is not None else ()
        input_tokens = _estimate_tokens(*(m.content or "" for m in sent))
    return CompletionResult(
        content=content or None,
        tool_calls=tuple(calls),
        finish_reason=finish,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        extras=extras,
    )


def _estimate_tokens(*texts: str) -> int:
    return max(1, sum(len(text) for text in texts) // 4)


def describe_status(provider: str, status: int, body: bytes, request_id: str | None) -> str:
    """A person-readable reason for an error answer: status, upstream error type and message."""
    try:
        document: object = json.loads(body)
    except (ValueError, RecursionError):
        document = body.decode(errors="replace")
    return f"{provider}: HTTP {status} {_upstream_error_text(document)}" + (
        f" (request id {request_id})" if request_id else ""
    )


def describe_unreachable(exc: UpstreamUnreachable, *, provider: str, timeout_s: float) -> str:
    """A person-readable reason for a call that got no answer."""
    tries = "1 attempt" if exc.attempts == 1 else f"{exc.attempts} attempts"
    if exc.timed_out:
        return f"{provider}: request timed out after {timeout_s:g} s ({tries})"
    return f"{provider}: could not connect ({exc.reason}; {tries})"


def _upstream_error_text(body: object) -> str:
    # The SDK hands over the inner "error" object; a server that is not quite compatible may
    # answer with the whole document or with plain text.
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping):
            parts = [str(error[key]) for key in ("type", "code", "message") if error.get(key)]
            if parts:
                return ": ".join(dict.fromkeys(parts))
        elif isinstance(error, str) and error:
            return error[:300]
    if isinstance(body, str) and body.strip():
        return body.strip()[:300]
    return "(no error details in the response)"


class OpenAIProvider:
    """Sends completions to an OpenAI-compatible Chat Completions endpoint.

    The request is built by :func:`build_request` in the wire format already, so it is posted
    as it is, over one pooled keep-alive connection set (``llm/http_upstream.py``), with the
    retries, timeouts and error mapping written out there and here rather than left to the
    SDK: its request building was most of the proxy's CPU per call (bench/README.md).
    ``api_key`` may be None for local servers that want none; a placeholder is sent, as the
    SDK does, since some servers insist on a header.
    """

    def __init__(
        self,
        api_key: Secret | None,
        *,
        base_url: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 2,
    ) -> None:
        self._key = api_key
        self._timeout_s = timeout_s
        self._max_retries = max_retries
        self._official_api = base_url is None or urlsplit(base_url).hostname == "api.openai.com"
        self._name = (
            f"openai-compatible ({display_url(base_url)})"
            if base_url is not None and not self._official_api
            else "openai"
        )
        # Parsed once: aiohttp would parse a string URL again on every call.
        self._url = URL((base_url or OPENAI_API_URL).rstrip("/") + "/chat/completions")
        self._headers = {
            "Authorization": f"Bearer {api_key.reveal() if api_key else 'unused'}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self._http = UpstreamHttp(read_timeout_s=timeout_s)

    @property
    def name(self) -> str:
        """``openai``, or ``openai-compatible (<base url>)`` for any other server."""
        return self._name

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        """Sends one Chat Completions request; raises ProviderError on any failure."""
        params = build_request(request, official_api=self._official_api)
        body = json.dumps(params, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            answer = await self._http.exchange(
                self._url,
                body,
                self._headers,
                max_retries=self._max_retries,
                timeout_s=self._timeout_s,
            )
        except UpstreamUnreachable as exc:
            text = describe_unreachable(exc, provider=self._name, timeout_s=self._timeout_s)
            raise ProviderError(scrub(text, self._key)) from None
        if answer.status >= 400:
            text = describe_status(
                self._name, answer.status, answer.body, answer.headers.get("x-request-id")
            )
            raise ProviderError(scrub(text, self._key))
        try:
            document = json.loads(answer.body)
        except (ValueError, RecursionError):
            raise ProviderError(f"{self._name}: the answer is not JSON") from None
        if not isinstance(document, dict):
            raise ProviderError(f"{self._name}: the answer is not a JSON object")
        try:
            return parse_response(document, request)
        except ProviderError as exc:
            raise ProviderError(scrub(f"{self._name}: {exc.message}", self._key)) from None

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._http.close()
