"""Jobs on a real three-node Swarm (tests/swarm/conftest.py), created through the control plane
of an orchestrator on this host with CONTAINER_BACKEND=swarm.

The jobs are the demo's (the scripted provider fixes deploy/demo/project), with one turn first
that holds the job until the test lets it go (a file made in its task's /workspace), so that its
task container can be looked at on its node, or its node killed, while it runs. Their
workspaces are volumes on the nodes: fetched from the orchestrator at the start, pushed back at
the end, and what DownloadWorkspace serves.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from ironclaw_client import Client
from ironclaw_client.api.v1 import jobs_pb2 as pb
from orchestrator.errors import ConfigError
from tests.helpers import wait_for
from tests.swarm.fixtures import (
    SwarmCluster,
    daemon_running,
    node_ready,
    restart_node,
)
from tests.swarm.support import (
    create_job,
    downloaded,
    ended_job,
    no_new_privs,
    release,
    running_task,
)

pytestmark = pytest.mark.docker


async def test_jobs_placed_on_two_nodes_run_hardened_to_completion(
    control_plane: Any,
    swarm_cluster: SwarmCluster,
    demo_copy: Callable[[str], Path],
    swarm_leftovers: Callable[[], Any],
    test_instance: str,
) -> None:
    orch, stub = await control_plane()

    # One job on a directory of this host, one on an upload: either reaches its node through
    # the worker API, none is bound.
    def upload(tree: Path) -> str:
        with Client(f"127.0.0.1:{orch.grpc_port}") as client:  # blocking: off the loop
            return client.upload_workspace(tree).project_dir

    uploaded = await asyncio.to_thread(upload, demo_copy("to-upload"))
    projects = {"z2": demo_copy("on-z2"), "z3": Path(uploaded)}
    jobs = {zone: await create_job(stub, project, zone) for zone, project in projects.items()}
    for zone, job_id in jobs.items():
        task = await wait_for(
            lambda job_id=job_id: running_task(swarm_cluster, job_id),
            timeout=30,
            what=f"job {job_id}'s task to run",
        )
        node = swarm_cluster.nodes[int(zone[1]) - 1]
        assert task["hostname"] == node.hostname, "placed by its node label"
        service_labels = task["service"]["Spec"]["Labels"]
        assert service_labels["ironclaw.job_id"] == job_id
        assert service_labels["ironclaw.instance"] == test_instance
        assert task["service"]["Spec"]["TaskTemplate"]["RestartPolicy"]["Condition"] == "none"
        # The task's container, inspected on its own node: the single-host HostConfig items.
        container_id = task["Status"]["ContainerStatus"]["ContainerID"]
        client = node.client()
        try:
            info = client.api.inspect_container(container_id)
        finally:
            client.close()
        host, config = info["HostConfig"], info["Config"]
        assert host["CapDrop"] == ["ALL"]
        assert host["CapAdd"] == ["CAP_CHOWN"]
        assert host["Memory"] == 256 * 1024 * 1024
        assert host["PidsLimit"] == 1024
        assert host["NanoCpus"] == 500_000_000
        assert host["ReadonlyRootfs"] is True
        assert not host.get("Init")
        assert config["User"] == "1000:1000"
        assert config["Labels"]["ironclaw.job_id"] == job_id
        assert config["Labels"]["ironclaw.instance"] == test_instance
        tmpfs = {m["Target"]: m for m in host["Mounts"] if m["Type"] == "tmpfs"}
        assert tmpfs["/tmp"]["TmpfsOptions"]["SizeBytes"] == 512 << 20
        assert "/home/sandbox" in tmpfs
        assert not [m for m in host["Mounts"] if m["Type"] == "bind"]
        volumes = [m for m in host["Mounts"] if m["Type"] == "volume"]
        assert [(m["Target"], m.get("Source", "")) for m in volumes] == [("/workspace", "")]
        # Not visible to inspect: read from the task's process (the nodes share this host's
        # pid namespace).
        assert no_new_privs(int(task["Status"]["ContainerStatus"]["PID"])) == "1"
    for job_id in jobs.values():
        await release(swarm_cluster, job_id)
    for zone, job_id in jobs.items():
        job = await ended_job(stub, job_id)
        assert job.state == pb.JOB_STATE_STOPPED, job.result.message
        assert job.result.reason == pb.TERMINAL_REASON_COMPLETED
        # The fix was made in the volume and pushed back; the host's copy is untouched.
        files = await downloaded(stub, job_id)
        assert "return a + b" in files["calc.py"].decode()
        assert "return a + b" not in (projects[zone] / "calc.py").read_text()
    await wait_for(lambda: not swarm_leftovers(), timeout=30, what="nothing left on the nodes")


async def test_a_placement_no_node_satisfies_fails_the_start_with_the_reason(
    control_plane: Any, demo_copy: Callable[[str], Path], swarm_leftovers: Callable[[], Any]
) -> None:
    _, stub = await control_plane(SWARM_START_TIMEOUT_S="3")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await create_job(stub, demo_copy("nowhere"), "z9")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "node.labels.ironclaw.test.zone==z9" in str(refused.value.details())
    jobs = (await stub.ListJobs(pb.ListJobsRequest())).jobs
    assert [j.result.reason for j in jobs] == [pb.TERMINAL_REASON_START_FAILED]
    assert not swarm_leftovers()


async def test_status_reports_the_swarm_managers_engine_and_its_images(
    swarm_cluster: SwarmCluster, base_dir: Path
) -> None:
    env = {
        **os.environ,
        "CONTAINER_BACKEND": "swarm",
        "JOB_NETWORK": "bridge",
        "SWARM_MANAGER_URL": swarm_cluster.manager.socket,
        "IRONCLAW_BASE_DIR": str(base_dir),
        "WORKER_IMAGE": swarm_cluster.job_image,
        "IRONCLAW_ORCHESTRATOR": "127.0.0.1:9",  # none running: only the engine part counts
    }
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ironclaw"), "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = json.loads(result.stdout)
    assert report["docker"]["reachable"] is True
    assert report["docker"]["address"] == swarm_cluster.manager.socket
    assert report["images"]["worker"] == {"image": swarm_cluster.job_image, "present": True}


async def test_a_node_lost_mid_job_fails_that_job_naming_the_node_while_another_finishes(
    control_plane: Any,
    swarm_cluster: SwarmCluster,
    demo_copy: Callable[[str], Path],
    swarm_leftovers: Callable[[], Any],
) -> None:
    _, stub = await control_plane()
    survivor_project, lost_project = demo_copy("survives"), demo_copy("lost")
    survivor = await create_job(stub, survivor_project, "z2")
    lost = await create_job(stub, lost_project, "z3")
    for job_id in (survivor, lost):
        await wait_for(lambda job_id=job_id: running_task(swarm_cluster, job_id), timeout=30)
    doomed = swarm_cluster.nodes[2]
    killed_at = time.monotonic()
    os.kill(doomed.daemon_pid(), signal.SIGKILL)
    try:
        job = await ended_job(stub, lost, timeout=30)
        marked_s = time.monotonic() - killed_at
        print(f"node loss → job Failed in {marked_s:.1f} s")
        assert job.state == pb.JOB_STATE_FAILED
        assert job.result.reason == pb.TERMINAL_REASON_NODE_LOST
        assert doomed.hostname in job.result.message
        await release(swarm_cluster, survivor)
        job = await ended_job(stub, survivor)
        assert job.result.reason == pb.TERMINAL_REASON_COMPLETED, job.result.message
        assert "return a + b" in (await downloaded(stub, survivor))["calc.py"].decode()
        # The lost job's workspace was on the lost node and never pushed: nothing to serve.
        with pytest.raises(grpc.aio.AioRpcError) as nothing:
            await downloaded(stub, lost)
        assert nothing.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "ended without pushing its workspace back" in str(nothing.value.details())
    finally:
        # The node comes back; the manager then removes the orphaned container there.
        restart_node(swarm_cluster, doomed)
        await wait_for(lambda: node_ready(swarm_cluster, doomed.hostname), timeout=60, interval=0.5)
    await wait_for(lambda: not swarm_leftovers(), timeout=60, interval=0.5, what="no leftovers")


# Restarting a node's dockerd with other settings is the one step of this suite that Docker
# 20.10 here does not survive reliably: the restarted daemon sometimes dies again at once (its
# old containerd still running), the node goes Down, and the job ends NODE_LOST instead. Run it
# before a release with IRONCLAW_SWARM_NODE_RESTART_TESTS=1; the per-task check it proves is
# also covered by the pure tests of the guard (tests/unit/core/test_swarm_service.py).
@pytest.mark.skipif(
    os.environ.get("IRONCLAW_SWARM_NODE_RESTART_TESTS") != "1",
    reason="restarts a node's engine with other settings: IRONCLAW_SWARM_NODE_RESTART_TESTS=1",
)
async def test_a_node_without_no_new_privileges_is_refused_at_start_and_per_task(
    control_plane: Any,
    swarm_cluster: SwarmCluster,
    demo_copy: Callable[[str], Path],
    swarm_leftovers: Callable[[], Any],
) -> None:
    _, stub = await control_plane()  # every node has it: the start's probe passes
    weak = swarm_cluster.nodes[2]
    os.kill(weak.daemon_pid(), signal.SIGTERM)
    await wait_for(lambda: not daemon_running(weak), timeout=30, what="the node's dockerd to stop")
    restart_node(swarm_cluster, weak, no_new_privileges=False)
    try:
        await wait_for(
            lambda: daemon_running(weak) and node_ready(swarm_cluster, weak.hostname),
            timeout=60,
            interval=0.5,
            what="the node back without no-new-privileges",
        )
        # A job that lands there anyway: its task refuses to start the agent.
        project = demo_copy("weak")
        job = await ended_job(stub, await create_job(stub, project, "z3"))
        assert job.state == pb.JOB_STATE_FAILED
        assert job.result.reason == pb.TERMINAL_REASON_EXITED
        assert f"no-new-privileges is off on node {weak.hostname}" in job.result.message
        with pytest.raises(grpc.aio.AioRpcError):  # the agent never ran, so never pushed
            await downloaded(stub, job.job_id)
        # A new orchestrator refuses to start, naming the node and the fix.
        with pytest.raises(ConfigError) as refused:
            await control_plane()
        assert weak.hostname in str(refused.value)
        assert '"no-new-privileges": true' in str(refused.value)
        # Unless the operator accepts it.
        await control_plane(SWARM_ALLOW_NEW_PRIVILEGES="1")
    finally:
        os.kill(weak.daemon_pid(), signal.SIGTERM)
        await wait_for(lambda: not daemon_running(weak), timeout=30)
        restart_node(swarm_cluster, weak, no_new_privileges=True)
        await wait_for(lambda: node_ready(swarm_cluster, weak.hostname), timeout=60, interval=0.5)
    await wait_for(lambda: not swarm_leftovers(), timeout=60, interval=0.5, what="no leftovers")
