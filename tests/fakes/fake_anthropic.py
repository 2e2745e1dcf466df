"""A local stand-in for the Anthropic Messages API that speaks its real HTTP protocol.

Tests point the official SDK (or the Claude Code CLI, through the orchestrator's passthrough
route) at :attr:`FakeAnthropic.url`, script the answers, and read back what arrived::

    async with FakeAnthropic(api_key="sk-ant-test") as fake:
        fake.enqueue_text("Hello")                        # the next call's answer
        fake.enqueue_tool_use("shell", {"command": "ls"})
        fake.enqueue_error(500, "api_error", "Internal server error")
        fake.enqueue_stall()                              # never answers until released
        ...
        fake.requests[0].body["messages"]                 # what the client sent
        fake.requests[0].headers["x-api-key"]

``POST /v1/messages`` answers with JSON, or with server-sent events exactly as the real API
streams them when the body says ``"stream": true``. Requests are checked the way the real API
checks them (key, ``anthropic-version``, required fields, tool_use/tool_result pairing), with
its error shape, so a client that passes here sends what Anthropic accepts.

:class:`FakeProviderServer` holds the plumbing shared with the OpenAI fake.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the fake saw it; header names are lower-cased, ``body`` is decoded JSON."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any

    @property
    def api_key(self) -> str | None:
        """The key the client presented: ``x-api-key`` (the Claude Code CLI's way) or
        ``Authorization: Bearer`` (the way newer SDKs send an API key)."""
        bearer = self.headers.get("authorization", "")
        if "x-api-key" in self.headers:
            return self.headers["x-api-key"]
        return bearer[len("Bearer ") :] if bearer.startswith("Bearer ") else None


@dataclass(frozen=True)
class ErrorReply:
    """Answer with ``status`` and a JSON ``body`` (plus ``headers``)."""

    status: int
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class StallReply:
    """Hold the request open until :meth:`FakeProviderServer.release_stalled`, then answer with
    ``then`` (or the next queued reply if None). A client's timeout fires first."""

    then: object | None = None
    released: asyncio.Event = field(default_factory=asyncio.Event)


class FakeProviderServer:
    """An aiohttp server on 127.0.0.1, port 0, with a reply queue and a request record.

    Subclasses add the routes and the provider's reply shapes. With nothing queued a call is
    answered by :meth:`_unscripted`, an error, so a test that forgot a reply fails loudly.
    """

    name = "fake-provider"

    def __init__(self) -> None:
        self.requests: list[ReceivedRequest] = []
        self.url = ""
        self._replies: deque[object] = deque()
        self._stalls: list[StallReply] = []
        self._runner: web.AppRunner | None = None
        self._arrived = asyncio.Condition()
        # With nothing queued, a responder answers instead of the unscripted error; and what
        # successful answers reported, as the provider would bill it.
        self.responder: Callable[[ReceivedRequest], object] | None = None
        self.served_tokens = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> Self:
        """Starts listening; :attr:`url` is the base URL to give the client."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes(self._routes())
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def close(self) -> None:
        """Releases stalled requests and stops the server."""
        self.release_stalled()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- scripting -------------------------------------------------------------------------

    def enqueue(self, reply: object) -> None:
        """Queues one reply (a provider reply, :class:`ErrorReply` or :class:`StallReply`)."""
        self._replies.append(reply)

    def enqueue_stall(self, then: object | None = None) -> StallReply:
        """Queues a reply that holds the request open until :meth:`release_stalled`."""
        stall = StallReply(then=then)
        self.enqueue(stall)
        return stall

    def release_stalled(self) -> None:
        """Lets every stalled request (current and queued) go on."""
        for stall in self._stalls:
            stall.released.set()
        for reply in self._replies:
            if isinstance(reply, StallReply):
                reply.released.set()

    @property
    def pending(self) -> int:
        """Replies still queued."""
        return len(self._replies)

    @property
    def last(self) -> ReceivedRequest:
        """The most recent request."""
        return self.requests[-1]

    async def wait_for_requests(self, count: int) -> None:
        """Waits until at least ``count`` requests have arrived (no polling, no sleeps)."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)

    # -- for subclasses ----------------------------------------------------------------------

    def _routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    def _unscripted(self) -> ErrorReply:
        raise NotImplementedError

    async def _record(self, request: web.Request) -> ReceivedRequest:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        received = ReceivedRequest(
            method=request.method,
            path=request.path,
            headers={key.lower(): value for key, value in request.headers.items()},
            body=body,
        )
        async with self._arrived:
            self.requests.append(received)
            self._arrived.notify_all()
        return received

    async def _take_reply(self, received: ReceivedRequest | None = None) -> object:
        if not self._replies and self.responder is not None and received is not None:
            return self.responder(received)
        reply = self._replies.popleft() if self._replies else self._unscripted()
        if isinstance(reply, StallReply):
            self._stalls.append(reply)
            await reply.released.wait()
            if reply.then is not None:
                return reply.then
            return self._replies.popleft() if self._replies else self._unscripted()
        return reply


def error_response(reply: ErrorReply) -> web.Response:
    """The aiohttp response for an :class:`ErrorReply`."""
    return web.json_response(dict(reply.body), status=reply.status, headers=dict(reply.headers))


# ---- Anthropic --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageReply:
    """A successful Messages answer: ``content`` holds blocks in the API's shape
    (``{"type": "text", "text"}``, ``{"type": "tool_use", "id", "name", "input"}``).

    ``hold_stream`` pauses a streamed answer after ``message_start`` until
    :meth:`FakeProviderServer.release_stalled`, to show that a proxy forwards events as they
    come rather than after the whole answer.
    """

    content: tuple[Mapping[str, Any], ...]
    stop_reason: str = "end_turn"
    input_tokens: int = 10
    output_tokens: int = 5
    usage_extra: Mapping[str, Any] = field(default_factory=dict)
    hold_stream: bool = False


def anthropic_error_body(error_type: str, message: str) -> dict[str, Any]:
    """The real API's error document."""
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": _request_id(),
    }


