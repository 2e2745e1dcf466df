"""A job on its own network (``JOB_NETWORK=isolated``) goes out through the egress gateway only,
seen from the real worker image's tools: curl and Python's urllib reach an allowed name; a name
not allowed, an IP literal, a tunnel whose TLS server name is not its ``CONNECT`` name and a
connection that bypasses the proxy do not; the tools hold the job's egress key, never its
worker token; every attempt is an ``egress`` event.

The upstreams are the test's own HTTPS servers on the host's loopback, with a certificate from a
CA the test makes, reached through ``EGRESS_RESOLVE``: nothing leaves the machine."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ironclaw_client.api.v1 import jobs_pb2 as pb
from tests.e2e.support import create, events, history, tool_results, wait_terminal
from tests.integration.egress.upstreams import TestCa, Upstream, make_ca

pytestmark = pytest.mark.docker

NAMES = ["api.example", "other.example"]

# Opens a tunnel to other.example (allowed) through the proxy of the environment, then starts
# TLS naming api.example: the gateway must close it before contacting anything.
SNI_MISMATCH = """
import base64, os, socket, ssl, urllib.parse
proxy = urllib.parse.urlsplit(os.environ["HTTPS_PROXY"])
auth = base64.b64encode(f"{proxy.username}:{proxy.password}".encode()).decode()
sock = socket.create_connection((proxy.hostname, proxy.port), timeout=10)
sock.sendall(b"CONNECT other.example:443 HTTP/1.1\\r\\nHost: other.example:443\\r\\n"
             + f"Proxy-Authorization: Basic {auth}\\r\\n\\r\\n".encode())
print(sock.recv(4096).split(b"\\r\\n")[0].decode())
context = ssl.create_default_context(cafile="ca.pem")
try:
    context.wrap_socket(sock, server_hostname="api.example").sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
    print("tls: established")
except (OSError, ssl.SSLError) as exc:
    print("tls: refused", type(exc).__name__)
"""

URLLIB = """
import ssl, urllib.request
context = ssl.create_default_context(cafile="ca.pem")
print(urllib.request.urlopen("https://api.example/", context=context, timeout=10).read().decode())
"""

BYPASS = """
import socket
for port in (443, 80, 22):
    try:
        socket.create_connection(("host.docker.internal", port), timeout=3)
        print(port, "OPEN")
    except OSError as exc:
        print(port, "CLOSED", type(exc).__name__)
"""

COMMANDS = [
    'curl -sS --cacert ca.pem https://api.example/; echo " rc=$?"',
    "python3 urllib_get.py",
    'curl -sS --cacert ca.pem https://evil.example/ 2>&1; echo " rc=$?"',
    'curl -sS -k https://192.0.2.7/ 2>&1; echo " rc=$?"',
    "python3 sni_mismatch.py",
    "curl --noproxy '*' -sS -m 5 --cacert ca.pem https://api.example/ 2>&1; echo \" rc=$?\"",
    "python3 bypass.py",
    "env | grep -i -e _proxy -e ca_bundle -e ssl_cert | sort",
]


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[tuple[Upstream, TestCa]]:
    (tmp_path / "ca").mkdir()
    ca = make_ca(tmp_path / "ca", NAMES)
    server = await Upstream(b"hello over https", tls=ca.server_context()).start()
    try:
        yield server, ca
    finally:
        await server.close()


def _script(path: Path) -> Path:
    turns = [
        {
            "content": "Trying the network.",
            "tool_calls": [
                {"name": "shell", "arguments": {"command": command}} for command in COMMANDS
            ],
        },
        {"content": "Network checked."},
    ]
    path.write_text(json.dumps(turns))  # JSON is YAML
    return path


async def test_an_isolated_job_goes_out_through_the_gateway_only(
    e2e: Any,
    sandbox_project: Any,
    worker_image: str,
    upstream: tuple[Upstream, TestCa],
    tmp_path: Path,
) -> None:
    server, ca = upstream
    run = await e2e(
        _script(tmp_path / "egress.yaml"),
        JOB_NETWORK="isolated",
        JOB_RELAY_IMAGE=worker_image,
        EGRESS_ALLOW_HOSTS="api.example:443,other.example:443",
        EGRESS_RESOLVE=(
            f"api.example=127.0.0.1:{server.port},other.example=127.0.0.1:{server.port}"
        ),
    )
    project = sandbox_project("egress")
    shutil.copy(ca.ca_file, project / "ca.pem")
    (project / "urllib_get.py").write_text(URLLIB)
    (project / "sni_mismatch.py").write_text(SNI_MISMATCH)
    (project / "bypass.py").write_text(BYPASS)

    job = await create(run.stub, "Check the network", project_dir=str(project))
    final = await wait_terminal(run.stub, job.job_id, timeout=120)

    assert final.state == pb.JOB_STATE_STOPPED, final.result.message
    updates = await history(run.stub, job.job_id)
    outputs = [r["output"] for r in tool_results(updates, "shell")]
    assert len(outputs) == len(COMMANDS), outputs
    curl_ok, urllib_ok, not_allowed, literal, sni, no_proxy, bypass, env = outputs
    assert "hello over https rc=0" in curl_ok
    assert "hello over https" in urllib_ok
    for refused in (not_allowed, literal):
        assert "CONNECT tunnel failed, response 403" in refused
        assert "rc=0" not in refused
    assert "HTTP/1.1 200" in sni
    assert "tls: refused" in sni, sni
    assert "rc=0" not in no_proxy
    assert "hello" not in no_proxy
    assert bypass.count("CLOSED") == 3, bypass
    # curl's tunnel, urllib's, and nothing else reached the upstream.
    assert server.connections == 2

    # The tools' proxy holds the job id and its egress key, which the job's reports mask like
    # every secret it holds; the worker token is nowhere.
    proxy = re.search(r"HTTPS_PROXY=http://([^:]+):([^@]+)@host\.docker\.internal:\d+", env)
    assert proxy, env
    assert proxy.group(1) == job.job_id
    assert proxy.group(2) == "***", env
    assert "NO_PROXY=host.docker.internal" in env
    assert not re.search(r"irc[el]?_[A-Za-z0-9_-]{20,}", "\n".join(outputs))

    audit = [e.data for e in events(updates) if e.event_type == "egress"]
    allowed = [a for a in audit if a["outcome"] == "allowed"]
    assert [(a["host"], a["port"]) for a in allowed] == [("api.example", 443)] * 2, audit
    assert all(a["bytes_received"] > 0 for a in allowed), allowed
    assert any(a["host"] == "evil.example" and a["outcome"] == "refused" for a in audit), audit
    assert any(a["host"] == "192.0.2.7" and a["outcome"] == "refused" for a in audit), audit
    assert any(a["host"] == "other.example" and a["outcome"] == "refused" for a in audit), audit
    assert not re.search(r"irc[el]?_[A-Za-z0-9_-]{20,}", json.dumps(audit))
