"""Credentials injected at egress, through a real orchestrator's gateway with real clients: the
job holds a placeholder (GET /credentials), the gateway terminates TLS for the grant's host with
the orchestrator's CA (GET /job egress.ca_pem) and the test's own HTTPS upstream receives the
real value; a second allowed host receives the placeholder unchanged, through an untouched
tunnel. Nothing leaves the machine."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from ironclaw_contract.job_keys import egress_key_for
from orchestrator.domain.jobs import (
    CreateJobRequest,
    CredentialGrant,
    InjectFormat,
    JobUpdate,
    UpdateKind,
)
from orchestrator.errors import InvalidArgument
from orchestrator.secrets import Secret
from orchestrator.service import Orchestrator, start_orchestrator
from orchestrator.settings import Settings
from tests.fakes.fake_backend import FakeBackend
from tests.integration.egress.conftest import Job
from tests.integration.egress.git_server import GIT, GitServer, make_repository
from tests.integration.egress.upstreams import TestCa, Upstream, make_ca

CURL = shutil.which("curl")
pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed")

REAL = "ghp_" + "Q7" * 18
NAMES = ["api.example", "other.example", "git.example"]


@dataclass
class InjectWorld:
    orch: Orchestrator
    ca: TestCa
    inject_ca: Path  # the orchestrator's CA as the job receives it
    upstream: Upstream
    git: GitServer
    job: Job
    placeholder: str
    logs: list[dict[str, Any]]

    @property
    def port(self) -> int:
        return self.orch.egress_port

    async def worker_get(self, route: str, job: Job | None = None) -> Any:
        job = job or self.job
        url = f"http://127.0.0.1:{self.orch.http_port}/worker/{job.job_id}/{route}"
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, headers={"Authorization": f"Bearer {job.token}"}) as response,
        ):
            assert response.status == 200, await response.text()
            return await response.json()


@pytest.fixture(scope="module")
async def inject_world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InjectWorld]:
    base = tmp_path_factory.mktemp("ironclaw")
    (base / "projects").mkdir()
    ca = make_ca(tmp_path_factory.mktemp("ca"), NAMES)
    upstream = await Upstream(b"hello", tls=ca.server_context(), keep_alive=True).start()
    port = upstream.port
    repos = tmp_path_factory.mktemp("repos")
    make_repository(repos, "repo")
    git = GitServer(repos, REAL, ca.server_context()).start()
    settings = Settings.from_env(
        {
            "IRONCLAW_BASE_DIR": str(base),
            "ORCHESTRATOR_INSTANCE": f"test-{uuid.uuid4().hex[:10]}",
            "ORCHESTRATOR_HTTP_BIND": "127.0.0.1",
            "IRONCLAW_EGRESS_URL_FOR_JOBS": "http://host.docker.internal:50053",
            "LOG_FORMAT": "console",
            "METRICS_PORT": "0",
            "JOB_NETWORK": "isolated",
            "EGRESS_ALLOW_HOSTS": (
                "api.example:443,other.example:443,untrusted.example:443,git.example:443"
            ),
            "EGRESS_RESOLVE": (
                f"api.example=127.0.0.1:{port},other.example=127.0.0.1:{port},"
                f"untrusted.example=127.0.0.1:{port},git.example=127.0.0.1:{git.port}"
            ),
            "EGRESS_UPSTREAM_CA": str(ca.ca_file),
        }
    )
    with capture_logs() as logs:
        orch = await start_orchestrator(
            settings, backend=FakeBackend(), grpc_port=0, http_port=0, reaper_interval=0.5
        )
        grant = CredentialGrant(
            "github",
            "api_token",
            Secret(REAL),
            "",
            inject_hosts=("api.example:443", "untrusted.example:443"),
        )
        git_grant = CredentialGrant(
            "gitserver",
            "api_token",
            Secret(REAL),
            "GIT_TOKEN",
            inject_hosts=("git.example",),
            inject_format=InjectFormat.BASIC,
        )
        created = await orch.manager.create_job(
            CreateJobRequest(task="t", credentials=(grant, git_grant))
        )
        assert created.token is not None
        job_id = created.job.job_id
        job = Job(job_id, egress_key_for(created.token, job_id), created.token)
        world = InjectWorld(orch, ca, base / "inject-ca.pem", upstream, git, job, "", logs)
        try:
            info = await world.worker_get("job")
            world.inject_ca.write_text(info["egress"]["ca_pem"])
            world.placeholder = (await world.worker_get("credentials"))["github"]
            yield world
        finally:
            await asyncio.wait_for(orch.manager.stop_job(job_id), timeout=30)
            await asyncio.wait_for(orch.stop(grace=1), timeout=30)
            await upstream.close()
            git.close()


async def curl(world: InjectWorld, *args: str, cacert: Path | None = None) -> tuple[int, str]:
    """curl through the gateway with the job's proxy credentials: (exit code, output)."""
    assert CURL is not None
    process = await asyncio.create_subprocess_exec(
        CURL,
        "-sS",
        "--max-time",
        "20",
        "--proxy",
        world.job.proxy_url(world.port),
        "--cacert",
        str(cacert or world.inject_ca),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


def received(upstream: Upstream, since: int) -> list[str]:
    return [head.decode("latin-1") for head in upstream.heads[since:]]


def authorization(head: str) -> str:
    for line in head.split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower() == "authorization":
            return value.strip()
    return ""


async def test_the_job_holds_a_placeholder_and_the_ca_only(inject_world: InjectWorld) -> None:
    world = inject_world
    assert world.placeholder.startswith("ghp_ironclawplaceholder")
    assert REAL not in json.dumps(await world.worker_get("credentials"))
    info = await world.worker_get("job")
    assert info["egress"]["ca_pem"].startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY" not in json.dumps(info)
    assert REAL not in json.dumps(info)


async def test_the_upstream_receives_the_value_the_client_only_held_the_placeholder(
    inject_world: InjectWorld,
) -> None:
    world = inject_world
    since = len(world.upstream.heads)
    rc, out = await curl(
        world, "-H", f"Authorization: Bearer {world.placeholder}", "https://api.example/"
    )
    assert rc == 0, out
    assert out == "hello"
    (head,) = received(world.upstream, since)
    assert authorization(head) == f"Bearer {REAL}"
    assert world.placeholder not in head


async def test_git_style_basic_and_a_missing_header_get_the_value_on_one_connection(
    inject_world: InjectWorld,
) -> None:
    world = inject_world
    since = len(world.upstream.heads)
    connections = world.upstream.connections
    # Basic with the placeholder as the password (git's credential), then no header at all:
    # both on one kept-alive connection, as git's smart HTTP does.
    userinfo = f"x-access-token:{world.placeholder}"
    rc, out = await curl(
        world,
        f"https://{userinfo}@api.example/info/refs",
        "--next",
        "--proxy",
        world.job.proxy_url(world.port),
        "--cacert",
        str(world.inject_ca),
        "https://api.example/git-upload-pack",
    )
    assert rc == 0, out
    assert out == "hellohello"
    first, second = received(world.upstream, since)
    expected = "Basic " + base64.b64encode(f"x-access-token:{REAL}".encode()).decode()
    assert authorization(first) == expected
    assert authorization(second) == f"Bearer {REAL}"  # the grant's format, added
    assert world.upstream.connections == connections + 1


async def test_a_second_allowed_host_receives_the_placeholder_through_a_plain_tunnel(
    inject_world: InjectWorld,
) -> None:
    world = inject_world
    since = len(world.upstream.heads)
    # The tunnel is untouched: the client must trust the upstream's own CA, not the gateway's.
    rc, out = await curl(
        world,
        "-H",
        f"Authorization: Bearer {world.placeholder}",
        "https://other.example/",
        cacert=world.ca.ca_file,
    )
    assert rc == 0, out
    (head,) = received(world.upstream, since)
    assert authorization(head) == f"Bearer {world.placeholder}"
    assert REAL not in head
    rc, out = await curl(world, "https://other.example/")  # the gateway's CA is no use there
    assert rc != 0


async def test_a_request_naming_another_host_in_the_tunnel_is_refused(
    inject_world: InjectWorld,
) -> None:
    world = inject_world
    since = len(world.upstream.heads)
    _, out = await curl(
        world, "-H", "Host: other.example", "-w", "%{http_code}", "https://api.example/"
    )
    assert out.endswith("421"), out
    assert "must name its host" in out
    assert received(world.upstream, since) == []


async def test_an_upstream_that_fails_verification_is_a_502_and_gets_nothing(
    inject_world: InjectWorld,
) -> None:
    world = inject_world
    since = len(world.upstream.heads)
    # untrusted.example resolves to the upstream, whose certificate does not name it.
    _, out = await curl(world, "-w", "%{http_code}", "https://untrusted.example/")
    assert out.endswith("502"), out
    assert "upstream's TLS" in out
    assert received(world.upstream, since) == []


async def test_the_audit_names_the_grant_and_nothing_holds_the_value(
    inject_world: InjectWorld,
) -> None:
    world = inject_world
    rc, _ = await curl(world, "https://api.example/")
    assert rc == 0

    found: list[dict[str, Any]] = []

    async def collect() -> None:
        async for item in world.orch.manager.watch(world.job.job_id, from_start=True):
            if (
                isinstance(item, JobUpdate)
                and item.kind is UpdateKind.EVENT
                and item.payload["event_type"] == "egress"
            ):
                found.append(dict(item.payload["data"]))
                if any(e.get("injected") for e in found):
                    return

    try:
        await asyncio.wait_for(collect(), timeout=10)
    except TimeoutError:
        raise AssertionError(f"no egress event names an injected grant: {found}") from None
    injected = [e for e in found if e.get("injected")]
    assert injected[0]["host"] == "api.example"
    assert injected[0]["injected"] == ["github"]
    assert injected[0]["outcome"] == "allowed"
    assert all("injected" not in e for e in found if e["host"] == "other.example")
    assert REAL not in json.dumps(found)
    assert REAL not in repr(world.logs)
    assert world.logs, "the orchestrator logged nothing at all: the capture is broken"


async def test_an_inject_host_outside_the_policy_is_refused_at_create(
    inject_world: InjectWorld,
) -> None:
    grant = CredentialGrant("npm", "api_token", Secret("x"), "", inject_hosts=("evil.example",))
    with pytest.raises(InvalidArgument) as info:
        await inject_world.orch.manager.create_job(CreateJobRequest(task="t", credentials=(grant,)))
    assert "not reachable under this job's egress policy" in info.value.message


@pytest.mark.skipif(GIT is None, reason="git is not installed")
async def test_git_clone_and_push_through_the_gateway_with_the_token_injected(
    inject_world: InjectWorld, tmp_path: Path
) -> None:
    world = inject_world
    assert GIT is not None
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "HTTPS_PROXY": world.job.proxy_url(world.port),
        "GIT_SSL_CAINFO": str(world.inject_ca),
    }

    async def git(*args: str, cwd: Path = tmp_path) -> str:
        process = await asyncio.create_subprocess_exec(
            GIT,
            *args,
            cwd=cwd,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 0, out.decode()
        return out.decode()

    await git("clone", "-q", "https://git.example/repo.git", "clone")
    clone = tmp_path / "clone"
    assert (clone / "README").read_text() == "seeded\n"
    (clone / "pushed.txt").write_text("through the gateway\n")
    await git("add", "pushed.txt", cwd=clone)
    await git("-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "pushed", cwd=clone)
    await git("push", "-q", "origin", "main", cwd=clone)
    shown = await git("--git-dir", str(world.git.root / "repo.git"), "show", "main:pushed.txt")
    assert shown == "through the gateway\n"
    assert world.git.refused == 0  # every request carried the token, none was asked twice
    assert len(world.git.authorizations) >= 4
