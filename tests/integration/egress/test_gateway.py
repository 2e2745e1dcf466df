"""The egress gateway with real clients (curl, urllib, raw sockets) against the tests' own
upstreams on loopback, through a real orchestrator's gateway and job tokens."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import ssl
import urllib.error
import urllib.request

import pytest

from ironclaw_contract.job_keys import egress_key_for
from orchestrator.domain.jobs import CreateJobRequest
from orchestrator.errors import InvalidArgument
from tests.integration.egress.conftest import EgressWorld, Job

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")


def basic(job: Job) -> str:
    return "Basic " + base64.b64encode(f"{job.job_id}:{job.key}".encode()).decode()


async def exchange(port: int, head: str, then: bytes = b"") -> bytes:
    """Sends ``head`` (and ``then``) to the gateway, returns everything until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode() + then)
        await writer.drain()
        return await asyncio.wait_for(reader.read(-1), timeout=10)
    finally:
        writer.close()


async def tunnel_head(port: int, head: str) -> bytes:
    """The gateway's answer to a CONNECT, without waiting for the tunnel to end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode())
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    finally:
        writer.close()


def status_and_body(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, body


def client_hello(server_name: str) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


async def curl(world: EgressWorld, job: Job, url: str) -> tuple[int, str, str]:
    """curl through the gateway: (exit code, stdout, stderr). No proxy variables inherited."""
    assert CURL is not None
    process = await asyncio.create_subprocess_exec(
        CURL,
        "-sS",
        "--max-time",
        "20",
        "--proxy",
        job.proxy_url(world.port),
        "--cacert",
        str(world.ca.ca_file),
        "-w",
        "\n%{http_code} %{http_connect}",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def urllib_get(world: EgressWorld, job: Job, url: str) -> str:
    proxy = job.proxy_url(world.port)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": proxy, "https": proxy}),
        urllib.request.HTTPSHandler(context=world.ca.client_context()),
    )
    with opener.open(url, timeout=20) as response:
        return str(response.read().decode())


# ------------------------------------------------------------ allowed


@needs_curl
async def test_curl_reaches_an_allowed_https_name_and_the_attempt_is_a_job_event(
    world: EgressWorld,
) -> None:
    code, out, err = await curl(world, world.job, "https://api.example/")
    assert code == 0, err
    assert out.splitlines() == ["hello over https", "200 200"]
    events = await world.egress_events(
        world.job.job_id, lambda es: any(e["outcome"] == "allowed" for e in es)
    )
    allowed = [e for e in events if e["host"] == "api.example" and e["outcome"] == "allowed"]
    assert allowed, events
    event = allowed[0]
    assert event["method"] == "CONNECT"
    assert event["port"] == 443
    assert event["reason"] == "allowed"
    assert event["address"] == f"127.0.0.1:{world.https.port}"
    assert event["bytes_sent"] > 200
    assert event["bytes_received"] > 200
    assert world.job.token not in repr(events)
    assert world.job.key not in repr(events)


async def test_urllib_reaches_allowed_https_and_plain_http_names(world: EgressWorld) -> None:
    assert await asyncio.to_thread(urllib_get, world, world.job, "https://api.example/x") == (
        "hello over https"
    )
    before = len(world.http.heads)
    body = await asyncio.to_thread(urllib_get, world, world.job, "http://web.example/p?q=1")
    assert body == "hello over http"
    head = world.http.heads[before].decode("latin-1")
    assert head.startswith("GET /p?q=1 HTTP/1.1\r\n"), head
    lowered = head.lower()
    assert "host: web.example\r\n" in lowered
    assert "proxy-authorization" not in lowered, "the job's credentials went upstream"
    assert world.job.token not in head
    assert world.job.key not in head
    assert "connection: close" in lowered


async def test_a_plain_http_body_is_forwarded_by_its_framing(world: EgressWorld) -> None:
    reply = await exchange(
        world.port,
        "POST http://web.example/upload HTTP/1.1\r\nHost: spoofed.example\r\n"
        f"Proxy-Authorization: {basic(world.job)}\r\nContent-Length: 5\r\n\r\n",
        b"hello" + b"GET http://evil.example/ HTTP/1.1\r\n\r\n",  # pipelined: never forwarded
    )
    status, _, body = status_and_body(reply)
    assert (status, body) == (200, b"hello over http got hello")
    assert b"host: web.example\r\n" in world.http.heads[-1].lower()
    assert b"evil" not in world.http.heads[-1]


# ------------------------------------------------------------ refused


@needs_curl
async def test_a_name_not_allowed_is_a_403_with_the_one_line_reason(world: EgressWorld) -> None:
    code, out, _ = await curl(world, world.job, "https://evil.example/")
    assert code != 0
    assert out.splitlines()[-1] == "000 403"
    reply = await exchange(
        world.port,
        f"CONNECT evil.example:443 HTTP/1.1\r\nProxy-Authorization: {basic(world.job)}\r\n\r\n",
    )
    status, headers, body = status_and_body(reply)
    assert status == 403
    assert body == b"egress to evil.example:443 is not allowed for this job\n"
    assert headers["x-ironclaw-egress-refusal"] == "not_allowed"
    assert reply.startswith(b"HTTP/1.1 403 egress to evil.example:443 is not allowed")
    events = await world.egress_events(
        world.job.job_id, lambda es: any(e["host"] == "evil.example" for e in es)
    )
    refused = [e for e in events if e["host"] == "evil.example"]
    assert refused
    assert refused[0]["outcome"] == "refused"
    assert refused[0]["reason"] == "not_allowed"
    assert refused[0]["message"] == "egress to evil.example:443 is not allowed for this job"


async def test_urllib_shows_the_reason_of_a_refused_tunnel(world: EgressWorld) -> None:
    with pytest.raises(urllib.error.URLError) as refused:
        await asyncio.to_thread(urllib_get, world, world.job, "https://evil.example/")
    assert "egress to evil.example:443 is not allowed for this job" in str(refused.value)


async def test_a_port_not_allowed_and_an_ip_literal_are_refused(world: EgressWorld) -> None:
    auth = f"Proxy-Authorization: {basic(world.job)}\r\n"
    reply = await exchange(world.port, f"CONNECT api.example:8443 HTTP/1.1\r\n{auth}\r\n")
    assert status_and_body(reply)[0] == 403
    upstream_before = world.https.connections
    reply = await exchange(
        world.port, f"CONNECT 127.0.0.1:{world.https.port} HTTP/1.1\r\n{auth}\r\n"
    )
    status, headers, body = status_and_body(reply)
    assert status == 403
    assert headers["x-ironclaw-egress-refusal"] == "ip_literal"
    assert body.decode().startswith(
        f"egress to 127.0.0.1:{world.https.port} is not allowed for this job"
    )
    reply = await exchange(
        world.port, f"GET http://[::1]:{world.http.port}/ HTTP/1.1\r\n{auth}\r\n"
    )
    assert status_and_body(reply)[1]["x-ironclaw-egress-refusal"] == "ip_literal"
    assert world.https.connections == upstream_before


async def test_an_allowed_name_that_resolves_to_loopback_is_refused(world: EgressWorld) -> None:
    # "localhost" is allowlisted but not overridden: its real resolution is loopback.
    reply = await exchange(
        world.port,
        f"GET http://localhost:{world.http.port}/ HTTP/1.1\r\n"
        f"Proxy-Authorization: {basic(world.job)}\r\n\r\n",
    )
    status, headers, body = status_and_body(reply)
    # Port 80 only is allowed for a bare entry: the test server's port is refused first.
    assert status == 403
    reply = await exchange(
        world.port,
        f"GET http://localhost/ HTTP/1.1\r\nProxy-Authorization: {basic(world.job)}\r\n\r\n",
    )
    status, headers, body = status_and_body(reply)
    assert status == 403
    assert headers["x-ironclaw-egress-refusal"] == "forbidden_address"
    assert body.decode().startswith(
        "egress to localhost:80 is refused: localhost resolves to a loopback address"
    )


async def test_an_sni_other_than_the_connect_name_closes_before_the_upstream(
    world: EgressWorld,
) -> None:
    before = world.https.connections
    reader, writer = await asyncio.open_connection("127.0.0.1", world.port)
    try:
        writer.write(
            f"CONNECT api.example:443 HTTP/1.1\r\nProxy-Authorization: {basic(world.job)}"
            "\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        assert head.startswith(b"HTTP/1.1 200")
        writer.write(client_hello("evil.example"))
        try:
            rest = await asyncio.wait_for(reader.read(-1), timeout=10)
        except ConnectionResetError:
            rest = b""
        assert rest == b"", "the gateway answered a ClientHello for another name"
    finally:
        writer.close()
    events = await world.egress_events(
        world.job.job_id, lambda es: any(e["reason"] == "sni_mismatch" for e in es)
    )
    mismatch = next(e for e in events if e["reason"] == "sni_mismatch")
    assert mismatch["outcome"] == "refused"
    assert mismatch["bytes_sent"] == 0
    assert "address" not in mismatch
    assert world.https.connections == before, "the upstream was contacted"


async def test_what_follows_connect_must_be_a_tls_hello(world: EgressWorld) -> None:
    before = world.https.connections
    reply = await exchange(
        world.port,
        f"CONNECT api.example:443 HTTP/1.1\r\nProxy-Authorization: {basic(world.job)}\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: api.example\r\n\r\n",
    )
    assert reply == b"HTTP/1.1 200 Connection established\r\n\r\n", "bytes came back"
    assert world.https.connections == before


# ------------------------------------------------------------ credentials


async def test_missing_bad_and_another_jobs_credentials_are_407(world: EgressWorld) -> None:
    stolen = Job(world.job.job_id, world.other_job.key)  # job A's id, job B's key
    wrong = Job(world.job.job_id, "irce_" + "x" * 43)
    # The worker token opens the worker API, not the gateway: commands never need it.
    token_itself = Job(world.job.job_id, world.job.token)
    cases = [
        "",
        f"Proxy-Authorization: {basic(stolen)}\r\n",
        f"Proxy-Authorization: {basic(wrong)}\r\n",
        f"Proxy-Authorization: {basic(token_itself)}\r\n",
        "Proxy-Authorization: Basic not-base64!\r\n",
        f"Proxy-Authorization: Bearer {world.job.key}\r\n",
        "Proxy-Authorization: Basic " + base64.b64encode(b"not-a-uuid:x").decode() + "\r\n",
    ]
    before = world.https.connections
    for auth in cases:
        reply = await exchange(world.port, f"CONNECT api.example:443 HTTP/1.1\r\n{auth}\r\n")
        status, headers, _ = status_and_body(reply)
        assert status == 407, (auth, reply[:200])
        assert headers["proxy-authenticate"] == 'Basic realm="ironclaw egress"'
        for secret in (world.job.token, world.job.key, world.other_job.key):
            assert secret.encode() not in reply
    assert world.https.connections == before
    assert world.orch.metrics is not None
    sample = world.orch.metrics.egress_attempts.labels("unauthenticated")._value.get()
    assert sample >= len(cases)


@needs_curl
async def test_curl_with_another_jobs_token_gets_407(world: EgressWorld) -> None:
    code, out, _ = await curl(
        world, Job(world.job.job_id, world.other_job.key), "https://api.example/"
    )
    assert code != 0
    assert out.splitlines()[-1] == "000 407"


async def test_malformed_requests_are_400_not_tracebacks(world: EgressWorld) -> None:
    auth = f"Proxy-Authorization: {basic(world.job)}\r\n"
    for head in (
        "NONSENSE\r\n\r\n",
        f"GET /relative HTTP/1.1\r\n{auth}\r\n",
        f"GET https://api.example/ HTTP/1.1\r\n{auth}\r\n",
        f"CONNECT api.example HTTP/1.1\r\n{auth}\r\n",
        f"CONNECT b\u00fccher.example:443 HTTP/1.1\r\n{auth}\r\n",
        f"GET http://web.example/ HTTP/1.1\r\n{auth}Content-Length: 1\r\n"
        "Transfer-Encoding: chunked\r\n\r\n",
        "GET http://web.example/ HTTP/1.1\r\n" + "X: " + "a" * 40_000 + "\r\n\r\n",
    ):
        reply = await exchange(world.port, head)
        assert status_and_body(reply)[0] == 400, (head[:60], reply[:200])


# ------------------------------------------------------------ a job's own list


async def test_a_jobs_own_list_narrows_the_operators(world: EgressWorld) -> None:
    created = await world.orch.manager.create_job(
        CreateJobRequest(task="sleep", egress_hosts=("other.example:443",))
    )
    assert created.token is not None
    job_id = created.job.job_id
    narrowed = Job(job_id, egress_key_for(created.token, job_id))
    try:
        auth = f"Proxy-Authorization: {basic(narrowed)}\r\n"
        reply = await exchange(world.port, f"CONNECT api.example:443 HTTP/1.1\r\n{auth}\r\n")
        status, _, body = status_and_body(reply)
        assert status == 403
        assert body.strip() == b"egress to api.example:443 is not allowed for this job"
        head = await tunnel_head(world.port, f"CONNECT other.example:443 HTTP/1.1\r\n{auth}\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        other = f"Proxy-Authorization: {basic(world.other_job)}\r\n"
        head = await tunnel_head(world.port, f"CONNECT api.example:443 HTTP/1.1\r\n{other}\r\n")
        assert head.startswith(b"HTTP/1.1 200"), "a job without its own list has the operator's"
    finally:
        await world.orch.manager.stop_job(job_id)


async def test_a_jobs_list_wider_than_the_operators_is_refused_at_create(
    world: EgressWorld,
) -> None:
    for entries, named in (
        (("evil.example",), "evil.example"),
        (("*.example",), "*.example"),
        (("api.example:8443",), "api.example:8443"),
    ):
        with pytest.raises(InvalidArgument) as refused:
            await world.orch.manager.create_job(CreateJobRequest(task="x", egress_hosts=entries))
        assert named in refused.value.message
        assert "EGRESS_JOB_MAY_WIDEN" in refused.value.message
    with pytest.raises(InvalidArgument, match=r"egress\.allow_hosts"):
        await world.orch.manager.create_job(
            CreateJobRequest(task="x", egress_hosts=("not a host name",))
        )
