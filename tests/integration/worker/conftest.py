"""Fixtures for the worker's integration tests: the fake worker API and the agent against it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fake_worker_api import FakeWorkerApi
from worker.agent import Agent, AgentConfig
from worker.client import RetryPolicy, WorkerApiClient

# Real backoff would only slow the tests down; the retry logic is the same.
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05, max_total_s=10.0)


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeWorkerApi]:
    api = FakeWorkerApi()
    await api.start()
    yield api
    await api.close()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    return path


@pytest.fixture
def make_client(fake_api: FakeWorkerApi) -> Iterator[Callable[..., WorkerApiClient]]:
    clients: list[WorkerApiClient] = []

    def make(**options: Any) -> WorkerApiClient:
        options.setdefault("retry", FAST_RETRY)
        client = WorkerApiClient(fake_api.url, fake_api.job_id, fake_api.token, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def run_agent(
    workspace: Path, make_client: Callable[..., WorkerApiClient]
) -> Callable[..., Awaitable[int]]:
    """Runs the real agent loop in a thread (it is blocking) against the fake; returns its exit
    code."""

    async def run(
        *,
        max_iterations: int = 50,
        base_env: dict[str, str] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> int:
        config = AgentConfig(
            workspace=workspace,
            max_iterations=max_iterations,
            base_env=base_env if base_env is not None else {"PATH": os.environ["PATH"]},
        )
        agent = Agent(make_client(), config, clock=clock) if clock else Agent(make_client(), config)
        return await asyncio.wait_for(asyncio.to_thread(agent.run), 60)

    return run
