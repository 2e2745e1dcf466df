"""A job on its own network (``JOB_NETWORK=isolated``) goes out through the egress gateway only,
seen from the real worker image's tools: curl and Python's urllib reach an allowed name; a name
not allowed, an IP literal, a tunnel whose TLS server name is not its ``CONNECT`` name and a
connection that bypasses the proxy do not; the tools hold the job's egress key, never its
worker token; every attempt is an ``egress`` event.

The upstreams are the test's own HTTPS servers on the host's loopback, with a certificate from a
CA the test makes, reached through ``EGRESS_RESOLVE``: nothing leaves the machine."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import shutil
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

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


def _wheel(directory: Path) -> Path:
    """A one-module wheel, built by hand: what pip downloads and installs."""
    name = "ironclaw_egress_probe-1.0-py3-none-any.whl"
    files = {
        "ironclaw_egress_probe/__init__.py": "GREETING = 'installed through the gateway'\n",
        "ironclaw_egress_probe-1.0.dist-info/METADATA": (
            "Metadata-Version: 2.1\nName: ironclaw-egress-probe\nVersion: 1.0\n"
        ),
        "ironclaw_egress_probe-1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = [
        f"{path},sha256={_urlsafe_digest(text.encode())},{len(text.encode())}"
        for path, text in files.items()
    ]
    record.append("ironclaw_egress_probe-1.0.dist-info/RECORD,,")
    files["ironclaw_egress_probe-1.0.dist-info/RECORD"] = "\n".join(record) + "\n"
    path = directory / name
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


def _urlsafe_digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


@contextlib.asynccontextmanager
async def _package_index(wheel: Path, ca: TestCa) -> AsyncIterator[int]:
    """A PEP 503 simple index over HTTPS on loopback serving ``wheel``: its port."""
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()

    async def project(request: web.Request) -> web.Response:
        link = f'<a href="/files/{wheel.name}#sha256={digest}">{wheel.name}</a>'
        return web.Response(text=f"<html><body>{link}</body></html>", content_type="text/html")

    async def file(request: web.Request) -> web.FileResponse:
        return web.FileResponse(wheel)

    app = web.Application()
    app.router.add_get("/simple/ironclaw-egress-probe/", project)
    app.router.add_get(f"/files/{wheel.name}", file)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ca.server_context())
    await site.start()
    try:
        yield int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def test_pip_installs_from_an_allowed_index_through_the_gateway(
    e2e: Any, sandbox_project: Any, worker_image: str, tmp_path: Path
) -> None:
    (tmp_path / "ca").mkdir()
    ca = make_ca(tmp_path / "ca", ["pypi.example"])
    wheel = _wheel(tmp_path)
    install = (
        "python3 -m venv ~/venv && ~/venv/bin/pip install --disable-pip-version-check -q "
        "--index-url https://pypi.example/simple/ --cert ca.pem ironclaw-egress-probe "
        "&& ~/venv/bin/python -c 'import ironclaw_egress_probe as p; print(p.GREETING)'"
    )
    script = tmp_path / "pip.yaml"
    script.write_text(
        json.dumps(
            [
                {
                    "content": "Installing.",
                    "tool_calls": [{"name": "shell", "arguments": {"command": install}}],
                },
                {"content": "Installed."},
            ]
        )
    )
    async with _package_index(wheel, ca) as port:
        run = await e2e(
            script,
            JOB_NETWORK="isolated",
            JOB_RELAY_IMAGE=worker_image,
            EGRESS_ALLOW_HOSTS="pypi.example:443",
            EGRESS_RESOLVE=f"pypi.example=127.0.0.1:{port}",
        )
        project = sandbox_project("pip")
        shutil.copy(ca.ca_file, project / "ca.pem")
        job = await create(run.stub, "Install the probe", project_dir=str(project))
        final = await wait_terminal(run.stub, job.job_id, timeout=180)

    assert final.state == pb.JOB_STATE_STOPPED, final.result.message
    updates = await history(run.stub, job.job_id)
    [output] = [r["output"] for r in tool_results(updates, "shell")]
    assert "installed through the gateway" in output, output
    audit = [e.data for e in events(updates) if e.event_type == "egress"]
    assert audit, "pip's requests went through the gateway"
    assert {(a["host"], a["outcome"]) for a in audit} == {("pypi.example", "allowed")}
