"""Fixtures for the egress gateway tests: a real orchestrator on the in-memory engine (its real
gateway on a free port, real job manager and tokens), the tests' own upstreams on loopback, and
names pointed at them with ``EGRESS_RESOLVE``. Nothing leaves the machine."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ironclaw_contract.job_keys import egress_key_for
from orchestrator.domain.jobs import CreateJobRequest, JobUpdate, UpdateKind
from orchestrator.service import Orchestrator, start_orchestrator
from orchestrator.settings import Settings
from tests.fakes.fake_backend import FakeBackend
from tests.integration.egress.upstreams import TestCa, Upstream, make_ca

HTTPS_NAMES = ["api.example", "other.example"]


@dataclass(frozen=True)
class Job:
    """A job's id and the password its commands present: its egress key (``key``)."""

    job_id: str
    key: str = field(repr=False)
    token: str = field(default="", repr=False)

    def proxy_url(self, port: int) -> str:
        return f"http://{self.job_id}:{self.key}@127.0.0.1:{port}"


@dataclass
class EgressWorld:
    """One orchestrator with its gateway, the upstreams, the CA, and two live jobs."""

    orch: Orchestrator
    ca: TestCa
    https: Upstream
    http: Upstream
    job: Job
    other_job: Job

    @property
    def port(self) -> int:
        return self.orch.egress_port

    async def egress_events(
        self, job_id: str, until: Callable[[list[dict[str, Any]]], bool]
    ) -> list[dict[str, Any]]:
        """The job's ``egress`` events, read through the manager's ``watch`` (what WatchJob
        streams) from the start, once ``until`` holds for them (at most 10 s)."""
        found: list[dict[str, Any]] = []

        async def collect() -> None:
            async for item in self.orch.manager.watch(job_id, from_start=True):
                if (
                    isinstance(item, JobUpdate)
                    and item.kind is UpdateKind.EVENT
                    and item.payload["event_type"] == "egress"
                ):
                    found.append(dict(item.payload["data"]))
                    if until(found):
                        return

        await asyncio.wait_for(collect(), timeout=10)
        return found


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EgressWorld]:
    base: Path = tmp_path_factory.mktemp("ironclaw")
    (base / "projects").mkdir()
    ca = make_ca(tmp_path_factory.mktemp("ca"), HTTPS_NAMES)
    https = await Upstream(b"hello over https", tls=ca.server_context()).start()
    http = await Upstream(b"hello over http").start()
    settings = Settings.from_env(
        {
            "IRONCLAW_BASE_DIR": str(base),
            "ORCHESTRATOR_INSTANCE": f"test-{uuid.uuid4().hex[:10]}",
            "ORCHESTRATOR_HTTP_BIND": "127.0.0.1",
            "LOG_FORMAT": "console",
            "METRICS_PORT": "0",
            "EGRESS_ALLOW_HOSTS": "api.example:443,other.example:443,web.example,localhost",
            "EGRESS_RESOLVE": (
                f"api.example=127.0.0.1:{https.port},other.example=127.0.0.1:{https.port},"
                f"web.example=127.0.0.1:{http.port}"
            ),
        }
    )
    orch = await start_orchestrator(
        settings, backend=FakeBackend(), grpc_port=0, http_port=0, reaper_interval=0.5
    )
    jobs = []
    for _ in range(2):
        created = await orch.manager.create_job(CreateJobRequest(task="sleep"))
        assert created.token is not None
        job_id = created.job.job_id
        jobs.append(Job(job_id, egress_key_for(created.token, job_id), created.token))
    try:
        yield EgressWorld(orch, ca, https, http, jobs[0], jobs[1])
    finally:
        for job in jobs:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(orch.manager.stop_job(job.job_id), timeout=30)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(orch.stop(grace=1), timeout=30)
        await https.close()
        await http.close()
