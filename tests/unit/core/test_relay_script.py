"""The isolated-mode relay program on loopback (a real ``python3 -c`` process, as in its
container): it forwards, caps its connections without costing the upstream one, opens no
upstream connection for a client that sends nothing, closes silent connections, and logs
refusals as counts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from orchestrator.containers.relay_script import RELAY_SCRIPT
from tests.helpers import wait_for

RELAY_HOST = "127.0.0.2"  # the relay listens on the upstream's port, on another address
CLOSE_WITHIN_S = 5.0


class Upstream:
    """An echo server counting the connections it was given."""

    def __init__(self) -> None:
        self.accepted = 0
        self.open = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.open -= 1
            writer.close()


@pytest.fixture
async def relay() -> AsyncIterator[Callable[..., Any]]:
    started: list[tuple[subprocess.Popen[str], asyncio.Server]] = []

    async def start(
        extra_ports: tuple[int, ...] = (), **env: str
    ) -> tuple[Upstream, int, subprocess.Popen[str]]:
        upstream = Upstream()
        server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        child = subprocess.Popen(
            [sys.executable, "-c", RELAY_SCRIPT],
            env={
                **os.environ,
                "RELAY_UPSTREAM_HOST": "127.0.0.1",
                "RELAY_PORTS": ",".join(str(p) for p in (port, *extra_ports)),
                "RELAY_BIND": RELAY_HOST,
                **env,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started.append((child, server))
        assert child.stdout is not None
        line = await asyncio.to_thread(child.stdout.readline)
        assert line.strip() == "relay ready", line
        return upstream, port, child

    yield start
    for child, server in started:
        child.kill()
        child.wait(timeout=10)
        server.close()
        await server.wait_closed()


async def _closed(reader: asyncio.StreamReader) -> bool:
    with contextlib.suppress(ConnectionError):
        return await asyncio.wait_for(reader.read(65536), CLOSE_WITHIN_S) == b""
    return True


async def test_forwards_both_ways(relay: Any) -> None:
    upstream, port, _ = await relay()
    reader, writer = await asyncio.open_connection(RELAY_HOST, port)
    writer.write(b"GET /health HTTP/1.1\r\n\r\n")
    assert await reader.readexactly(24) == b"GET /health HTTP/1.1\r\n\r\n"
    writer.write(b"more")
    assert await reader.readexactly(4) == b"more"
    assert upstream.accepted == 1
    writer.close()


async def test_each_port_goes_to_its_own_upstream_port_under_one_cap(relay: Any) -> None:
    gateway = Upstream()  # the egress gateway's port, next to the worker API's
    server = await asyncio.start_server(gateway.handle, "127.0.0.1", 0)
    gateway_port = server.sockets[0].getsockname()[1]
    try:
        worker_api, port, _ = await relay(extra_ports=(gateway_port,), RELAY_MAX_CONNECTIONS="2")
        held = []
        for target in (port, gateway_port):
            reader, writer = await asyncio.open_connection(RELAY_HOST, target)
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            held.append(writer)
        assert (worker_api.accepted, gateway.accepted) == (1, 1)
        # The cap is the job's, whichever port: a third connection is refused.
        reader, writer = await asyncio.open_connection(RELAY_HOST, gateway_port)
        writer.write(b"y")
        assert await _closed(reader)
        assert gateway.accepted == 1
        for held_writer in (*held, writer):
            held_writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_excess_connections_are_aborted_without_reaching_the_upstream(relay: Any) -> None:
    upstream, port, child = await relay(RELAY_MAX_CONNECTIONS="3", RELAY_REPORT_INTERVAL_S="60")
    # A connection that comes and goes first (as the agent's first call does) must not use up
    # the first report line.
    reader, writer = await asyncio.open_connection(RELAY_HOST, port)
    writer.write(b"z")
    assert await reader.readexactly(1) == b"z"
    writer.close()
    await wait_for(lambda: upstream.open == 0, what="the first connection to end")
    held = []
    for _ in range(3):
        reader, writer = await asyncio.open_connection(RELAY_HOST, port)
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        held.append(writer)
    refused = []
    for _ in range(40):
        reader, writer = await asyncio.open_connection(RELAY_HOST, port)
        writer.write(b"y")
        refused.append((reader, writer))
    for reader, _ in refused:
        assert await _closed(reader)
    assert upstream.accepted == 1 + 3
    for writer in held:
        writer.close()
    for _, writer in refused:
        writer.close()
    await wait_for(lambda: upstream.open == 0, what="the held connections to end")
    child.terminate()
    output, _ = await asyncio.to_thread(child.communicate, timeout=10)
    # One line at the first refusal; the rest are counted, not printed.
    reports = [line for line in output.splitlines() if line.startswith("relay:")]
    assert reports == ["relay: refused=1 open=3 (counts since the previous line)"], output


async def test_a_client_that_sends_nothing_never_reaches_the_upstream(relay: Any) -> None:
    upstream, port, _ = await relay(RELAY_FIRST_BYTE_TIMEOUT_S="0.5")
    reader, writer = await asyncio.open_connection(RELAY_HOST, port)
    assert await _closed(reader)
    assert upstream.accepted == 0
    writer.close()


async def test_a_silent_connection_is_closed(relay: Any) -> None:
    upstream, port, _ = await relay(RELAY_IDLE_TIMEOUT_S="0.5")
    reader, writer = await asyncio.open_connection(RELAY_HOST, port)
    writer.write(b"hello")
    assert await reader.readexactly(5) == b"hello"
    assert await _closed(reader)
    await wait_for(lambda: upstream.open == 0, what="the upstream side to be closed too")
    writer.close()
