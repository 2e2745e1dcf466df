"""The worker API's connections, bounded: how many (from one source, in all) and how long each
phase may take. A job can open connections at will; without this, 1,100 connections sending a
header line every 10 s held 1,100 descriptors for good and took the whole process down.

aiohttp (3.10-3.14) bounds neither: its keep-alive timer starts at the accept and is not moved
by a partial request head, but defaults to an hour, and nothing bounds the time a body takes.
So every connection goes through :class:`GuardedConnection`, an asyncio protocol in front of
aiohttp's own ``RequestHandler``:

* at the accept, a connection over the per-source or total cap is aborted before a byte is read
  (no aiohttp handler is made for it), counted and logged at a bounded rate;
* each connection has one deadline for its current phase: the whole head within the header
  timeout (from its first byte, or from the accept), the whole body within the body timeout,
  the next request within the idle timeout, a response read within the idle timeout. A sweep
  every second aborts what is overdue, so a request costs a few attribute stores and no timer.

The phases are learnt from two public hooks of aiohttp's low-level ``Server``: the request
factory (called once a head is parsed, with its payload stream) and the request handler
(returns once the response is made).
"""

from __future__ import annotations

import asyncio
import math
import ssl
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from orchestrator.http_api.connection_limits import ConnectionLimits
from orchestrator.log_throttle import ThrottledLog
from orchestrator.logging import get_logger
from orchestrator.metrics import Metrics

log = get_logger(__name__)

# Phases of a connection; each has its own deadline (none while a handler runs).
HEAD, BODY, BUSY, IDLE = range(4)
_TIMEOUT_REASONS = {HEAD: "header_timeout", BODY: "body_timeout", IDLE: "idle_timeout"}
_NEVER = math.inf


class GuardedConnection(asyncio.Protocol):
    """One accepted connection: admitted or aborted, then its phase deadlines."""

    __slots__ = (
        "_guard",
        "_handler_done",
        "_inner",
        "_payload",
        "_transport",
        "deadline",
        "phase",
        "send_deadline",
        "source",
    )

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard
        self._inner: RequestHandler | None = None
        self._transport: asyncio.Transport | None = None
        self._payload: StreamReader | None = None
        self._handler_done = False
        self.source = ""
        self.phase = HEAD
        self.deadline = _NEVER
        self.send_deadline = _NEVER

    # ------------------------------------------------------------ asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        guard = self._guard
        source = _source_of(transport)
        if not guard.admit(source):
            transport.abort()
            return
        self._transport = transport
        self.source = source
        self.deadline = guard.loop.time() + guard.limits.header_timeout_s
        inner = guard.make_handler()
        self._inner = inner
        guard.attach(inner, self)
        inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        inner = self._inner
        if inner is None:
            return
        if self.phase == IDLE:
            self.phase = HEAD
            self.deadline = self._guard.loop.time() + self._guard.limits.header_timeout_s
        inner.data_received(data)

    def eof_received(self) -> None:
        # aiohttp's handler returns nothing here either: the transport closes after a FIN.
        if self._inner is not None:
            self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        inner = self._inner
        if inner is None:
            return  # refused at the accept: never counted
        self._inner = None
        self._payload = None
        self._guard.detach(inner, self)
        inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            # The client stopped reading what we send: it has the idle timeout to resume.
            self.send_deadline = self._guard.loop.time() + self._guard.limits.idle_timeout_s
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self.send_deadline = _NEVER
            self._inner.resume_writing()

    # ------------------------------------------------------------ phases (from the guard's hooks)

    def head_complete(self, payload: StreamReader) -> None:
        if payload.is_eof():
            self.phase = BUSY
            self.deadline = _NEVER
        else:
            self._payload = payload
            self._handler_done = False
            self.phase = BODY
            self.deadline = self._guard.loop.time() + self._guard.limits.body_timeout_s

    def handler_done(self) -> None:
        if self.phase == BODY and self._payload is not None and not self._payload.is_eof():
            # Answered before the body was read (a refusal): aiohttp reads and drops the rest
            # for a few seconds; the body deadline still holds.
            self._handler_done = True
            return
        self._idle(self._guard.loop.time())

    def _idle(self, now: float) -> None:
        self._payload = None
        self.phase = IDLE
        self.deadline = now + self._guard.limits.idle_timeout_s

    def overdue(self, now: float) -> str | None:
        """Why this connection must be closed now, if it must (called by the sweep)."""
        if now >= self.send_deadline:
            return "send_timeout"
        if now < self.deadline:
            return None
        if self.phase == BODY and self._payload is not None and self._payload.is_eof():
            # The body did arrive in time; the sweep is only the first to look.
            if self._handler_done:
                self._idle(now)
            else:
                self.phase, self.deadline, self._payload = BUSY, _NEVER, None
            return None
        return _TIMEOUT_REASONS.get(self.phase)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


