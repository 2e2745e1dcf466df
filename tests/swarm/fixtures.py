"""Fixtures of a real three-node Docker Swarm on this machine, once per test session
(tests/swarm/cluster.sh), and of orchestrators on the host running their jobs on it. A plugin of
the root conftest, so that any suite (tests/swarm, the backend contract) can use the cluster.

The cluster's names derive from this checkout (its path and IRONCLAW_IMAGE_TAG), so sessions of
other checkouts on the same machine never meet it; a cluster left by a killed session of this
checkout is torn down before a new one is made. Each node gets a label
``ironclaw.test.zone=z<i>`` (placement by constraint) and the job image, loaded without a
registry. Without root or the tools it needs, the suite skips locally and fails under CI.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI, ROOT
from tests.swarm.cluster import (
    BASE_IMAGE,
    JOB_IMAGE,
    ZONE_LABEL,
    ClusterError,
    ClusterUpFailed,
    SwarmCluster,
    SwarmNode,
    bring_up,
    build_job_image,
    cluster_ids,
    daemon_running,
    leftovers,
    missing_requirement,
    node_ready,
    restart_node,
    state_dir_for,
    take_down,
)

# Re-exported: the Swarm tests import the cluster's types and node chores from here.
__all__ = [
    "BASE_IMAGE",
    "JOB_IMAGE",
    "ZONE_LABEL",
    "SwarmCluster",
    "SwarmNode",
    "daemon_running",
    "node_ready",
    "restart_node",
]

DEMO_PROJECT = ROOT / "deploy" / "demo" / "project"
BRING_UP_TIMEOUT_S = 110


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but the Swarm test cluster cannot be brought up: {reason}")
    pytest.skip(f"no Swarm test cluster: {reason}")


@pytest.fixture(scope="session")
def swarm_job_image(docker_engine: Any, worker_image: str) -> str:
    """The Swarm tests' job image (tests/swarm/Dockerfile.swarm-job) on the host's engine."""
    try:
        return build_job_image(worker_image, JOB_IMAGE)
    except ClusterError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def swarm_cluster(swarm_job_image: str) -> Iterator[SwarmCluster]:
    """Brings the three-node Swarm up (torn down after the session, whatever happened)."""
    missing = missing_requirement()
    if missing:
        _unavailable(missing)
    cluster_id, net = cluster_ids()
    state_dir = state_dir_for(cluster_id)
    take_down(state_dir)  # what a killed session of this checkout left
    started = time.monotonic()
    try:
        try:
            cluster = bring_up(state_dir, cluster_id, net, swarm_job_image)
        except ClusterUpFailed as exc:
            _unavailable(str(exc))
        except ClusterError as exc:
            pytest.fail(str(exc))
        total = time.monotonic() - started
        print(
            f"Swarm test cluster up in {cluster.bring_up_s:.1f} s, image loaded in "
            f"{cluster.image_load_s:.1f} s"
        )
        assert total < BRING_UP_TIMEOUT_S, f"bringing the cluster up took {total:.0f} s"
        yield cluster
    finally:
        take_down(state_dir)
        left = leftovers(state_dir)
        if left:
            pytest.fail(f"the Swarm test cluster left processes or files behind: {left}")


@pytest.fixture
def demo_copy(base_dir: Path) -> Callable[[str], Path]:
    def make(name: str) -> Path:
        """A copy of deploy/demo/project under the base, owned by uid 1000."""
        path = base_dir / "projects" / name
        shutil.copytree(DEMO_PROJECT, path, ignore=shutil.ignore_patterns("__pycache__"))
        for current, dirs, files in os.walk(path):
            for entry in [current, *(os.path.join(current, n) for n in dirs + files)]:
                os.chown(entry, 1000, 1000)
        return path

    return make


def revive_dead_daemons(cluster: SwarmCluster) -> None:
    """A node's dockerd that died by itself (20.10's Swarm manager has been seen to panic in
    its replicated orchestrator when a service is removed) is started again, its log shown, so
    one engine crash fails one test, not every test after it."""
    for node in cluster.nodes:
        if daemon_running(node):
            continue
        log = cluster.state_dir / f"n{node.index}" / "dockerd.log"
        print(f"--- {node.hostname}'s dockerd had died; its last lines: ---")
        print("\n".join(log.read_text(errors="replace").splitlines()[-40:]))
        restart_node(cluster, node)
    deadline = time.monotonic() + 60
    while not all(daemon_running(n) and node_ready(cluster, n.hostname) for n in cluster.nodes):
        if time.monotonic() > deadline:
            pytest.fail("the Swarm test cluster's nodes did not come back")
        time.sleep(0.5)


@pytest.fixture
def swarm_settings(
    make_settings: Callable[..., Any], swarm_cluster: SwarmCluster
) -> Callable[..., Any]:
    """Settings of an orchestrator whose jobs run on the test cluster."""

    def make(**overrides: Any) -> Any:
        env = {
            "CONTAINER_BACKEND": "swarm",
            "SWARM_MANAGER_URL": swarm_cluster.manager.socket,
            "ORCHESTRATOR_HTTP_BIND": swarm_cluster.host_address,
            "JOB_NETWORK": "bridge",
            "WORKER_IMAGE": swarm_cluster.job_image,
            "WORKER_CPUS": "0.5",
            "SWARM_POLL_INTERVAL_S": "0.25",
            **overrides,
        }
        return make_settings(**env)

    return make


@pytest.fixture
def swarm_leftovers(swarm_cluster: SwarmCluster, test_instance: str) -> Iterator[Callable[[], Any]]:
    """What this test's instance still has on the cluster: services on the manager, containers
    on each node, and volumes a node did not have when the test started (a job's /workspace is
    an anonymous volume of its task: unlabelled, so told apart by name); services and
    containers are removed after the test, whatever happened. Every node is up when the test
    starts."""
    revive_dead_daemons(swarm_cluster)

    def volumes(node: SwarmNode) -> set[str]:
        client = node.client()
        try:
            return {volume.name for volume in client.volumes.list()}
        finally:
            client.close()

    before = {node.hostname: volumes(node) for node in swarm_cluster.nodes}

    def leftovers() -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for node in swarm_cluster.nodes:
            with contextlib.suppress(Exception):
                client = node.client()
                try:
                    names = []
                    # Job containers and services, and the relays and job networks
                    # (JOB_NETWORK=isolated), which carry labels of their own.
                    for label in (
                        f"ironclaw.instance={test_instance}",
                        f"ironclaw.network.instance={test_instance}",
                    ):
                        filters = {"label": label}
                        names += [c.name for c in client.containers.list(all=True, filters=filters)]
                        if node is swarm_cluster.manager:
                            names += [s.name for s in client.services.list(filters=filters)]
                    # A job network on any node (the instance's shared uplink may stay).
                    names += [
                        n["Name"]
                        for n in client.api.networks(
                            filters={"label": f"ironclaw.network.instance={test_instance}"}
                        )
                        if "ironclaw.network.job_id" in (n.get("Labels") or {})
                    ]
                finally:
                    client.close()
                names += [
                    f"volume {name}" for name in sorted(volumes(node) - before[node.hostname])
                ]
                if names:
                    found[node.hostname] = names
        return found

    yield leftovers
    manager = swarm_cluster.manager.client()
    try:
        for label in ("ironclaw.instance", "ironclaw.network.instance"):
            for service in manager.services.list(filters={"label": f"{label}={test_instance}"}):
                with contextlib.suppress(Exception):
                    print(f"--- logs of {service.name} ---")
                    print(
                        b"".join(service.logs(stdout=True, stderr=True, tail=50)).decode(
                            errors="replace"
                        )
                    )
                    service.remove()
        networks = manager.api.networks(
            filters={"label": f"ironclaw.network.instance={test_instance}"}
        )
        deadline = time.monotonic() + 30
        for network in networks:
            # A network is in use until the tasks of the services just removed are gone.
            while time.monotonic() < deadline:
                try:
                    manager.api.remove_network(network["Id"])
                    break
                except Exception as exc:
                    if "not found" in str(exc).lower():
                        break
                    time.sleep(0.2)
    finally:
        manager.close()


@pytest.fixture
def held_demo_script(tmp_path: Path) -> Path:
    """The demo's script behind one turn that holds the job until its project has the
    release file (tests/swarm/support.py)."""
    import yaml

    from tests.swarm.support import DEMO_SCRIPT, HOLD_TURN

    turns = yaml.safe_load(DEMO_SCRIPT.read_text())
    path = tmp_path / "hold-then-fix.yaml"
    path.write_text(yaml.safe_dump([HOLD_TURN, *turns]))
    return path


@pytest.fixture
async def control_plane(
    start_orch: Any, swarm_settings: Callable[..., Any], held_demo_script: Path
) -> Any:
    """``await control_plane(**settings)``: an orchestrator on the cluster running the held
    demo, and a control-plane stub connected to it."""
    from grpc import aio

    from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc

    channels: list[Any] = []

    async def start(**overrides: Any) -> tuple[Any, Any]:
        settings = swarm_settings(
            LLM_PROVIDER="scripted", LLM_SCRIPT=str(held_demo_script), **overrides
        )
        orch = await start_orch(settings)
        channel = aio.insecure_channel(f"127.0.0.1:{orch.grpc_port}")
        channels.append(channel)
        return orch, pb_grpc.JobServiceStub(channel)

    yield start
    for channel in channels:
        await channel.close()
