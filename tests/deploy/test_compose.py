"""deploy/compose.yaml comes up with docker-compose (v1 on this machine), answers grpcurl health
behind the admin token on loopback, and runs the offline demo job to completion in an isolated
job network. Builds the orchestrator image (build-images.sh; unchanged images are reused)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from ironclaw_client.api.v1 import jobs_pb2 as pb
from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc
from orchestrator.containers.docker_backend import DockerBackend
from tests.conftest import ROOT, build_image, image_name

pytestmark = pytest.mark.docker

COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
GRPCURL = str(Path(sys.executable).parent / "grpcurl")
TOKEN = f"compose-test-{uuid.uuid4().hex}"
DEMO_TASK = "The tests fail. Find the bug and fix it."


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return ["docker", "compose"]


@pytest.fixture
def base_on_host(tmp_path: Path) -> Path:
    """The projects base: a host path, mounted at the same path, writable by the service."""
    base = tmp_path / "ironclaw-compose"
    project = base / "projects" / "demo"
    shutil.copytree(ROOT / "deploy" / "demo" / "project", project)
    shutil.copy(ROOT / "deploy" / "demo" / "fix-the-tests.yaml", base / "fix-the-tests.yaml")
    for path in (base, base / "projects"):
        os.chown(path, 10001, 10001)
    for path in [project, *project.rglob("*")]:
        os.chown(path, 1000, 1000)
    return base


def test_compose_deployment_serves_health_and_runs_the_demo_job(
    docker_engine: Any, worker_image: str, base_on_host: Path, test_instance: str
) -> None:
    build_image("orchestrator")
    grpc_port, http_port, egress_port = _free_port(), _free_port(), _free_port()
    gateway = asyncio.run(_bridge_gateway())
    env = {
        **os.environ,
        "IRONCLAW_BASE_DIR": str(base_on_host),
        "ORCHESTRATOR_ADMIN_TOKEN": TOKEN,
        "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
        "ORCHESTRATOR_PORT": str(grpc_port),
        "ORCHESTRATOR_HTTP_PORT": str(http_port),
        "ORCHESTRATOR_EGRESS_PORT": str(egress_port),
        "IRONCLAW_BRIDGE_GATEWAY": gateway,
        "ORCHESTRATOR_INSTANCE": test_instance,
        "LLM_PROVIDER": "scripted",
        "LLM_SCRIPT": str(base_on_host / "fix-the-tests.yaml"),
        "STOP_GRACE_S": "2",
        "IRONCLAW_ORCHESTRATOR_IMAGE": image_name("orchestrator"),
        "WORKER_IMAGE": image_name("worker"),
        "CLAUDE_CODE_IMAGE": image_name("claude"),
    }
    project_name = f"ictest{uuid.uuid4().hex[:8]}"
    compose = [*_compose_command(), "-p", project_name, "-f", str(COMPOSE_FILE)]
    try:
        subprocess.run([*compose, "up", "-d"], env=env, check=True, timeout=120)
        target = f"127.0.0.1:{grpc_port}"
        _wait_health(target)
        # grpcurl, as an operator would: the admin token, plaintext on loopback.
        answer = subprocess.run(
            [
                GRPCURL,
                "-plaintext",
                "-H",
                f"authorization: Bearer {TOKEN}",
                target,
                "grpc.health.v1.Health/Check",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert json.loads(answer.stdout)["status"] == "SERVING"
        # The worker API is not published on loopback, nor anywhere but the bridge gateway.
        container = docker_engine.api.inspect_container(f"{project_name}_orchestrator_1")
        ports = container["NetworkSettings"]["Ports"]
        assert ports["50051/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(grpc_port)}]
        assert ports["50052/tcp"] == [{"HostIp": gateway, "HostPort": str(http_port)}]
        assert ports["50053/tcp"] == [{"HostIp": gateway, "HostPort": str(egress_port)}]
        # Descriptors for thousands of worker-API connections, and the service runs with them.
        assert container["HostConfig"]["Ulimits"] == [
            {"Name": "nofile", "Soft": 16384, "Hard": 16384}
        ]
        started = docker_engine.api.logs(container["Id"]).decode(errors="replace")
        limit_lines = [
            json.loads(line) for line in started.splitlines() if "descriptor limit" in line
        ]
        assert limit_lines, started[-2000:]
        assert limit_lines[0]["soft"] == 16384

        job = _run_demo_job(target, base_on_host / "projects" / "demo", docker_engine)
        assert job.state == pb.JOB_STATE_STOPPED, job.result
        assert job.result.reason == pb.TERMINAL_REASON_COMPLETED
        fixed = subprocess.run(
            [sys.executable, "-B", "-m", "unittest"],
            cwd=base_on_host / "projects" / "demo",
            capture_output=True,
            text=True,
        )
        assert fixed.returncode == 0, fixed.stderr
    finally:
        logs = subprocess.run(
            [*compose, "logs", "--tail", "40"], env=env, capture_output=True, text=True, check=False
        )
        print(logs.stdout[-4000:])
        subprocess.run([*compose, "down", "-v"], env=env, check=False, timeout=120)
        _remove_leftovers(docker_engine, test_instance)


async def _bridge_gateway() -> str:
    backend = DockerBackend()
    try:
        gateway = await backend.default_gateway()
    finally:
        await backend.close()
    assert gateway, "the engine's bridge has no gateway"
    return gateway


def _wait_health(target: str) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + 60
    meta = (("authorization", f"Bearer {TOKEN}"),)
    while True:
        with contextlib.suppress(grpc.RpcError), grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2, metadata=meta
            )
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        assert time.monotonic() < deadline, "the compose orchestrator did not become healthy"
        time.sleep(0.5)


def _run_demo_job(target: str, project: Path, docker_engine: Any) -> Any:
    meta = (("authorization", f"Bearer {TOKEN}"),)
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.JobServiceStub(channel)
        created = stub.CreateJob(
            pb.CreateJobRequest(task=DEMO_TASK, project_dir=str(project)), metadata=meta
        ).job
        # Isolated: the job's container is on its own internal network.
        info = docker_engine.api.inspect_container(created.container_name)
        assert list(info["NetworkSettings"]["Networks"]) == [f"ironclaw-job-{created.job_id}"]
        deadline = time.monotonic() + 120
        while True:
            job = stub.GetJob(pb.GetJobRequest(job_id=created.job_id), metadata=meta).job
            if job.state in (pb.JOB_STATE_STOPPED, pb.JOB_STATE_FAILED):
                return job
            assert time.monotonic() < deadline, "the demo job did not finish"
            time.sleep(0.5)


def _remove_leftovers(docker_engine: Any, instance: str) -> None:
    api = docker_engine.api
    for label in ("ironclaw.instance", "ironclaw.network.instance"):
        for row in api.containers(all=True, filters={"label": f"{label}={instance}"}):
            with contextlib.suppress(Exception):
                api.remove_container(row["Id"], force=True)
    for net in api.networks(filters={"label": f"ironclaw.network.instance={instance}"}):
        with contextlib.suppress(Exception):
            api.remove_network(net["Id"])
