"""JOB_NETWORK=isolated against the real engine: from inside a job container the worker API
answers and nothing else does (another container of the project, the host's control-plane
port, the host's other ports, another job). JOB_NETWORK=bridge keeps the seed's reach.

Only the project's own containers, the host's own addresses and the Docker bridge are
contacted: an isolated container has no default route, so nothing leaves the host."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from grpc import aio

from ironclaw_client.api.v1 import jobs_pb2 as pb
from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc
from orchestrator.containers.docker_backend import DockerBackend
from orchestrator.containers.docker_network import network_name, relay_name
from orchestrator.jobs.isolation import job_network_request
from tests.helpers import wait_for

pytestmark = pytest.mark.docker

# Connects and reports OPEN or CLOSED (refused, unreachable or timed out: nothing answered).
PROBE = """
import socket, sys
sock = socket.socket()
sock.settimeout(float(sys.argv[3]))
try:
    sock.connect((sys.argv[1], int(sys.argv[2])))
    print("OPEN")
except Exception as exc:
    print("CLOSED", type(exc).__name__)
"""

WORKER_API_CALL = """
import json, os, urllib.request
url = os.environ["IRONCLAW_ORCHESTRATOR_URL"] + "/worker/" + os.environ["IRONCLAW_JOB_ID"] + "/job"
request = urllib.request.Request(url)
request.add_header("Authorization", "Bearer " + os.environ["IRONCLAW_WORKER_TOKEN"])
with urllib.request.urlopen(request, timeout=10) as response:
    print(response.status, json.loads(response.read())["job_id"])
