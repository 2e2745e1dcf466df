"""The worker API's connection guard on real loopback sockets: whole-head, body, idle and send
deadlines; per-source and total caps closing excess connections unread; counted in metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from orchestrator.http_api.app import start_worker_api
from orchestrator.http_api.connection_limits import ConnectionLimits
from orchestrator.metrics import Metrics
from tests.helpers import wait_for

LIMITS = ConnectionLimits(
    max_connections=6,
    max_per_source=3,
    header_timeout_s=0.6,
    body_timeout_s=0.6,
    idle_timeout_s=0.6,
)
HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
# Well past every deadline above (and the sweep that enforces them): a connection still open
# by then was not closed by the guard.
CLOSE_WITHIN_S = 5.0


def _app() -> web.Application:
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (32 * 1024 * 1024))

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/health", health)
    app.router.add_post("/echo", echo)
    app.router.add_get("/big", big)
    return app


Server = tuple[int, Metrics, web.AppRunner]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def start(limits: ConnectionLimits = LIMITS) -> Server:
        metrics = Metrics()
        runner, port = await start_worker_api(_app(), "127.0.0.1", 0, limits, metrics)
        runners.append(runner)
        return port, metrics, runner

    yield start
    for runner in runners:
        await runner.cleanup()


async def _connect(
    port: int, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _closed_by_server(
    reader: asyncio.StreamReader, keep_sending: Callable[[], Any] | None = None
) -> bytes:
    """Reads until the server closes the connection (EOF or reset); returns what it sent.
    ``keep_sending`` runs meanwhile, every 0.1 s, as a slow client would."""
    received = b""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CLOSE_WITHIN_S
    while loop.time() < deadline:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), timeout=0.1)
        except TimeoutError:
            if keep_sending is not None:
                with contextlib.suppress(ConnectionError):
                    await keep_sending()
            continue
        except ConnectionError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server kept the connection open for {CLOSE_WITHIN_S} s")


def _sample(metrics: Metrics, name: str, reason: str) -> float:
    value = metrics.registry.get_sample_value(name, {"reason": reason})
    return value or 0.0


async def test_a_head_sent_one_line_at_a_time_is_cut_off_as_a_whole(serve: Any) -> None:
    port, metrics, _ = await serve()
    reader, writer = await _connect(port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    lines = 0

    async def one_more_header_line() -> None:
        nonlocal lines
        lines += 1
        writer.write(f"X-Slow-{lines}: a\r\n".encode())
        await writer.drain()

    # Each line arrives well within the header timeout; only the whole head has a deadline.
    received = await _closed_by_server(reader, one_more_header_line)
    assert received == b""
    assert lines >= 3
    assert _sample(metrics, "ironclaw_worker_api_connections_timed_out_total", "header_timeout")
    writer.close()


async def test_a_connection_that_sends_nothing_is_closed(serve: Any) -> None:
    port, metrics, _ = await serve()
    reader, writer = await _connect(port)
    assert await _closed_by_server(reader) == b""
    assert _sample(metrics, "ironclaw_worker_api_connections_timed_out_total", "header_timeout")
    writer.close()


async def test_keep_alive_serves_requests_then_closes_when_idle(serve: Any) -> None:
    port, metrics, _ = await serve()
    reader, writer = await _connect(port)
    for _ in range(3):
        writer.write(HEALTH)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        assert await reader.readexactly(length) == b'{"status": "ok"}'
    assert await _closed_by_server(reader) == b""
    assert _sample(metrics, "ironclaw_worker_api_connections_timed_out_total", "idle_timeout")
    writer.close()


async def test_a_large_body_sent_at_once_is_served(serve: Any) -> None:
    port, _, _ = await serve()
    reader, writer = await _connect(port)
    body = b"b" * (4 * 1024 * 1024)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
    writer.write(body)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert await reader.readexactly(len(body)) == body
    writer.close()


async def test_a_body_that_stops_arriving_is_cut_off(serve: Any) -> None:
    port, metrics, _ = await serve()
    reader, writer = await _connect(port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")

    async def one_more_byte() -> None:
        writer.write(b"x")
        await writer.drain()

    await _closed_by_server(reader, one_more_byte)
    assert _sample(metrics, "ironclaw_worker_api_connections_timed_out_total", "body_timeout")
    writer.close()


async def test_a_response_left_unread_is_cut_off(serve: Any) -> None:
    port, metrics, _ = await serve()
    _, writer = await _connect(port)
    writer.transport.pause_reading()  # type: ignore[attr-defined]
    writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    await wait_for(
        lambda: _sample(metrics, "ironclaw_worker_api_connections_timed_out_total", "send_timeout"),
        timeout=CLOSE_WITHIN_S,
        what="the unread response's connection to be closed",
    )
    writer.close()


async def test_connections_over_the_per_source_cap_are_closed_unread(serve: Any) -> None:
    port, metrics, runner = await serve()
    held = [await _connect(port) for _ in range(LIMITS.max_per_source)]
    await wait_for(lambda: _open(runner) == LIMITS.max_per_source, what="the held connections")
    reader, writer = await _connect(port)
    writer.write(HEALTH)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    assert await _closed_by_server(reader) == b""  # not even an error response: unread
    assert _sample(metrics, "ironclaw_worker_api_connections_refused_total", "per_source") == 1
    # Another source is not held back by this one.
    other_reader, other_writer = await _connect(port, source="127.0.0.2")
    other_writer.write(HEALTH)
    assert (await other_reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    # A slot freed is a slot again.
    held[0][1].close()
    await wait_for(lambda: _open(runner) == LIMITS.max_per_source, what="the freed slot")
    again_reader, again_writer = await _connect(port)
    again_writer.write(HEALTH)
    assert (await again_reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    for _, w in [*held[1:], (other_reader, other_writer), (again_reader, again_writer)]:
        w.close()
    writer.close()


async def test_connections_over_the_total_cap_are_closed_unread(serve: Any) -> None:
    port, metrics, runner = await serve()
    held = []
    for source in ("127.0.0.1", "127.0.0.2"):
        held += [await _connect(port, source) for _ in range(LIMITS.max_per_source)]
    await wait_for(lambda: _open(runner) == LIMITS.max_connections, what="the held connections")
    reader, writer = await _connect(port, source="127.0.0.3")
    assert await _closed_by_server(reader) == b""
    assert _sample(metrics, "ironclaw_worker_api_connections_refused_total", "total") == 1
    assert metrics.registry.get_sample_value("ironclaw_worker_api_connections") == 6
    for _, w in held:
        w.close()
    writer.close()


async def test_a_flood_of_refused_connections_is_counted_and_logged_a_few_times(
    serve: Any,
) -> None:
    port, metrics, runner = await serve()
    site = next(iter(runner.sites))
    guard = site.guard  # type: ignore[attr-defined]
    held = [await _connect(port) for _ in range(LIMITS.max_per_source)]
    refused = [await _connect(port) for _ in range(50)]
    for reader, _ in refused:
        await _closed_by_server(reader)
    assert _sample(metrics, "ironclaw_worker_api_connections_refused_total", "per_source") == 50
    assert guard._refused_from_source.total == 50
    for _, w in held + refused:
        w.close()


def _open(runner: web.AppRunner) -> int:
    site = next(iter(runner.sites))
    return int(site.guard.open_connections)  # type: ignore[attr-defined]
