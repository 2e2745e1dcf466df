"""Fixtures for Claude Code mode's integration tests: a fake Anthropic upstream, orchestrators
whose per-job Anthropic route forwards to it, Claude Code jobs created in-process (their
containers run the small test agent, which just waits) with the LLM key their bridge would get
from ``GET /job``, and the real ``claude`` CLI binary taken from the pinned claude-agent-sdk
wheel for tests that run the bridge on the host."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ironclaw_contract.job_keys import llm_key_for
from orchestrator.domain.jobs import CreateJobRequest, JobLimitOverrides, JobMode
from tests.conftest import IN_CI, ROOT
from tests.fakes.fake_anthropic import FakeAnthropic, ReceivedRequest

UPSTREAM_KEY = "sk-ant-upstream-" + "k" * 24


class RecordingAnthropic(FakeAnthropic):
    """The fake Anthropic API, also recording each request's query string and raw body."""

    def __init__(self, api_key: str = UPSTREAM_KEY) -> None:
        super().__init__(api_key=api_key)
        self.query_strings: list[str] = []
        self.raw_bodies: list[bytes] = []  # exactly what arrived, before any JSON decoding

    async def _record(self, request: web.Request) -> ReceivedRequest:
        self.query_strings.append(request.query_string)
        self.raw_bodies.append(await request.read())
        return await super()._record(request)


@dataclass(frozen=True)
class Job:
    job_id: str
    token: str  # the worker token: the bridge's
    key: str  # the LLM key from GET /job: the CLI's ANTHROPIC_API_KEY ("" for a worker job)


@dataclass
class ClaudeRoute:
    """Calls ``/worker/{job_id}/anthropic/...`` on one orchestrator, like the CLI does."""

    orch: Any
    session: aiohttp.ClientSession
    jobs: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://{self.orch.http_host}:{self.orch.http_port}"

    def url(self, job_id: str, path: str = "v1/messages?beta=true") -> str:
        return f"{self.base_url}/worker/{job_id}/anthropic/{path}"

    async def create(
        self, mode: JobMode = JobMode.CLAUDE_CODE, limits: JobLimitOverrides | None = None
    ) -> Job:
        created = await self.orch.manager.create_job(
            CreateJobRequest(task="sleep", mode=mode, limits=limits or JobLimitOverrides())
        )
        assert created.token is not None
        job_id = created.job.job_id
        self.jobs.append(job_id)
        # What the bridge gives the CLI: the job's LLM key, derived from its token.
        key = llm_key_for(created.token, job_id) if mode is JobMode.CLAUDE_CODE else ""
        return Job(job_id, created.token, key)

    async def get_job(self, job_id: str, token: str) -> Any:
        """``GET /worker/{id}/job`` with the worker token, as the bridge calls it."""
        async with self.session.get(
            f"{self.base_url}/worker/{job_id}/job", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    def headers(self, key: str, **extra: str) -> dict[str, str]:
        """The headers the CLI sends (its key as x-api-key)."""
        return {
            "x-api-key": key,
            "anthropic-version": "2023-06-01",
            "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
            "content-type": "application/json",
            "user-agent": "claude-cli/2.1.327 (external, sdk-cli)",
            "x-app": "cli",
            **extra,
        }

    async def stop_all(self) -> None:
        for job_id in self.jobs:
            with contextlib.suppress(Exception):
                await self.orch.manager.stop_job(job_id)


@pytest.fixture
async def upstream() -> AsyncIterator[RecordingAnthropic]:
    async with RecordingAnthropic() as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


@pytest.fixture
async def route_for(
    start_orch: Any,
    make_settings: Any,
    test_agent_image: str,
    http: aiohttp.ClientSession,
) -> AsyncIterator[Callable[..., Any]]:
    """``await route_for(upstream_url, **settings)``: an orchestrator whose Claude Code jobs run
    the test agent and whose Anthropic route forwards to ``upstream_url``."""
    routes: list[ClaudeRoute] = []

    async def make(upstream_url: str, **overrides: str) -> ClaudeRoute:
        env = {
            "WORKER_IMAGE": test_agent_image,
            "CLAUDE_CODE_IMAGE": test_agent_image,
            "CLAUDE_CODE_MEMORY_MB": "256",
            "ANTHROPIC_API_KEY": UPSTREAM_KEY,
            "ANTHROPIC_BASE_URL": upstream_url,
            "LLM_PROVIDER": "none",
            **overrides,
        }
        env = {key: value for key, value in env.items() if value}
        route = ClaudeRoute(await start_orch(make_settings(**env)), http)
        routes.append(route)
        return route

    yield make
    for route in routes:
        await route.stop_all()


# -- the real CLI on the host ----------------------------------------------------------------


def _pinned_sdk_version() -> str:
    text = (ROOT / "Dockerfile.claude").read_text()
    found = re.search(r"^ARG CLAUDE_AGENT_SDK_VERSION=(\S+)$", text, re.MULTILINE)
    assert found, "Dockerfile.claude pins no CLAUDE_AGENT_SDK_VERSION"
    return found.group(1)


@pytest.fixture(scope="session")
def claude_cli() -> Path:
    """The real Claude Code CLI binary, extracted once from the pinned wheel in build/wheels
    (downloaded there by build-wheels.sh --claude when missing)."""
    version = _pinned_sdk_version()
    target = ROOT / "build" / "claude-cli" / version / "claude"
    if target.is_file():
        return target
    wheels = sorted((ROOT / "build" / "wheels").glob(f"claude_agent_sdk-{version}-*.whl"))
    if not wheels:
        result = subprocess.run(
            [str(ROOT / "deploy/scripts/build-wheels.sh"), "--claude", "build/wheels"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        wheels = sorted((ROOT / "build" / "wheels").glob(f"claude_agent_sdk-{version}-*.whl"))
        if not wheels:
            message = f"no claude-agent-sdk {version} wheel: {result.stderr[-2000:]}"
            if IN_CI:
                pytest.fail(message)
            pytest.skip(message)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"claude.{os.getpid()}.partial")
    with zipfile.ZipFile(wheels[0]) as wheel, wheel.open("claude_agent_sdk/_bundled/claude") as src:
        partial.write_bytes(src.read())
    partial.chmod(0o755)
    partial.replace(target)
    return target