"""


async def _exec(docker_engine: Any, container: str, *args: str) -> str:
    # In a thread: the orchestrator under test answers on this event loop.
    def run() -> str:
        result = docker_engine.api.exec_create(container, ["python3", *args], user="1000")
        output = docker_engine.api.exec_start(result["Id"])
        return str(output.decode(errors="replace")).strip()

    return await asyncio.to_thread(run)


async def _probe(
    docker_engine: Any, container: str, host: str, port: int, timeout: float = 2.0
) -> str:
    return await _exec(docker_engine, container, "-c", PROBE, host, str(port), str(timeout))


def _ip_on(docker_engine: Any, container: str, network: str | None = None) -> str:
    networks = docker_engine.api.inspect_container(container)["NetworkSettings"]["Networks"]
    if network is None:
        network = next(iter(networks))
    return str(networks[network]["IPAddress"])


@pytest.fixture
def server_container(
    docker_engine: Any, test_agent_image: str, test_instance: str
) -> Iterator[tuple[str, int]]:
    """A TCP server in a container of the project on the default bridge: (address, port)."""
    name = f"ironclaw-test-server-{uuid.uuid4().hex[:8]}"
    container = docker_engine.containers.run(
        test_agent_image,
        entrypoint=["python3", "-m", "http.server", "8000"],
        name=name,
        labels={"ironclaw.test-server": test_instance},
        detach=True,
        user="65534",
    )
    try:
        ip = _ip_on(docker_engine, container.id, "bridge")
        yield ip, 8000
    finally:
        with contextlib.suppress(Exception):
            container.remove(force=True)


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A listener on every address of the host (as sshd would be): its port."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", 0))  # a host port open on every address, as sshd
    sock.listen(8)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


async def _isolated_orch(start_orch: Any, make_settings: Any, image: str, mode: str) -> Any:
    return await start_orch(
        make_settings(WORKER_IMAGE=image, JOB_RELAY_IMAGE=image, JOB_NETWORK=mode)
    )


@contextlib.asynccontextmanager
async def _stub(orch: Any) -> AsyncIterator[Any]:
    async with aio.insecure_channel(f"127.0.0.1:{orch.grpc_port}") as channel:
        yield pb_grpc.JobServiceStub(channel)


async def _running_job(orch: Any, stub: Any) -> tuple[str, str]:
    job = (await stub.CreateJob(pb.CreateJobRequest(task="sleep"))).job
    assert job.state == pb.JOB_STATE_RUNNING, job
    await wait_for(
        lambda: orch.manager.get_job(job.job_id).status_message == "test agent sleeping",
        what="the agent's status through the worker API",
    )
    return job.job_id, job.container_name


async def test_isolated_job_reaches_the_worker_api_and_nothing_else(
    start_orch: Any,
    make_settings: Any,
    test_agent_image: str,
    docker_engine: Any,
    server_container: tuple[str, int],
    host_listener: int,
) -> None:
    orch = await _isolated_orch(start_orch, make_settings, test_agent_image, "isolated")
    async with _stub(orch) as stub:
        job_id, container = await _running_job(orch, stub)
        other_id, other_container = await _running_job(orch, stub)

        net = docker_engine.api.inspect_network(network_name(job_id))
        assert net["Internal"] is True
        assert net["Options"].get("com.docker.network.bridge.inhibit_ipv4") == "true"
        attached = {c["Name"] for c in net["Containers"].values()}
        assert attached == {container, relay_name(job_id)}

        # The worker API answers, under its usual URL (the relay answers as its host).
        assert await _exec(docker_engine, container, "-c", WORKER_API_CALL) == f"200 {job_id}"
        # The engine's default route points at the job network's gateway, an address no host
        # or container holds (inhibit_ipv4, probed below): nothing routed there gets anywhere.

        server_ip, server_port = server_container
        assert (await _probe(docker_engine, container, server_ip, server_port)).startswith("CLOSED")
        gateway = str(orch.http_host)  # the docker bridge gateway: the host
        job_gateway = net["IPAM"]["Config"][0]["Gateway"]  # never an address of the host
        for host in (gateway, job_gateway):
            for port in (orch.grpc_port, host_listener):
                assert (await _probe(docker_engine, container, host, port)).startswith("CLOSED"), (
                    host,
                    port,
                )
        other_ip = _ip_on(docker_engine, other_container)
        other_relay_ip = _ip_on(docker_engine, relay_name(other_id), network_name(other_id))
        for ip in (other_ip, other_relay_ip):
            assert (await _probe(docker_engine, container, ip, 8000)).startswith("CLOSED")
            assert (await _probe(docker_engine, container, ip, orch.http_port)).startswith("CLOSED")
        # The relay forwards the worker-API port only.
        assert (
            await _probe(docker_engine, container, "host.docker.internal", orch.http_port) == "OPEN"
        )
        assert (
            await _probe(docker_engine, container, "host.docker.internal", orch.grpc_port)
        ).startswith("CLOSED")

        # The control test: the same probe reaches the server from the bridge side.
        relay_probe = await _probe(docker_engine, relay_name(job_id), server_ip, server_port)
        assert relay_probe == "OPEN"

        # Teardown removes the relay and the network with the container.
        await stub.StopJob(pb.StopJobRequest(job_id=job_id))
        assert docker_engine.api.networks(names=[network_name(job_id)]) == []
        assert docker_engine.api.containers(all=True, filters={"name": relay_name(job_id)}) == []
        await stub.StopJob(pb.StopJobRequest(job_id=other_id))
        assert docker_engine.api.networks(names=[network_name(other_id)]) == []


async def test_bridge_mode_keeps_the_seeds_reach(
    start_orch: Any,
    make_settings: Any,
    test_agent_image: str,
    docker_engine: Any,
    server_container: tuple[str, int],
) -> None:
    orch = await _isolated_orch(start_orch, make_settings, test_agent_image, "bridge")
    async with _stub(orch) as stub:
        job_id, container = await _running_job(orch, stub)
        assert docker_engine.api.networks(names=[network_name(job_id)]) == []
        assert await _exec(docker_engine, container, "-c", WORKER_API_CALL) == f"200 {job_id}"
        server_ip, server_port = server_container
        assert await _probe(docker_engine, container, server_ip, server_port) == "OPEN"


async def test_reconciliation_removes_orphan_job_networks(
    start_orch: Any, make_settings: Any, test_agent_image: str, docker_engine: Any
) -> None:
    # Left over from an earlier run: a network and relay whose job this orchestrator lacks.
    settings = make_settings(
        WORKER_IMAGE=test_agent_image, JOB_RELAY_IMAGE=test_agent_image, JOB_NETWORK="isolated"
    )
    orphan = str(uuid.uuid4())
    backend = DockerBackend()
    try:
        request = job_network_request(settings, orphan, "http://host.docker.internal:9")
        await backend.create_job_network(request)
        assert orphan in await backend.list_job_networks(settings.instance)
    finally:
        await backend.close()
    await start_orch(settings)  # reconciles once before serving
    assert docker_engine.api.networks(names=[network_name(orphan)]) == []
    assert docker_engine.api.containers(all=True, filters={"name": relay_name(orphan)}) == []


async def test_unknown_worker_runtime_fails_the_job_with_a_clear_message(
    start_orch: Any, make_settings: Any, test_agent_image: str, docker_engine: Any
) -> None:
    orch = await start_orch(
        make_settings(WORKER_IMAGE=test_agent_image, WORKER_RUNTIME="ironclaw-no-such-runtime")
    )
    async with _stub(orch) as stub:
        job_id = str(uuid.uuid4())
        with pytest.raises(grpc.RpcError) as info:
            await stub.CreateJob(pb.CreateJobRequest(task="sleep", job_id=job_id))
        details = info.value.details()
        assert "WORKER_RUNTIME=ironclaw-no-such-runtime" in details
        assert "runc" in details
        assert "docker info" in details
        job = (await stub.GetJob(pb.GetJobRequest(job_id=job_id))).job
        assert job.state == pb.JOB_STATE_FAILED
        assert job.result.reason == pb.TERMINAL_REASON_START_FAILED
        assert "WORKER_RUNTIME=ironclaw-no-such-runtime" in job.result.message
