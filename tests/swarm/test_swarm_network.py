"""JOB_NETWORK=isolated on the real three-node Swarm: each job on an internal overlay of its own
whose only peer is its relay service, the worker API over TLS with the orchestrator's own CA,
and nothing else reachable from inside the job; relays and networks removed at the job's end and,
when left behind, by the next orchestrator."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ironclaw_client.api.v1 import jobs_pb2 as pb
from orchestrator.containers.swarm_backend import SwarmBackend
from orchestrator.containers.swarm_network import RELAY_ALIAS
from orchestrator.jobs.isolation import job_network_request
from tests.helpers import wait_for
from tests.swarm.fixtures import SwarmCluster
from tests.swarm.support import create_job, downloaded, ended_job, release, running_task

pytestmark = pytest.mark.docker

# Run as the job's user in its task container: one TCP connect per target, with what happened.
PROBE = r"""
import json, socket, sys
out = {}
for name, host, port in json.loads(sys.argv[1]):
    try:
        socket.create_connection((host, port), timeout=3).close()
        out[name] = "open"
    except Exception as exc:
        out[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def _attachments(task: dict[str, Any]) -> dict[str, str]:
    """The task's address on each network it is attached to (network name → address)."""
    return {
        attachment["Network"]["Spec"]["Name"]: attachment["Addresses"][0].split("/")[0]
        for attachment in task.get("NetworksAttachments") or []
    }


def _relay_task(cluster: SwarmCluster, job_id: str) -> dict[str, Any] | None:
    manager = cluster.manager.client()
    try:
        tasks = manager.api.tasks(
            filters={"service": f"ironclaw-relay-{job_id}", "desired-state": "running"}
        )
        running = [t for t in tasks if t["Status"]["State"] == "running"]
        if not running:
            return None
        node = manager.api.inspect_node(running[0]["NodeID"])
        return {**running[0], "hostname": node["Description"]["Hostname"]}
    finally:
        manager.close()


def _probe(cluster: SwarmCluster, task: dict[str, Any], targets: list[tuple[str, str, int]]) -> Any:
    client = cluster.node(task["hostname"]).client()
    try:
        container = task["Status"]["ContainerStatus"]["ContainerID"]
        exec_id = client.api.exec_create(
            container, ["python3", "-c", PROBE, json.dumps(targets)], user="1000"
        )
        output = client.api.exec_start(exec_id).decode(errors="replace")
        return json.loads(output.strip().splitlines()[-1])
    finally:
        client.close()


def _container(cluster: SwarmCluster, task: dict[str, Any]) -> dict[str, Any]:
    client = cluster.node(task["hostname"]).client()
    try:
        return dict(client.api.inspect_container(task["Status"]["ContainerStatus"]["ContainerID"]))
    finally:
        client.close()


async def test_isolated_jobs_run_over_tls_through_their_relay_and_reach_nothing_else(
    control_plane: Any,
    swarm_cluster: SwarmCluster,
    demo_copy: Callable[[str], Path],
    swarm_leftovers: Callable[[], Any],
) -> None:
    orch, stub = await control_plane(JOB_NETWORK="isolated")
    assert orch.manager.orchestrator_url == f"https://{RELAY_ALIAS}:{orch.http_port}"
    projects = {"z2": demo_copy("iso-z2"), "z3": demo_copy("iso-z3")}
    jobs: dict[str, str] = {}
    for zone, project in projects.items():
        started = time.monotonic()
        jobs[zone] = await create_job(stub, project, zone)
        print(f"isolated CreateJob ({zone}) answered in {time.monotonic() - started:.2f} s")
    tasks = {
        zone: await wait_for(lambda job_id=job_id: running_task(swarm_cluster, job_id), timeout=30)
        for zone, job_id in jobs.items()
    }
    relays = {
        zone: await wait_for(lambda job_id=job_id: _relay_task(swarm_cluster, job_id), timeout=30)
        for zone, job_id in jobs.items()
    }
    for zone in jobs:
        print(f"job on {tasks[zone]['hostname']}, its relay on {relays[zone]['hostname']}")
    job_a, job_b = jobs["z2"], jobs["z3"]
    task_a, relay_a, task_b, relay_b = tasks["z2"], relays["z2"], tasks["z3"], relays["z3"]
    net_a, net_b = f"ironclaw-job-{job_a}", f"ironclaw-job-{job_b}"
    assert set(_attachments(task_a)) == {net_a}, "the job is on its own network only"
    uplink = next(name for name in _attachments(relay_a) if name != net_a)

    # The job's container: the https URL naming its relay, the CA, no host entry.
    env = dict(e.split("=", 1) for e in _container(swarm_cluster, task_a)["Config"]["Env"])
    assert env["IRONCLAW_ORCHESTRATOR_URL"] == f"https://{RELAY_ALIAS}:{orch.http_port}"
    assert env["IRONCLAW_ORCHESTRATOR_CA"].startswith("-----BEGIN CERTIFICATE-----")
    # The relay's container, on its node: hardened like a job's.
    relay_host = _container(swarm_cluster, relay_a)
    assert relay_host["HostConfig"]["ReadonlyRootfs"] is True
    assert relay_host["HostConfig"]["CapDrop"] == ["ALL"]
    assert relay_host["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert relay_host["HostConfig"]["PidsLimit"] == 64
    assert relay_host["Config"]["User"] == "1000:1000"

    # A port of this host the job must not reach, listened on for the test.
    with socket.create_server((swarm_cluster.host_address, 0)) as other:
        other_port = other.getsockname()[1]
        node_a = swarm_cluster.node(task_a["hostname"])
        reach = await asyncio.to_thread(
            _probe,
            swarm_cluster,
            task_a,
            [
                ("worker_api", RELAY_ALIAS, orch.http_port),
                ("egress_gateway", RELAY_ALIAS, orch.egress_port),
                ("other_job", _attachments(task_b)[net_b], 22),
                ("other_relay", _attachments(relay_b)[net_b], orch.http_port),
                ("relay_uplink", _attachments(relay_a)[uplink], orch.http_port),
                ("own_node", node_a.address, 7946),
                ("manager", swarm_cluster.manager.address, 2377),
                ("host_worker_api_direct", swarm_cluster.host_address, orch.http_port),
                ("host_other_port", swarm_cluster.host_address, other_port),
                ("internet", "1.1.1.1", 443),
            ],
        )
    print(f"reachability from job {job_a}: {reach}")
    assert reach.pop("worker_api") == "open"
    assert reach.pop("egress_gateway") == "open"
    for name, outcome in reach.items():
        assert outcome != "open", f"{name} is reachable from inside the job"
        # Refused would mean a host answered: only no route or no answer is isolation.
        assert "ConnectionRefused" not in outcome, f"{name} answered: {outcome}"

    # The workspace is a volume on the job's node: released there, read back through
    # DownloadWorkspace (the project directory on this host is only what the job fetched).
    for job_id in jobs.values():
        await release(swarm_cluster, job_id)
    for job_id in jobs.values():
        job = await ended_job(stub, job_id)
        assert job.result.reason == pb.TERMINAL_REASON_COMPLETED, job.result.message
        assert "return a + b" in (await downloaded(stub, job_id))["calc.py"].decode()
    await wait_for(lambda: not swarm_leftovers(), timeout=60, interval=0.5, what="no leftovers")


async def test_a_job_network_left_behind_is_removed_by_the_next_orchestrator(
    control_plane: Any,
    swarm_settings: Callable[..., Any],
    swarm_leftovers: Callable[[], Any],
) -> None:
    settings = swarm_settings(JOB_NETWORK="isolated")
    backend = SwarmBackend(settings)
    url = f"https://{RELAY_ALIAS}:{settings.http_port}"
    try:
        # A previous run's relay and network, for jobs the store does not know; the time
        # each takes is what isolation adds to a job's start.
        for _ in range(2):
            started = time.monotonic()
            request = job_network_request(settings, str(uuid.uuid4()), url)
            await backend.create_job_network(request)
            print(f"job network and relay ready in {time.monotonic() - started:.2f} s")
        # Idempotent: asked again, the same relay is found ready.
        started = time.monotonic()
        await backend.create_job_network(request)
        print(f"an existing job network found in {time.monotonic() - started:.2f} s")
        assert len(await backend.list_job_networks(settings.instance)) == 2
    finally:
        await backend.close()
    assert swarm_leftovers()
    await control_plane(JOB_NETWORK="isolated")  # its first reconciliation removes them
    await wait_for(lambda: not swarm_leftovers(), timeout=60, interval=0.5, what="orphans gone")
