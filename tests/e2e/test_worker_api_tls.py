"""The worker API over TLS on one host: bound beyond loopback and the Docker bridge (every
address), the orchestrator serves it with a CA of its own, a real worker container trusts that
CA (``IRONCLAW_ORCHESTRATOR_CA``) and completes the demo job over ``https://``; a plaintext
client and a client that does not trust the CA get nothing."""

from __future__ import annotations

import asyncio
import http.client
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from ironclaw_client.api.v1 import jobs_pb2 as pb
from orchestrator.certificates import CA_KEY_FILE
from orchestrator.http_api.worker_tls import TLS_DIR_NAME
from tests.e2e.conftest import DEMO_SCRIPT
from tests.e2e.support import container_env, create, wait_terminal

pytestmark = pytest.mark.docker


def _plaintext_get(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/worker/00000000-0000-4000-8000-000000000000/job")
        return connection.getresponse().status
    finally:
        connection.close()


def _tls_get(port: int, context: ssl.SSLContext) -> int:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(raw, server_hostname="host.docker.internal") as sock:
        sock.sendall(
            b"GET /worker/00000000-0000-4000-8000-000000000000/job HTTP/1.1\r\n"
            b"Host: host.docker.internal\r\nConnection: close\r\n\r\n"
        )
        head = sock.recv(64).decode("ascii", "replace")
    return int(head.split()[1])


async def test_a_worker_completes_a_job_over_tls_and_plaintext_or_untrusting_clients_fail(
    e2e: Any, demo_project: Path, docker_engine: Any, base_dir: Path
) -> None:
    running = await e2e(DEMO_SCRIPT, ORCHESTRATOR_HTTP_BIND="0.0.0.0")
    orch, stub = running.orch, running.stub
    url = orch.manager.orchestrator_url
    assert url == f"https://host.docker.internal:{orch.http_port}"
    ca_pem = orch.manager.orchestrator_ca_pem
    assert ca_pem
    assert ca_pem.startswith("-----BEGIN CERTIFICATE-----")
    key = base_dir / TLS_DIR_NAME / CA_KEY_FILE
    assert key.stat().st_mode & 0o077 == 0

    job_id = (await create(stub, "Fix the failing tests.", project_dir=str(demo_project))).job_id
    env = container_env(docker_engine, job_id)
    assert env["IRONCLAW_ORCHESTRATOR_URL"] == url
    assert env["IRONCLAW_ORCHESTRATOR_CA"] == ca_pem
    job = await wait_terminal(stub, job_id, timeout=120)
    assert job.result.reason == pb.TERMINAL_REASON_COMPLETED, job.result.message
    assert "return a + b" in (demo_project / "calc.py").read_text()

    trusting = ssl.create_default_context(cadata=ca_pem)
    assert await asyncio.to_thread(_tls_get, orch.http_port, trusting) == 401
    # Plaintext: the server expects a TLS handshake and closes the connection.
    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        await asyncio.to_thread(_plaintext_get, orch.http_port)
    # A client with only the system's roots does not accept the orchestrator's certificate.
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.to_thread(_tls_get, orch.http_port, ssl.create_default_context())
