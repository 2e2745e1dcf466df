"""Running out of descriptors while accepting: a real server in a child process with a
64-descriptor limit, flooded with connections it keeps. asyncio alone logs a traceback per
failed accept (hundreds in seconds); with the resource-aware socket and the loop filter the
log holds a line or two and the count is exact."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest

from orchestrator.fd_limit import FD_RESERVE, auto_max_connections, max_connections_for

SERVER = textwrap.dedent(
    """
    import asyncio, resource, socket, sys
    from orchestrator.accept_errors import (
        AcceptErrors, install_accept_error_filter, listening_socket,
    )

    class Keep(asyncio.Protocol):
        held = []
        def connection_made(self, transport):
            self.held.append(transport)  # every accepted connection keeps its descriptor

    async def main(guarded, seconds):
        loop = asyncio.get_running_loop()
        errors = AcceptErrors(interval_s=60)
        if guarded:
            install_accept_error_filter(loop, errors)
            sock = listening_socket("127.0.0.1", 0, 1024)
        else:
            sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
        server = await loop.create_server(Keep, sock=sock, backlog=1024)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        print("port", sock.getsockname()[1], flush=True)
        await asyncio.sleep(seconds)
        errors.close()
        print("accepted", len(Keep.held), "errors", errors.total, flush=True)

    asyncio.run(main(sys.argv[1] == "guarded", float(sys.argv[2])))
    """
)


def _flood(mode: str, seconds: float = 3.0, connections: int = 300) -> tuple[list[str], str]:
    child = subprocess.Popen(
        [sys.executable, "-c", SERVER, mode, str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert child.stdout is not None
    first = child.stdout.readline().split()
    assert first[:1] == ["port"], first
    port = int(first[1])
    clients = []
    try:
        for _ in range(connections):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        output, _ = child.communicate(timeout=seconds + 30)
    finally:
        for client in clients:
            client.close()
        child.kill()
    lines = output.splitlines()
    return lines, lines[-1] if lines else ""


def test_plain_asyncio_logs_a_traceback_storm() -> None:
    # What the guarded server below is measured against: the same flood, the same loop.
    lines, _ = _flood("plain")
    assert sum("out of system resource" in line for line in lines) > 50


def test_accept_errors_are_counted_and_logged_once_per_interval() -> None:
    lines, summary = _flood("guarded")
    words = summary.split()
    assert words[0] == "accepted", lines[-20:]
    accepted, errors = int(words[1]), int(words[3])
    assert 0 < accepted < 64
    assert errors >= 2  # the loop kept retrying, once a second, while descriptors were short
    assert "Traceback" not in "\n".join(lines)
    # One line at the first error, one summary at the close: nothing per failed accept.
    assert len(lines) <= 3, lines
    assert any("EMFILE" in line for line in lines)


@pytest.mark.parametrize(
    ("limit", "expected"), [(1024, 448), (256, 64), (100, 16), (1 << 20, 4096)]
)
def test_the_automatic_cap_leaves_the_reserve_and_stays_within_bounds(
    limit: int, expected: int
) -> None:
    assert auto_max_connections(limit) == expected
    if limit > FD_RESERVE:
        assert max_connections_for(limit) * 2 + FD_RESERVE <= limit


def test_the_descriptor_limit_is_raised_to_the_hard_limit() -> None:
    script = textwrap.dedent(
        """
        import resource
        from orchestrator.fd_limit import raise_fd_limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 512))
        limit = raise_fd_limit()
        print(limit.previous_soft, limit.soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.split() == ["256", "512", "512"]
