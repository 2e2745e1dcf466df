"""HTTP/1.1 inside a tunnel the gateway terminates: requests rewritten, responses untouched.

One client connection, one upstream connection (TLS to the real host, verified): requests are
read from the client one after another (keep-alive and pipelining work, as git's smart HTTP
needs: several requests on one connection), each head rewritten (inject.py) and checked, its
body forwarded by its own framing; everything the upstream sends goes back to the client as it
comes, so responses need no parsing at all. When either side ends, so does the pair.

A request's ``Host`` must name the tunnel's host: the credential goes to the name the policy and
the grant allowed, never to another virtual host reached on the same address (domain fronting
on a shared CDN). A request asking for an ``Upgrade`` (WebSocket) is forwarded, and after it the
connection is spliced as it stands: what follows is no longer HTTP.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from typing import Protocol

from orchestrator.egress.inject import Header, Injection, rewrite_headers
from orchestrator.egress.tls_stream import CHUNK_BYTES, TlsServerStream

MAX_HEAD_BYTES = 32 * 1024
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VERSIONS = ("HTTP/1.1", "HTTP/1.0")
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")


class Meter(Protocol):
    """What the gateway counts on a connection."""

    bytes_sent: int
    bytes_received: int
    last_active: float


class InterceptError(Exception):
    """A request the gateway will not forward: answered with ``status`` and the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Interception:
    """The request side of one terminated tunnel to ``host:port``."""

    def __init__(
        self,
        client: TlsServerStream,
        upstream: asyncio.StreamWriter,
        injections: Sequence[Injection],
        host: str,
        port: int,
        meter: Meter,
        clock: Callable[[], float],
    ) -> None:
        self._client = client
        self._upstream = upstream
        self._injections = tuple(injections)
        self._hosts = _host_values(host, port)
        self._meter = meter
        self._clock = clock
        self.injected: list[str] = []
        self.requests = 0

    async def requests_up(self) -> None:
        """Forwards requests until the client ends."""
        while True:
            try:
                head = await self._client.readuntil(b"\r\n\r\n", MAX_HEAD_BYTES)
            except asyncio.IncompleteReadError as exc:
                if exc.partial.strip():
                    raise InterceptError(400, "the request head ended early") from None
                return
            except ValueError:
                raise InterceptError(431, "request head too large") from None
            method, target, version, headers = _parse(head)
            self._check_host(headers)
            rewritten, used = rewrite_headers(headers, self._injections)
            for name in used:
                if name not in self.injected:
                    self.injected.append(name)
            framing = _framing(headers)
            out = f"{method} {target} {version}\r\n" + "".join(
                f"{name}: {value}\r\n" for name, value in rewritten
            )
            data = (out + "\r\n").encode("latin-1")
            self.requests += 1
            self._send(data)
            await self._upstream.drain()
            if framing is None:
                await self._copy_chunked()
            else:
                await self._copy_exactly(framing)
            if any(name.lower() == "upgrade" for name, _ in headers):
                await self._splice_rest()
                return

    def _check_host(self, headers: Sequence[Header]) -> None:
        values = [value.strip().lower() for name, value in headers if name.lower() == "host"]
        if len(values) != 1 or values[0] not in self._hosts:
            raise InterceptError(
                421, f"a request in this tunnel must name its host ({sorted(self._hosts)[0]})"
            )

    def _send(self, data: bytes) -> None:
        self._meter.bytes_sent += len(data)
        self._meter.last_active = self._clock()
        self._upstream.write(data)

    async def _copy_exactly(self, remaining: int) -> None:
        while remaining > 0:
            data = await self._client.read(min(CHUNK_BYTES, remaining))
            if not data:
                raise asyncio.IncompleteReadError(b"", remaining)
            remaining -= len(data)
            self._send(data)
            await self._upstream.drain()

    async def _copy_chunked(self) -> None:
        while True:
            try:
                line = await self._client.readuntil(b"\r\n", 1024)
            except ValueError:
                raise InterceptError(400, "malformed chunk size") from None
            size_text = line[:-2].split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise InterceptError(400, "malformed chunk size")
            size = int(size_text, 16)
            self._send(line)
            if size == 0:
                while True:  # trailers, then the empty line
                    try:
                        trailer = await self._client.readuntil(b"\r\n", MAX_HEAD_BYTES)
                    except ValueError:
                        raise InterceptError(400, "trailers too large") from None
                    self._send(trailer)
                    if trailer == b"\r\n":
                        await self._upstream.drain()
                        return
            await self._copy_exactly_then_crlf(size)

    async def _copy_exactly_then_crlf(self, size: int) -> None:
        await self._copy_exactly(size)
        end = await self._client.readexactly(2)
        if end != b"\r\n":
            raise InterceptError(400, "malformed chunk")
        self._send(end)
        await self._upstream.drain()

    async def _splice_rest(self) -> None:
        while True:
            data = await self._client.read()
            if not data:
                break
            self._send(data)
            await self._upstream.drain()


async def responses_down(
    upstream: asyncio.StreamReader,
    client: TlsServerStream,
    meter: Meter,
    clock: Callable[[], float],
) -> None:
    """Everything the upstream sends, to the client as it comes."""
    while True:
        data = await upstream.read(CHUNK_BYTES)
        if not data:
            return
        meter.bytes_received += len(data)
        meter.last_active = clock()
        await client.write(data)


def error_response(status: int, message: str) -> bytes:
    """A one-line plain-text answer the gateway itself gives inside the tunnel."""
    body = (message + "\n").encode("utf-8", "replace")
    phrase = re.sub(r"[^\x20-\x7e]", "?", message)[:200]
    return (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("ascii") + body


def _host_values(host: str, port: int) -> frozenset[str]:
    name = f"[{host}]" if ":" in host else host
    values = {f"{name}:{port}"}
    if port == 443:
        values.add(name)
    return frozenset(values)


def _parse(head: bytes) -> tuple[str, str, str, list[Header]]:
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or parts[2] not in _VERSIONS:
        raise InterceptError(400, "malformed request line")
    if parts[0] == "CONNECT":
        raise InterceptError(400, "CONNECT inside a tunnel is not forwarded")
    headers: list[Header] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise InterceptError(400, "malformed header line")
        headers.append((name, value.strip(" \t")))
    return parts[0], parts[1], parts[2], headers


def _framing(headers: Sequence[Header]) -> int | None:
    """The body's length (0: none), None for chunked; InterceptError when ambiguous."""
    encodings = [v for n, v in headers if n.lower() == "transfer-encoding"]
    lengths = [v for n, v in headers if n.lower() == "content-length"]
    if encodings:
        if lengths:
            raise InterceptError(400, "both Transfer-Encoding and Content-Length")
        if len(encodings) != 1 or encodings[0].strip().lower() != "chunked":
            raise InterceptError(400, "only Transfer-Encoding: chunked is forwarded")
        return None
    if not lengths:
        return 0
    if len(set(lengths)) != 1 or not lengths[0].isdigit():
        raise InterceptError(400, "malformed Content-Length")
    return int(lengths[0])