def _source_of(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "unknown"


class ConnectionGuard:
    """Admission, per-source accounting and the deadline sweep of one listening site."""

    def __init__(
        self, server: web.Server, limits: ConnectionLimits, metrics: Metrics | None = None
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.limits = limits
        self._server = server
        self._metrics = metrics
        self._connections: dict[RequestHandler, GuardedConnection] = {}
        self._per_source: dict[str, int] = {}
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._refused_from_source = ThrottledLog(
            log, "worker API connection refused: too many open connections from one source"
        )
        self._refused_in_total = ThrottledLog(
            log, "worker API connection refused: the worker API's connection limit is reached"
        )
        self._timed_out = {
            reason: ThrottledLog(log, f"worker API connection closed: {reason.replace('_', ' ')}")
            for reason in ("header_timeout", "body_timeout", "send_timeout")
        }
        self._hook(server)
        if metrics is not None:
            metrics.watch_worker_api_connections(lambda: len(self._connections))

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def connections_from(self, source: str) -> int:
        return self._per_source.get(source, 0)

    def protocol(self) -> GuardedConnection:
        """The protocol factory the listening socket is served with."""
        return GuardedConnection(self)

    def make_handler(self) -> RequestHandler:
        return self._server()

    # ------------------------------------------------------------ admission

    def admit(self, source: str) -> bool:
        held = self._per_source.get(source, 0)
        limits = self.limits
        if held >= limits.max_per_source:
            self._refuse("per_source")
            self._refused_from_source.record(
                source=source, open_from_source=held, limit=limits.max_per_source
            )
            return False
        if len(self._connections) >= limits.max_connections:
            self._refuse("total")
            self._refused_in_total.record(
                source=source, open=len(self._connections), limit=limits.max_connections
            )
            return False
        self._per_source[source] = held + 1
        return True

    def _refuse(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.worker_api_connection_refused(reason)

    def attach(self, inner: RequestHandler, connection: GuardedConnection) -> None:
        self._connections[inner] = connection

    def detach(self, inner: RequestHandler, connection: GuardedConnection) -> None:
        if self._connections.pop(inner, None) is None:
            return
        held = self._per_source.get(connection.source, 0) - 1
        if held > 0:
            self._per_source[connection.source] = held
        else:
            self._per_source.pop(connection.source, None)

    # ------------------------------------------------------------ aiohttp hooks

    def _hook(self, server: web.Server) -> None:
        # aiohttp's RequestHandler copies both when it is made: hooked before the first accept.
        make_request = server.request_factory
        handle = server.request_handler
        connections = self._connections

        def request_factory(
            message: RawRequestMessage,
            payload: StreamReader,
            protocol: RequestHandler,
            writer: AbstractStreamWriter,
            task: asyncio.Task[None],
        ) -> web.BaseRequest:
            connection = connections.get(protocol)
            if connection is not None:
                connection.head_complete(payload)
            return make_request(message, payload, protocol, writer, task)

        async def request_handler(request: web.BaseRequest) -> web.StreamResponse:
            try:
                return await handle(request)
            finally:
                connection = connections.get(request.protocol)
                if connection is not None:
                    connection.handler_done()

        server.request_factory = request_factory
        server.request_handler = request_handler

    # ------------------------------------------------------------ deadlines

    def start(self) -> None:
        if self._sweep_handle is None:
            self._sweep_handle = self.loop.call_later(self.limits.sweep_interval_s, self._sweep)

    def close(self) -> None:
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        for throttled in (self._refused_from_source, self._refused_in_total):
            throttled.close()
        for throttled in self._timed_out.values():
            throttled.close()

    def _sweep(self) -> None:
        self._sweep_handle = self.loop.call_later(self.limits.sweep_interval_s, self._sweep)
        now = self.loop.time()
        overdue = [
            (connection, reason)
            for connection in self._connections.values()
            if (reason := connection.overdue(now)) is not None
        ]
        for connection, reason in overdue:
            if self._metrics is not None:
                self._metrics.worker_api_connection_timed_out(reason)
            throttled = self._timed_out.get(reason)
            if throttled is not None:  # idle keep-alive connections closing is routine
                throttled.record(source=connection.source)
            connection.abort()


class GuardedSite(web.BaseSite):
    """An aiohttp site serving a listening socket through a :class:`ConnectionGuard`."""

    __slots__ = ("_guard", "_sock", "_tls")

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: Any,
        guard: ConnectionGuard,
        backlog: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._sock = sock
        self._guard = guard
        self._tls = tls

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"{'https' if self._tls else 'http'}://{host}:{port}"

    @property
    def guard(self) -> ConnectionGuard:
        return self._guard

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        # With TLS the guard sees a connection once its handshake is done; until then the
        # handshake has the header timeout, so a connection that never completes one holds
        # its descriptor no longer than one that never sends a head.
        self._server = await loop.create_server(
            self._guard.protocol,
            sock=self._sock,
            backlog=self._backlog,
            ssl=self._tls,
            ssl_handshake_timeout=(
                self._guard.limits.header_timeout_s if self._tls is not None else None
            ),
        )
        self._guard.start()

    async def stop(self) -> None:
        self._guard.close()
        await super().stop()
