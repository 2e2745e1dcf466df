"""A real orchestrator in-process on free ports, on the in-memory engine: the client's tests
need the control plane and the worker API, not containers. The test plays the job's agent
through the real worker API (``FakeAgent``), as a container would."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.containers.backend import ContainerSpec
from orchestrator.service import Orchestrator, start_orchestrator
from tests.fakes.fake_backend import FakeBackend
from tests.helpers import wait_for


class SlowBackend(FakeBackend):
    """Starts containers only after ``start_delay`` seconds: a slow engine or image pull."""

    start_delay = 0.0

    async def create_and_start(self, spec: ContainerSpec) -> str:
        await asyncio.sleep(self.start_delay)
        return await super().create_and_start(spec)


@dataclass
class Running:
    orch: Orchestrator
    backend: SlowBackend

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.orch.grpc_port}"

    async def agent(self, job_id: str) -> FakeAgent:
        """The agent of ``job_id``'s container, once the container exists."""
        spec = await wait_for(
            lambda: next((s for s in self.backend.created if job_id in s.name), None),
            what=f"the container of job {job_id}",
        )
        token = spec.env["IRONCLAW_WORKER_TOKEN"]
        base = f"http://{self.orch.http_host}:{self.orch.http_port}/worker/{job_id}"
        return FakeAgent(base, token)


@dataclass
class FakeAgent:
    """Makes the worker-API calls a job's agent makes."""

    base: str
    token: str

    async def post(self, path: str, body: dict[str, Any]) -> None:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{self.base}{path}", json=body, headers={"Authorization": f"Bearer {self.token}"}
            ) as response,
        ):
            assert response.status == 200, await response.text()

    async def get_job(self) -> dict[str, Any]:
        """``GET /job``: the job's configuration as its agent sees it."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{self.base}/job", headers={"Authorization": f"Bearer {self.token}"}
            ) as response,
        ):
            assert response.status == 200, await response.text()
            body: dict[str, Any] = await response.json()
            return body

    async def status(self, message: str, iteration: int) -> None:
        await self.post("/status", {"message": message, "iteration": iteration})

    async def complete(self, message: str, success: bool = True) -> None:
        await self.post("/complete", {"success": success, "message": message, "iterations": 1})


StartFn = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_fake_orch(make_settings: Any) -> AsyncIterator[StartFn]:
    """Starts orchestrators on the in-memory engine; stops them after the test."""
    started: list[Orchestrator] = []

    async def start(**env: str) -> Running:
        backend = SlowBackend()
        settings = make_settings(LLM_PROVIDER="none", **env)
        orch = await start_orchestrator(
            settings, backend=backend, grpc_port=0, http_port=0, reaper_interval=0.5
        )
        started.append(orch)
        return Running(orch, backend)

    yield start
    for orch in started:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(orch.stop(grace=1), timeout=30)


@pytest.fixture
async def fake_orch(start_fake_orch: StartFn) -> Running:
    return await start_fake_orch()


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


def make_certificate(directory: Path, name: str) -> Certificate:
    """A self-signed certificate for localhost and 127.0.0.1 (its own CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    paths = Certificate(directory / f"{name}.crt", directory / f"{name}.key")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths
