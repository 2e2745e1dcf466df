"""Stand-in providers for the proxy benchmark's experiments (``--experiments``): what the
proxy path would cost with a cheaper upstream client. They are not the product; they keep its
request and response mapping (``build_request``, ``parse_response``) and change only how the
request travels, so the difference to the ``ironclaw`` rows is the client's cost alone.

* ``sdk-post``: the official SDK's ``AsyncOpenAI.post`` with the body as ``build_request``
  made it, which skips ``chat.completions.create``'s per-call parameter transform.
* ``aiohttp``: one ``aiohttp.ClientSession`` (keep-alive pool) instead of the SDK and httpx;
  the answer is still validated into the SDK's ``ChatCompletion``.
* ``rawhttp``: a minimal keep-alive HTTP/1.1 client on ``asyncio.Protocol`` (this package's
  ``wire`` framing): what is left when the upstream client costs next to nothing, i.e. the
  worker API's own share.
Error handling is minimal: a failure is a ``ProviderError`` (the load generator counts it).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import openai
from openai.types.chat import ChatCompletion

from bench.wire import Message, take_message
from orchestrator.errors import ProviderError
from orchestrator.llm.openai_provider import build_request, parse_response
from orchestrator.llm.types import CompletionRequest, CompletionResult, LlmProvider
from orchestrator.settings import Settings

EXPERIMENTAL_PROVIDERS = ("sdk-post", "aiohttp", "rawhttp")


class SdkPostProvider:
    """The official SDK without the parameter transform of ``chat.completions.create``."""

    def __init__(self, settings: Settings) -> None:
        key = settings.openai_api_key
        self._client = openai.AsyncOpenAI(
            api_key=key.reveal() if key else "unused",
            base_url=settings.llm_base_url,
            timeout=settings.llm_timeout_s,
            max_retries=settings.llm_max_retries,
        )

    @property
    def name(self) -> str:
        return "openai-compatible (experiment: sdk post)"

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        params = build_request(request, official_api=False)
        try:
            completion = await self._client.post(
                "/chat/completions", body=params, cast_to=ChatCompletion
            )
        except openai.OpenAIError as exc:
            raise ProviderError(f"experiment sdk-post: {type(exc).__name__}") from None
        return parse_response(completion.model_dump(), request)

    async def aclose(self) -> None:
        await self._client.close()


class AiohttpProvider:
    """Chat Completions over one aiohttp session; no SDK on the request path."""

    def __init__(self, settings: Settings) -> None:
        key = settings.openai_api_key
        self._url = f"{(settings.llm_base_url or '').rstrip('/')}/chat/completions"
        self._headers = {
            "Authorization": f"Bearer {key.reveal() if key else 'unused'}",
            "Content-Type": "application/json",
        }
        self._timeout = aiohttp.ClientTimeout(total=settings.llm_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    @property
    def name(self) -> str:
        return "openai-compatible (experiment: aiohttp)"

    def _get_session(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=60),
                timeout=self._timeout,
            )
        return self._session

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        params: dict[str, Any] = build_request(request, official_api=False)
        session = self._get_session()
        try:
            async with session.post(
                self._url, data=json.dumps(params), headers=self._headers
            ) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderError(f"experiment aiohttp: {type(exc).__name__}") from None
        if status != 200:
            raise ProviderError(f"experiment aiohttp: HTTP {status}")
        return parse_response(ChatCompletion.model_validate_json(body).model_dump(), request)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class _UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to the upstream; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Message] | None = None
        self.closed = False
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        message = take_message(self._buffer)
        if message is not None and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("upstream closed the connection"))


class RawHttpProvider:
    """Chat Completions over a pool of bare keep-alive connections."""

    def __init__(self, settings: Settings) -> None:
        key = settings.openai_api_key
        url = urlsplit(f"{(settings.llm_base_url or '').rstrip('/')}/chat/completions")
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or 80
        self._head = (
            f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Authorization: Bearer {key.reveal() if key else 'unused'}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode("latin-1")
        self._idle: list[_UpstreamConnection] = []
        self._all: set[_UpstreamConnection] = set()

    @property
    def name(self) -> str:
        return "openai-compatible (experiment: raw http)"

    async def _connection(self) -> _UpstreamConnection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(_UpstreamConnection, self._host, self._port)
        self._all.add(connection)
        return connection

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        body = json.dumps(build_request(request, official_api=False)).encode()
        try:
            connection = await self._connection()
            assert connection.transport is not None
            connection.waiter = asyncio.get_running_loop().create_future()
            connection.transport.write(self._head + b"%d\r\n\r\n" % len(body) + body)
            response = await connection.waiter
        except (OSError, ConnectionError) as exc:
            raise ProviderError(f"experiment rawhttp: {type(exc).__name__}") from None
        connection.waiter = None
        self._idle.append(connection)
        if response.status != 200:
            raise ProviderError(f"experiment rawhttp: HTTP {response.status}")
        return parse_response(
            ChatCompletion.model_validate_json(response.body).model_dump(), request
        )

    async def aclose(self) -> None:
        for connection in self._all:
            if connection.transport is not None:
                connection.transport.close()


def build_experimental_provider(kind: str, settings: Settings) -> LlmProvider:
    if kind == "sdk-post":
        return SdkPostProvider(settings)
    if kind == "aiohttp":
        return AiohttpProvider(settings)
    if kind == "rawhttp":
        return RawHttpProvider(settings)
    raise ValueError(f"unknown experimental provider {kind!r}: {', '.join(EXPERIMENTAL_PROVIDERS)}")
