"""Fixtures for Claude Code mode end to end: the real Claude Code image (built offline), a fake
Anthropic upstream on the host, and an orchestrator whose per-job Anthropic route forwards to
it. The CLI in the container only ever talks to the orchestrator."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from grpc import aio

from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc
from tests.fakes.fake_anthropic import FakeAnthropic

UPSTREAM_KEY = "sk-ant-e2e-" + "u" * 30


@dataclass(frozen=True)
class ClaudeRunning:
    orch: Any
    stub: Any
    upstream: FakeAnthropic


@pytest.fixture
async def upstream() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key=UPSTREAM_KEY) as fake:
        yield fake


@pytest.fixture
async def claude(
    start_orch: Any, make_settings: Any, claude_image: str, upstream: FakeAnthropic
) -> AsyncIterator[Callable[..., Any]]:
    """``await claude(**settings)``: an orchestrator running Claude Code jobs in the real image,
    their model calls forwarded to the fake upstream with the orchestrator's key."""
    channels: list[aio.Channel] = []

    async def start(**overrides: str) -> ClaudeRunning:
        # In the default network mode: each job behind its relay, out only through the gateway.
        overrides = {"JOB_NETWORK": "isolated", "JOB_RELAY_IMAGE": claude_image, **overrides}
        settings = make_settings(
            CLAUDE_CODE_IMAGE=claude_image,
            CLAUDE_CODE_MEMORY_MB="1024",
            ANTHROPIC_API_KEY=UPSTREAM_KEY,
            ANTHROPIC_BASE_URL=upstream.url,
            LLM_PROVIDER="none",
            **overrides,
        )
        orch = await start_orch(settings)
        channel = aio.insecure_channel(f"127.0.0.1:{orch.grpc_port}")
        channels.append(channel)
        return ClaudeRunning(orch, pb_grpc.JobServiceStub(channel), upstream)

    yield start
    for channel in channels:
        await channel.close(None)


@pytest.fixture
def project(base_dir: Path) -> Callable[[str], Path]:
    """``project(name)``: a project directory the sandbox user (uid 1000) owns."""

    def make(name: str) -> Path:
        path = base_dir / "projects" / name
        path.mkdir(parents=True)
        os.chown(path, 1000, 1000)
        return path

    return make
