"""Fixtures for the worker HTTP API tests: one orchestrator per module on the in-memory engine
(``tests/fakes/fake_backend.py``; the worker API is the real aiohttp server on a free port, its
LLM provider the fake OpenAI server through the real ``openai`` SDK), jobs created in-process,
and an HTTP client that records every response body it sees so a test can assert that no secret
ever came back. No container runs: a test makes the calls a job's container would make, and
the suite runs without an engine. The Docker suites prove the same paths with real containers.

Tests that need other settings (no provider, Anthropic, a short timeout) start their own
orchestrator with this directory's ``start_orch``, on one in-memory engine per test (an
orchestrator started again in the same test finds its jobs' containers there, as after a
restart on a real engine).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.domain.jobs import (
    CreateJobRequest,
    CredentialGrant,
    JobLimitOverrides,
    JobUpdate,
)
from orchestrator.secrets import Secret
from orchestrator.service import Orchestrator, start_orchestrator
from orchestrator.settings import Settings
from tests.fakes.fake_backend import FakeBackend
from tests.fakes.fake_openai import FakeOpenAI
from tests.helpers import wait_for

AGENT_READY_STATUS = "test agent sleeping"  # what the test agent reports once it is up
_UNSET: Any = object()


@dataclass(frozen=True)
class Job:
    """A live job as its container sees it: the id and the bearer token."""

    job_id: str
    token: str = field(repr=False)


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status, decoded JSON body (None when not JSON) and the raw text."""

    status: int
    body: Any
    text: str
    content_type: str

    def expect_error(self, status: int, code: str | None = None, refusal: str | None = None) -> str:
        """Asserts the spec's error shape (with ``refusal``, a refusal's code, exactly when it
        is given); returns the message."""
        assert self.status == status, (self.status, self.text[:500])
        assert self.content_type == "application/json", self.content_type
        assert isinstance(self.body, dict), self.text[:500]
        fields = {"error", "message"} | ({"refusal"} if refusal is not None else set())
        assert set(self.body) == fields, self.body
        assert self.body.get("refusal") == refusal, self.body
        assert isinstance(self.body["error"], str)
        assert self.body["error"]
        assert isinstance(self.body["message"], str)
        assert self.body["message"]
        if code is not None:
            assert self.body["error"] == code, self.body
        assert "Traceback" not in self.text
        return str(self.body["message"])


class WorkerHttp:
    """Calls the worker API like a job container would, keeping every response text."""

    def __init__(self, session: aiohttp.ClientSession, orch: Orchestrator) -> None:
        self.session = session
        self.base_url = f"http://{orch.http_host}:{orch.http_port}"
        self.seen: list[str] = []

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        json_body: Any = _UNSET,
        data: bytes | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        kwargs: dict[str, Any] = {}
        if json_body is not _UNSET:
            kwargs["json"] = json_body
        if data is not None:
            kwargs["data"] = data
            sent.setdefault("Content-Type", "application/json")
        async with self.session.request(
            method, self.base_url + path, headers=sent, **kwargs
        ) as response:
            text = await response.text()
            content_type = response.content_type
            status = response.status
        self.seen.append(text)
        body = json.loads(text) if text and content_type == "application/json" else None
        return Reply(status, body, text, content_type)

    async def call(
        self, job: Job, method: str, route: str, json_body: Any = _UNSET, **kwargs: Any
    ) -> Reply:
        """``method /worker/{job}/{route}`` with the job's own token unless one is given."""
        kwargs.setdefault("token", job.token)
        return await self.request(
            method, f"/worker/{job.job_id}/{route}", json_body=json_body, **kwargs
        )

    def assert_never_returned(self, *secret_values: str) -> None:
        """No response body seen so far contains any of the values."""
        assert self.seen, "no response was recorded"
        for value in secret_values:
            assert value, "an empty secret proves nothing"
            leaked = [text[:200] for text in self.seen if value in text]
            assert not leaked, f"a secret came back in a response: {leaked}"


@dataclass
class JobFactory:
    """Creates jobs in-process (token included) and stops the ones still live afterwards."""

    created: list[tuple[Orchestrator, str]] = field(default_factory=list)

    async def create(
        self,
        orch: Orchestrator,
        task: str = "sleep",
        *,
        grants: Mapping[str, str] | None = None,
        limits: JobLimitOverrides | None = None,
        ready: bool = False,
    ) -> Job:
        """A new job; ``ready`` makes the calls the test agent's container would make when it
        starts (``GET /job``, then its first status line), so later checks see an agent that
        is up."""
        credentials = tuple(
            CredentialGrant(name=name, credential_type="api_token", value=Secret(v), env_name="")
            for name, v in (grants or {}).items()
        )
        created = await orch.manager.create_job(
            CreateJobRequest(
                task=task, credentials=credentials, limits=limits or JobLimitOverrides()
            )
        )
        assert created.token is not None
        assert not created.already_existed
        job = Job(created.job.job_id, created.token)
        self.created.append((orch, job.job_id))
        if ready:
            await _agent_starts(orch, job)
        return job

    async def stop_all(self) -> None:
        async def stop(orch: Orchestrator, job_id: str) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(orch.manager.stop_job(job_id), timeout=30)

        await asyncio.gather(*(stop(orch, job_id) for orch, job_id in self.created))