class FakeAnthropic(FakeProviderServer):
    """The Anthropic Messages API on localhost (see the module docstring)."""

    name = "fake-anthropic"

    def __init__(self, api_key: str = "sk-ant-fake-key") -> None:
        super().__init__()
        self.api_key = api_key

    # -- scripting -------------------------------------------------------------------------

    def enqueue_message(
        self,
        content: list[Mapping[str, Any]],
        *,
        stop_reason: str = "end_turn",
        input_tokens: int = 10,
        output_tokens: int = 5,
        usage_extra: Mapping[str, Any] | None = None,
        hold_stream: bool = False,
    ) -> MessageReply:
        """Queues an answer made of content blocks."""
        reply = MessageReply(
            content=tuple(content),
            stop_reason=stop_reason,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            usage_extra=usage_extra or {},
            hold_stream=hold_stream,
        )
        self.enqueue(reply)
        return reply

    def enqueue_text(
        self,
        text: str,
        *,
        stop_reason: str = "end_turn",
        input_tokens: int = 10,
        output_tokens: int = 5,
        hold_stream: bool = False,
    ) -> MessageReply:
        """Queues a plain text answer."""
        return self.enqueue_message(
            [{"type": "text", "text": text}],
            stop_reason=stop_reason,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            hold_stream=hold_stream,
        )

    def enqueue_tool_use(
        self,
        name: str,
        tool_input: Mapping[str, Any],
        *,
        tool_id: str | None = None,
        text: str | None = None,
        input_tokens: int = 10,
        output_tokens: int = 5,
    ) -> MessageReply:
        """Queues an answer calling one tool, after an optional text block."""
        blocks: list[Mapping[str, Any]] = [{"type": "text", "text": text}] if text else []
        blocks.append(
            {
                "type": "tool_use",
                "id": tool_id or f"toolu_{secrets.token_hex(12)}",
                "name": name,
                "input": dict(tool_input),
            }
        )
        return self.enqueue_message(
            blocks, stop_reason="tool_use", input_tokens=input_tokens, output_tokens=output_tokens
        )

    def enqueue_error(
        self, status: int, error_type: str, message: str, *, retry_after_ms: int | None = None
    ) -> ErrorReply:
        """Queues an error in the real shape, e.g. ``(500, "api_error", "Internal server
        error")`` or ``(529, "overloaded_error", "Overloaded")``. ``retry_after_ms`` makes the
        SDK's retry wait that long instead of its back-off."""
        headers = {"request-id": _request_id()}
        if retry_after_ms is not None:
            headers["retry-after-ms"] = str(retry_after_ms)
        reply = ErrorReply(status, anthropic_error_body(error_type, message), headers)
        self.enqueue(reply)
        return reply

    # -- protocol --------------------------------------------------------------------------

    def _routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/messages", self._messages),
            web.post("/v1/messages/count_tokens", self._count_tokens),
            web.route("*", "/{tail:.*}", self._not_found),
        ]

    def _unscripted(self) -> ErrorReply:
        return ErrorReply(
            500, anthropic_error_body("api_error", f"{self.name}: no reply queued for this call")
        )

    async def _not_found(self, request: web.Request) -> web.Response:
        await self._record(request)
        return error_response(ErrorReply(404, anthropic_error_body("not_found_error", "Not Found")))

    async def _count_tokens(self, request: web.Request) -> web.Response:
        received = await self._record(request)
        refusal = self._check_headers(received)
        if refusal is not None:
            return error_response(refusal)
        return web.json_response({"input_tokens": _estimate_tokens(received.body)})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        received = await self._record(request)
        refusal = self._check_headers(received) or _check_messages_body(received.body)
        if refusal is not None:
            return error_response(refusal)
        reply = await self._take_reply(received)
        if isinstance(reply, ErrorReply):
            return error_response(reply)
        if not isinstance(reply, MessageReply):
            raise TypeError(f"{self.name} cannot send {reply!r}")
        self.served_tokens += reply.input_tokens + reply.output_tokens
        message = _message_document(reply, received.body["model"])
        headers = {"request-id": _request_id()}
        if received.body.get("stream"):
            return await self._stream(request, reply, message, headers)
        return web.json_response(message, headers=headers)

    def _check_headers(self, received: ReceivedRequest) -> ErrorReply | None:
        headers = received.headers
        key = received.api_key
        if key is None:
            return ErrorReply(
                401, anthropic_error_body("authentication_error", "x-api-key header is required")
            )
        if not secrets.compare_digest(key.encode(), self.api_key.encode()):
            reason = "invalid x-api-key" if "x-api-key" in headers else "Invalid bearer token"
            return ErrorReply(401, anthropic_error_body("authentication_error", reason))
        if "anthropic-version" not in headers:
            return ErrorReply(
                400,
                anthropic_error_body(
                    "invalid_request_error", "anthropic-version: header is required"
                ),
            )
        return None

    async def _stream(
        self,
        request: web.Request,
        reply: MessageReply,
        message: dict[str, Any],
        headers: dict[str, str],
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for index, (event, data) in enumerate(sse_events(reply, message)):
            await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
            if index == 0 and reply.hold_stream:
                stall = StallReply()
                self._stalls.append(stall)
                await stall.released.wait()
        await response.write_eof()
        return response


def sse_events(reply: MessageReply, message: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The event sequence the real API streams for ``message``: ``message_start``, per block
    ``content_block_start`` / ``content_block_delta`` / ``content_block_stop`` (with a ``ping``
    after the first start), ``message_delta`` with the stop reason and usage, ``message_stop``.
    """
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**message["usage"], "output_tokens": 1},
    }
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start})
    ]
    for index, block in enumerate(message["content"]):
        if block["type"] == "tool_use":
            opening = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            raw = json.dumps(block["input"])
            deltas = [{"type": "input_json_delta", "partial_json": part} for part in _chunks(raw)]
            deltas.insert(0, {"type": "input_json_delta", "partial_json": ""})
        else:
            opening = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": part} for part in _chunks(block["text"])]
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": opening},
            )
        )
        if index == 0:
            events.append(("ping", {"type": "ping"}))
        events += [
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
            for d in deltas
        ]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": reply.output_tokens},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _message_document(reply: MessageReply, model: str) -> dict[str, Any]:
    return {
        "id": f"msg_{secrets.token_hex(12)}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [dict(block) for block in reply.content],
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": reply.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": reply.output_tokens,
            **reply.usage_extra,
        },
    }


def _check_messages_body(body: object) -> ErrorReply | None:
    """The real API's request checks that matter to a client's mapping."""

    def invalid(message: str) -> ErrorReply:
        return ErrorReply(400, anthropic_error_body("invalid_request_error", message))

    if not isinstance(body, dict):
        return invalid("The request body is not valid JSON.")
    for key, kind in (("model", str), ("max_tokens", int), ("messages", list)):
        if key not in body:
            return invalid(f"{key}: Field required")
        if not isinstance(body[key], kind):
            return invalid(f"{key}: Input should be a valid {kind.__name__}")
    if "tool_choice" in body and not body.get("tools"):
        return invalid("tool_choice may only be specified while providing tools")
    for index, tool in enumerate(body.get("tools") or []):
        schema = tool.get("input_schema") if isinstance(tool, dict) else None
        if not isinstance(schema, dict) or schema.get("type") != "object":
            return invalid(f"tools.{index}.custom.input_schema.type: Input should be 'object'")
    previous_tool_ids: list[str] = []
    for index, message in enumerate(body["messages"]):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return invalid(f"messages.{index}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            return invalid(f"messages.{index}.content: Input should be a valid list")
        if any(b.get("type") == "text" and not b.get("text") for b in blocks):
            return invalid("messages: text content blocks must be non-empty")
        results = [b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"]
        for position, tool_use_id in enumerate(results):
            if tool_use_id not in previous_tool_ids:
                return invalid(
                    f"messages.{index}.content.{position}: unexpected `tool_use_id` found in "
                    f"`tool_result` blocks: {tool_use_id}. Each `tool_result` block must have a "
                    "corresponding `tool_use` block in the previous message."
                )
        missing = [tool_id for tool_id in previous_tool_ids if tool_id not in results]
        if missing:
            return invalid(
                f"messages.{index}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
                "corresponding `tool_result` block in the next message."
            )
        previous_tool_ids = [b["id"] for b in blocks if b.get("type") == "tool_use"]
    return None


def _chunks(text: str, size: int = 8) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def answer_to_the_cap(received: ReceivedRequest) -> MessageReply:
    """A model that always writes until ``max_tokens``: the most a call can be billed."""
    body = received.body
    return MessageReply(
        content=({"type": "text", "text": "word " * 8},),
        stop_reason="max_tokens",
        input_tokens=_estimate_tokens(body.get("messages")),
        output_tokens=int(body["max_tokens"]),
    )


def _estimate_tokens(body: object) -> int:
    return max(1, len(json.dumps(body)) // 4)


def _request_id() -> str:
    return f"req_{secrets.token_hex(12)}"
