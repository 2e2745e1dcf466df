"""A local stand-in for an OpenAI-compatible Chat Completions server (OpenAI, vLLM, Ollama...).

Same scripting and record as :class:`~tests.fakes.fake_anthropic.FakeAnthropic`::

    async with FakeOpenAI(api_key="sk-test") as fake:     # api_key=None: no auth, as Ollama
        fake.enqueue_text("Hello", extra_message_fields={"reasoning_content": "..."})
        fake.enqueue_tool_calls([{"name": "shell", "arguments": {"command": "ls"}}])
        fake.enqueue_tool_calls([{"name": "shell", "arguments": "not json"}])  # sent verbatim
        fake.enqueue_error(500, "The server had an error")
        fake.enqueue_stall()
        fake.enqueue(RunawayReply(words=5000))    # a stream that ignores max_tokens
        ...
        fake.requests[0].body["messages"], fake.requests[0].headers["authorization"]

``POST /v1/chat/completions`` answers with JSON, or, for ``"stream": true``, with the chunks the
real API streams (the role, the text in pieces, the finish reason, then the usage chunk with no
choices when ``stream_options.include_usage`` asks for it, then ``data: [DONE]``).
``POST /v1/responses`` answers a text reply as a Responses API ``response`` object, or streams
its events (``response.created`` ... ``response.output_text.delta`` ... ``response.completed``
with the usage), as the real API does. The base URL to give a client is ``fake.url + "/v1"``.
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


@dataclass(frozen=True)
class RunawayReply:
    """A streamed answer of ``words`` words, one per chunk, whatever ``max_tokens`` says (an
    upstream that ignores the cap); its usage, if the stream gets that far, counts a token a
    word."""

    words: int
    word: str = "word "


def output_cap(body: Mapping[str, Any]) -> int:
    """The output cap a request carries (any of the three fields); the smallest wins."""
    caps = [
        int(body[name])
        for name in ("max_completion_tokens", "max_tokens", "max_output_tokens")
        if body.get(name) is not None
    ]
    if not caps:
        raise AssertionError(f"the request carries no output cap: {sorted(body)}")
    return min(caps)


def answer_to_the_cap(received: ReceivedRequest) -> CompletionReply:
    """A model that always writes until its cap: the most a call can be billed."""
    body = received.body
    prompt = body.get("messages", body.get("input", ""))
    return CompletionReply(
        message={"role": "assistant", "content": "word " * 8},
        finish_reason="length",
        usage={
            "prompt_tokens": max(1, len(json.dumps(prompt)) // 4),
            "completion_tokens": output_cap(body),
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
            web.post("/v1/responses", self._responses),
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

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        received = await self._record(request)
        refusal = self._check_auth(received) or _check_chat_body(received.body)
        if refusal is not None:
            return error_response(refusal)
        reply = await self._take_reply(received)
        if isinstance(reply, ErrorReply):
            return error_response(reply)
        if received.body.get("stream"):
            return await self._stream_chat(request, received.body, reply)
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

    async def _stream_chat(
        self, request: web.Request, body: Mapping[str, Any], reply: object
    ) -> web.StreamResponse:
        response = await _open_stream(request)
        base = {
            "id": f"chatcmpl-{secrets.token_hex(12)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body["model"],
        }

        async def chunk(delta: Mapping[str, Any], finish: str | None = None) -> None:
            choice = {"index": 0, "delta": dict(delta), "finish_reason": finish, "logprobs": None}
            await _send(response, {**base, "choices": [choice]})

        await chunk({"role": "assistant", "content": ""})
        if isinstance(reply, RunawayReply):
            pieces, finish = [reply.word] * reply.words, "stop"
            usage = {"prompt_tokens": 10, "completion_tokens": reply.words}
        elif isinstance(reply, CompletionReply):
            pieces, finish = _pieces(reply.message.get("content") or ""), reply.finish_reason
            usage = dict(reply.usage) if reply.usage is not None else None
        else:
            raise TypeError(f"{self.name} cannot stream {reply!r}")
        for piece in pieces:
            await chunk({"content": piece})
        await chunk({}, finish)
        options = body.get("stream_options") or {}
        if usage is not None and options.get("include_usage"):
            self.served_tokens += usage["prompt_tokens"] + usage["completion_tokens"]
            total = usage["prompt_tokens"] + usage["completion_tokens"]
            await _send(
                response, {**base, "choices": [], "usage": {**usage, "total_tokens": total}}
            )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        received = await self._record(request)
        refusal = self._check_auth(received)
        body = received.body
        if refusal is None and (not isinstance(body, dict) or "model" not in body):
            refusal = ErrorReply(
                400,
                openai_error_body("Missing required parameter: 'model'.", "invalid_request_error"),
            )
        if refusal is None and "input" not in body:
            refusal = ErrorReply(
                400,
                openai_error_body("Missing required parameter: 'input'.", "invalid_request_error"),
            )
        if refusal is not None:
            return error_response(refusal)
        reply = await self._take_reply(received)
        if isinstance(reply, ErrorReply):
            return error_response(reply)
        if isinstance(reply, RunawayReply):
            text, usage = (
                reply.word * reply.words,
                {"prompt_tokens": 10, "completion_tokens": reply.words},
            )
            pieces = [reply.word] * reply.words
        elif isinstance(reply, CompletionReply):
            text = reply.message.get("content") or ""
            usage = dict(reply.usage or {"prompt_tokens": 0, "completion_tokens": 0})
            pieces = _pieces(text)
        else:
            raise TypeError(f"{self.name} cannot send {reply!r}")
        document = _response_object(body["model"], text, usage)
        if not body.get("stream"):
            self.served_tokens += usage["prompt_tokens"] + usage["completion_tokens"]
            return web.json_response(document)
        response = await _open_stream(request)
        sequence = 0

        async def event(kind: str, fields: Mapping[str, Any]) -> None:
            nonlocal sequence
            await _send(response, {"type": kind, "sequence_number": sequence, **fields}, kind)
            sequence += 1

        item = document["output"][0]
        pending = {**document, "status": "in_progress", "output": [], "usage": None}
        await event("response.created", {"response": pending})
        await event(
            "response.output_item.added", {"output_index": 0, "item": {**item, "content": []}}
        )
        part = {"type": "output_text", "text": "", "annotations": []}
        where = {"item_id": item["id"], "output_index": 0, "content_index": 0}
        await event("response.content_part.added", {**where, "part": part})
        for piece in pieces:
            await event("response.output_text.delta", {**where, "delta": piece, "logprobs": []})
        await event("response.output_text.done", {**where, "text": text, "logprobs": []})
        await event("response.content_part.done", {**where, "part": item["content"][0]})
        await event("response.output_item.done", {"output_index": 0, "item": item})
        self.served_tokens += usage["prompt_tokens"] + usage["completion_tokens"]
        await event("response.completed", {"response": document})
        await response.write_eof()
        return response

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
    options = body.get("stream_options")
    if options is not None and not body.get("stream"):
        return invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )
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


def _pieces(text: str) -> list[str]:
    # The real API streams a few characters at a time; a word each is close enough.
    words = text.split(" ")
    return [word + (" " if index < len(words) - 1 else "") for index, word in enumerate(words)]


async def _open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "x-request-id": f"req_{secrets.token_hex(8)}",
        }
    )
    await response.prepare(request)
    return response


async def _send(response: web.StreamResponse, data: Mapping[str, Any], event: str = "") -> None:
    head = f"event: {event}\n" if event else ""
    await response.write(f"{head}data: {json.dumps(data)}\n\n".encode())


def _response_object(model: str, text: str, usage: Mapping[str, int]) -> dict[str, Any]:
    """A completed Responses API ``response`` with one text message."""
    return {
        "id": f"resp_{secrets.token_hex(12)}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "model": model,
        "output": [
            {
                "type": "message",
                "id": f"msg_{secrets.token_hex(12)}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"],
        },
    }