async def _agent_starts(orch: Orchestrator, job: Job) -> None:
    base = f"http://{orch.http_host}:{orch.http_port}/worker/{job.job_id}"
    headers = {"Authorization": f"Bearer {job.token}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.get(f"{base}/job", headers=headers) as response:
            assert response.status == 200, await response.text()
        status = {"message": AGENT_READY_STATUS, "iteration": 1}
        async with session.post(f"{base}/status", json=status, headers=headers) as response:
            assert response.status == 200, await response.text()
    await wait_for(
        lambda: orch.manager.get_job(job.job_id).status_message == AGENT_READY_STATUS,
        what="the agent's first status",
    )


# -- orchestrators on the in-memory engine -------------------------------------------------


@pytest.fixture
def test_agent_image() -> str:
    """No image is run here: the name only fills WORKER_IMAGE."""
    return "ironclaw-test-agent:in-memory"


@pytest.fixture
async def start_orch(test_instance: str) -> AsyncIterator[Callable[..., Any]]:
    """Starts orchestrators on free ports, all on one in-memory engine; stops them after."""
    backend = FakeBackend()
    started: list[Orchestrator] = []

    async def start(settings: Any, **kwargs: Any) -> Orchestrator:
        orch = await start_orchestrator(
            settings, backend=backend, grpc_port=0, http_port=0, reaper_interval=0.5, **kwargs
        )
        started.append(orch)
        return orch

    yield start
    for orch in started:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(orch.stop(grace=1), timeout=30)


# -- module-wide orchestrator --------------------------------------------------------------


@pytest.fixture(scope="module")
def openai_key() -> str:
    return "sk-test-" + secrets.token_hex(20)


@pytest.fixture(scope="module")
async def openai_server(openai_key: str) -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key=openai_key) as server:
        yield server


@pytest.fixture
def openai_fake(openai_server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The module's fake OpenAI server; replies a test queued but did not use are dropped."""
    yield openai_server
    openai_server.release_stalled()
    openai_server._replies.clear()  # one test's leftovers must not answer the next one


@pytest.fixture(scope="module")
def shared_settings_env(openai_server: FakeOpenAI, openai_key: str) -> dict[str, str]:
    """The module orchestrator's environment (tests may build variants of it)."""
    return {
        "LLM_PROVIDER": "openai",
        "LLM_BASE_URL": openai_server.base_url,
        "OPENAI_API_KEY": openai_key,
        "LLM_MODEL": "gpt-4o-mini",
        "LLM_MAX_RETRIES": "0",
        "LLM_TIMEOUT_S": "10",
        "LLM_MODEL_ALLOWLIST": "gpt-4o",
        "ORCHESTRATOR_HTTP_MAX_BODY_MB": "16",
        # Every test here calls from 127.0.0.1, some with a hundred calls in flight at once:
        # the cap per source is the flood tests' subject, not these.
        "ORCHESTRATOR_HTTP_MAX_CONNECTIONS_PER_SOURCE": "256",
    }


@pytest.fixture(scope="module")
async def shared_orch(
    tmp_path_factory: pytest.TempPathFactory,
    shared_settings_env: dict[str, str],
) -> AsyncIterator[Orchestrator]:
    """One orchestrator for the whole module; tests that share it use their own jobs."""
    base: Path = tmp_path_factory.mktemp("ironclaw")
    (base / "projects").mkdir()
    instance = f"test-{uuid.uuid4().hex[:10]}"
    settings = Settings.from_env(
        {
            "IRONCLAW_BASE_DIR": str(base),
            "ORCHESTRATOR_INSTANCE": instance,
            "WORKER_MEMORY_MB": "256",
            "STOP_GRACE_S": "2",
            "LOG_FORMAT": "console",
            **shared_settings_env,
        }
    )
    orch = await start_orchestrator(
        settings, backend=FakeBackend(), grpc_port=0, http_port=0, reaper_interval=0.5
    )
    try:
        yield orch
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(orch.stop(grace=1), timeout=30)


# -- per test ----------------------------------------------------------------------------


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


@pytest.fixture
def api_for(http_session: aiohttp.ClientSession) -> Callable[[Orchestrator], WorkerHttp]:
    """``api_for(orch)``: a recording HTTP client for that orchestrator's worker API."""

    def make(orch: Orchestrator) -> WorkerHttp:
        return WorkerHttp(http_session, orch)

    return make


@pytest.fixture
def api(api_for: Callable[[Orchestrator], WorkerHttp], shared_orch: Orchestrator) -> WorkerHttp:
    return api_for(shared_orch)


@pytest.fixture
async def jobs() -> AsyncIterator[JobFactory]:
    factory = JobFactory()
    yield factory
    await factory.stop_all()


@pytest.fixture
def updates_of() -> Callable[[Orchestrator, str, int], Awaitable[list[JobUpdate]]]:
    """``await updates_of(orch, job_id, after)``: the job's updates after that sequence number,
    read through the manager's public ``watch``."""

    async def read(orch: Orchestrator, job_id: str, after: int) -> list[JobUpdate]:
        last = orch.manager.get_job(job_id).last_sequence
        updates: list[JobUpdate] = []
        if last <= after:
            return updates

        async def collect() -> None:
            async for item in orch.manager.watch(job_id, after_sequence=after):
                assert isinstance(item, JobUpdate)
                updates.append(item)
                if item.sequence >= last:
                    return

        await asyncio.wait_for(collect(), timeout=10)
        return updates

    return read
