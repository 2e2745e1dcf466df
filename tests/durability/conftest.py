"""Orchestrators as real processes that the tests kill, stop and start again."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc
from tests.helpers import wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OrchestratorProcess:
    """`ironclaw serve` in a subprocess, on fixed ports so containers find it after a restart."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.grpc_port = int(env["ORCHESTRATOR_PORT"])

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    async def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli.main", "serve"],
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        await wait_for(self._serving, timeout=30, what="the orchestrator to serve")

    async def _serving(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"orchestrator exited:\n{self.log_path.read_text()[-3000:]}")
        try:
            async with aio.insecure_channel(self.target) as channel:
                answer = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                return answer.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def stop_quietly(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(Exception):
                self.proc.wait(timeout=10)


@pytest.fixture
async def orchestrator_process(
    docker_engine: Any, base_dir: Path, test_instance: str, tmp_path: Path
) -> AsyncIterator[Callable[..., OrchestratorProcess]]:
    made: list[OrchestratorProcess] = []

    def make(**env: str) -> OrchestratorProcess:
        full = {
            "IRONCLAW_BASE_DIR": str(base_dir),
            "ORCHESTRATOR_INSTANCE": test_instance,
            "ORCHESTRATOR_PORT": str(free_port()),
            "ORCHESTRATOR_HTTP_PORT": str(free_port()),
            "ORCHESTRATOR_EGRESS_PORT": str(free_port()),
            "METRICS_PORT": "0",
            "WORKER_MEMORY_MB": "256",
            "STOP_GRACE_S": "2",
            "LOG_FORMAT": "json",
            **env,
        }
        process = OrchestratorProcess(full, tmp_path / f"orchestrator-{len(made)}.log")
        made.append(process)
        return process

    yield make
    for process in made:
        process.stop_quietly()
    for row in docker_engine.api.containers(
        all=True, filters={"label": f"ironclaw.instance={test_instance}"}
    ):
        with contextlib.suppress(Exception):
            docker_engine.api.remove_container(row["Id"], force=True)
    for process in made:
        if process.log_path.exists():
            print(f"--- {process.log_path.name} ---")
            print(process.log_path.read_text()[-3000:])


@contextlib.asynccontextmanager
async def job_stub(target: str) -> AsyncIterator[Any]:
    async with aio.insecure_channel(target) as channel:
        yield pb_grpc.JobServiceStub(channel)
