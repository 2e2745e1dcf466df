"""A local stand-in for an OpenAI-compatible Chat Completions server (OpenAI, vLLM, Ollama...).

Same scripting and record as :class:`~tests.fakes.fake_anthropic.FakeAnthropic`::

    async with FakeOpenAI(api_key="sk-test") as fake:     # api_key=None: no auth, as Ollama
        fake.enqueue_text("Hello", extra_message_fields={"reasoning_content": "..."})
        fake.enqueue_tool_calls([{"name": "shell", "arguments": {"command": "ls"}}])
        fake.enqueue_tool_calls([{"name": "shell", "arguments": "not json"}])  # sent verbatim
        fake.enqueue_error(500, "The server had an error")
        fake.enqueue_stall()
        ...
        fake.requests[0].body["messages"], fake.requests[0].headers["authorization"]

The base URL to give a client is ``fake.url + "/v1"``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .fake_anthropic import (
    ErrorReply,
    FakeProviderServer,
    ReceivedRequest,
    error_response,
)


@dataclass(frozen=True)
class CompletionReply:
    """A successful answer: ``message`` is the assistant message document; ``usage`` None
    leaves usage out, as some local servers do."""

    message: Mapping[str, Any]
    finish_reason: str = "stop"
    usage: Mapping[str, int] | None = field(
        default_factory=lambda: {"prompt_tokens": 10, "completion_tokens": 5}
    )


def answer_to_the_cap(received: ReceivedRequest) -> CompletionReply:
    """A model that always writes until ``max_tokens``: the most a call can be billed."""
    body = received.body
    cap = body.get("max_completion_tokens") or body["max_tokens"]
    return CompletionReply(
        message={"role": "assistant", "content": "word " * 8},
        finish_reason="length",
        usage={
            "prompt_tokens": max(1, len(json.dumps(body["messages"])) // 4),
            "completion_tokens": int(cap),
        },
    )


def openai_error_body(message: str, error_type: str, code: str | None = None) -> dict[str, Any]:
    """The real API's error document."""
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


class FakeOpenAI(FakeProviderServer):
    """``POST /v1/chat/completions`` (non-streaming) and ``GET /v1/models`` on localhost."""

    name = "fake-openai"

    def __init__(self, api_key: str | None = "sk-fake-openai-key", models: tuple[str, ...] = ()):
        super().__init__()
        self.api_key = api_key
        self.models = models or ("gpt-4o-mini",)

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as ``base_url``."""
        return f"{self.url}/v1"

    # -- scripting -------------------------------------------------------------------------

    def enqueue_completion(
        self,
        message: Mapping[str, Any],
        *,
        finish_reason: str = "stop",
        prompt_tokens: int = 10,
        completion_tokens: int = 5,
        usage: bool = True,
    ) -> CompletionReply:
        """Queues an answer with an explicit assistant message document."""
        reply = CompletionReply(
            message={"role": "assistant", **message},
            finish_reason=finish_reason,
            usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
            if usage
            else None,
        )
        self.enqueue(reply)
        return reply

    def enqueue_text(
        self,
        text: str | None,
        *,
        finish_reason: str = "stop",
        prompt_tokens: int = 10,
        completion_tokens: int = 5,
        extra_message_fields: Mapping[str, Any] | None = None,
        usage: bool = True,
    ) -> CompletionReply:
        """Queues a text answer; ``extra_message_fields`` (e.g. ``reasoning_content``) are
        added to the message as a server would."""
        return self.enqueue_completion(
            {"content": text, "refusal": None, **(extra_message_fields or {})},
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            usage=usage,
        )

    def enqueue_tool_calls(
        self,
        calls: list[Mapping[str, Any]],
        *,
        content: str | None = None,
        finish_reason: str = "tool_calls",
        prompt_tokens: int = 10,
        completion_tokens: int = 5,
        extra_message_fields: Mapping[str, Any] | None = None,
    ) -> CompletionReply:
        """Queues tool calls, each ``{"name", "arguments", "id"?}``; a mapping ``arguments``
        is JSON-encoded, a string is sent as it is (to imitate a model's malformed JSON)."""
        tool_calls = [
            {
                "id": call.get("id") or f"call_{secrets.token_hex(12)}",
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": call["arguments"]
                    if isinstance(call.get("arguments"), str)
                    else json.dumps(call.get("arguments", {})),
                },
            }
            for call in calls
        ]
        return self.enqueue_completion(
            {
                "content": content,
                "refusal": None,
                "tool_calls": tool_calls,
                **(extra_message_fields or {}),
            },
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )

    def enqueue_error(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "server_error",
        code: str | None = None,
        retry_after_ms: int | None = None,
    ) -> ErrorReply:
        """Queues an error in the real shape; ``retry_after_ms`` shortens the SDK's back-off."""
        headers = {"x-request-id": f"req_{secrets.token_hex(12)}"}
        if retry_after_ms is not None:
            headers["retry-after-ms"] = str(retry_after_ms)
        reply = ErrorReply(status, openai_error_body(message, error_type, code), headers)
        self.enqueue(reply)
        return reply

    # -- protocol --------------------------------------------------------------------------

    def _routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/chat/completions", self._chat_completions),
            web.get("/v1/models", self._models),
            web.route("*", "/{tail:.*}", self._not_found),
        ]

    def _unscripted(self) -> ErrorReply:
        return ErrorReply(
            500, openai_error_body(f"{self.name}: no reply queued for this call", "server_error")
        )

    async def _not_found(self, request: web.Request) -> web.Response:
        await self._record(request)
        message = f"Invalid URL ({request.method} {request.path})"
        return error_response(ErrorReply(404, openai_error_body(message, "invalid_request_error")))

    async def _models(self, request: web.Request) -> web.Response:
        received = await self._record(request)
        refusal = self._check_auth(received)
        if refusal is not None:
            return error_response(refusal)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _chat_completions(self, request: web.Request) -> web.Response:
        received = await self._record(request)
        refusal = self._check_auth(received) or _check_chat_body(received.body)
        if refusal is not None:
            return error_response(refusal)
        reply = await self._take_reply(received)
        if isinstance(reply, ErrorReply):
            return error_response(reply)
        if not isinstance(reply, CompletionReply):
            raise TypeError(f"{self.name} cannot send {reply!r}")
        if reply.usage is not None:
            self.served_tokens += reply.usage["prompt_tokens"] + reply.usage["completion_tokens"]
        document: dict[str, Any] = {
            "id": f"chatcmpl-{secrets.token_hex(12)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": received.body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": dict(reply.message),
                    "finish_reason": reply.finish_reason,
                    "logprobs": None,
                }
            ],
        }
        if reply.usage is not None:
            prompt, completion = reply.usage["prompt_tokens"], reply.usage["completion_tokens"]
            document["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
        return web.json_response(document, headers={"x-request-id": f"req_{secrets.token_hex(8)}"})

    def _check_auth(self, received: ReceivedRequest) -> ErrorReply | None:
        if self.api_key is None:
            return None
        header = received.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            return ErrorReply(
                401,
                openai_error_body(
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    "invalid_request_error",
                ),
            )
        key = header[len("Bearer ") :]
        if not secrets.compare_digest(key.encode(), self.api_key.encode()):
            masked = f"{key[:3]}{'*' * max(0, len(key) - 7)}{key[-4:]}"
            return ErrorReply(
                401,
                openai_error_body(
                    f"Incorrect API key provided: {masked}.",
                    "invalid_request_error",
                    "invalid_api_key",
                ),
            )
        return None


def _check_chat_body(body: object) -> ErrorReply | None:
    """The real API's request checks that matter to a client's mapping."""

    def invalid(message: str, param: str | None = None) -> ErrorReply:
        document = openai_error_body(message, "invalid_request_error")
        document["error"]["param"] = param
        return ErrorReply(400, document)

    if not isinstance(body, dict):
        return invalid("We could not parse the JSON body of your request.")
    if body.get("stream"):
        return invalid("This fake server does not stream.", "stream")
    for key in ("model", "messages"):
        if key not in body:
            return invalid(f"Missing required parameter: '{key}'.", key)
    if "tool_choice" in body and not body.get("tools"):
        return invalid(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
            "specified.",
            "tool_choice",
        )
    open_calls: set[str] = set()
    for index, message in enumerate(body["messages"]):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("system", "developer", "user", "assistant", "tool"):
            return invalid(f"Invalid value: '{role}'.", f"messages[{index}].role")
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in open_calls:
                return invalid(
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    f"messages.[{index}].role",
                )
            continue
        open_calls = set()
        for position, call in enumerate(message.get("tool_calls") or []):
            arguments = call.get("function", {}).get("arguments")
            if not isinstance(arguments, str):
                return invalid(
                    f"Invalid type for 'messages[{index}].tool_calls[{position}].function."
                    "arguments': expected a string, but got an object instead.",
                    f"messages[{index}].tool_calls[{position}].function.arguments",
                )
            open_calls.add(call.get("id"))
    return None
