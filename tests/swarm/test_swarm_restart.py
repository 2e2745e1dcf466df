"""An orchestrator on a Swarm killed with SIGKILL and started again: it adopts the services of
its live jobs, which then finish, and removes a service of its instance that has no job."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from ironclaw_client.api.v1 import jobs_pb2 as pb
from tests.durability.conftest import OrchestratorProcess, free_port, job_stub
from tests.helpers import wait_for
from tests.swarm.fixtures import SwarmCluster
from tests.swarm.support import (
    DEMO_SCRIPT,
    HOLD_TURN,
    create_job,
    downloaded,
    ended_job,
    release,
    running_task,
)

pytestmark = pytest.mark.docker


def _services(cluster: SwarmCluster, instance: str) -> list[str]:
    manager = cluster.manager.client()
    try:
        rows = manager.api.services(filters={"label": f"ironclaw.instance={instance}"})
        return sorted(str(row["Spec"]["Name"]) for row in rows)
    finally:
        manager.close()


def _orphan_service(cluster: SwarmCluster, instance: str) -> str:
    """A service of this instance whose job no orchestrator knows (left by a lost store)."""
    job_id = str(uuid.uuid4())
    manager = cluster.manager.client()
    try:
        manager.api.create_service(
            {
                "ContainerSpec": {
                    "Image": cluster.job_image,
                    "Command": ["sleep", "300"],
                    "Labels": {"ironclaw.instance": instance, "ironclaw.job_id": job_id},
                },
                "RestartPolicy": {"Condition": "none"},
            },
            name=f"ironclaw-worker-{job_id}",
            labels={"ironclaw.instance": instance, "ironclaw.job_id": job_id},
        )
    finally:
        manager.close()
    return f"ironclaw-worker-{job_id}"


async def test_kill_9_and_restart_adopts_the_services_and_removes_an_orphan(
    swarm_cluster: SwarmCluster,
    base_dir: Path,
    tmp_path: Path,
    test_instance: str,
    demo_copy: Callable[[str], Path],
    swarm_leftovers: Callable[[], Any],
) -> None:
    script = tmp_path / "hold-then-fix.yaml"
    script.write_text(yaml.safe_dump([HOLD_TURN, *yaml.safe_load(DEMO_SCRIPT.read_text())]))
    env = {
        "IRONCLAW_BASE_DIR": str(base_dir),
        "ORCHESTRATOR_INSTANCE": test_instance,
        "ORCHESTRATOR_PORT": str(free_port()),
        "ORCHESTRATOR_HTTP_PORT": str(free_port()),
        "ORCHESTRATOR_EGRESS_PORT": str(free_port()),
        "METRICS_PORT": "0",
        "WORKER_MEMORY_MB": "256",
        "WORKER_CPUS": "0.5",
        "STOP_GRACE_S": "2",
        "LOG_FORMAT": "json",
        "CONTAINER_BACKEND": "swarm",
        "SWARM_MANAGER_URL": swarm_cluster.manager.socket,
        "SWARM_POLL_INTERVAL_S": "0.25",
        "ORCHESTRATOR_HTTP_BIND": swarm_cluster.host_address,
        "JOB_NETWORK": "bridge",
        "WORKER_IMAGE": swarm_cluster.job_image,
        "LLM_PROVIDER": "scripted",
        "LLM_SCRIPT": str(script),
    }
    orch = OrchestratorProcess(env, tmp_path / "orchestrator.log")
    try:
        await orch.start()
        projects = {"z2": demo_copy("adopt-z2"), "z3": demo_copy("adopt-z3")}
        async with job_stub(orch.target) as stub:
            jobs = {zone: await create_job(stub, path, zone) for zone, path in projects.items()}
        for job_id in jobs.values():
            await wait_for(lambda j=job_id: running_task(swarm_cluster, j), timeout=30)
        orch.kill9()
        orphan = _orphan_service(swarm_cluster, test_instance)
        assert len(_services(swarm_cluster, test_instance)) == 3  # the jobs' outlived it
        await orch.start()
        await wait_for(
            lambda: orphan not in _services(swarm_cluster, test_instance),
            timeout=30,
            what="the orphaned service to be removed",
        )
        for job_id in jobs.values():
            await release(swarm_cluster, job_id)
        async with job_stub(orch.target) as stub:
            for job_id in jobs.values():
                job = await ended_job(stub, job_id)
                assert job.result.reason == pb.TERMINAL_REASON_COMPLETED, job.result.message
                # Pushed to the orchestrator that adopted the job.
                assert "return a + b" in (await downloaded(stub, job_id))["calc.py"].decode()
        await wait_for(lambda: not swarm_leftovers(), timeout=30, what="nothing left")
    finally:
        orch.stop_quietly()
        if orch.log_path.exists():
            print(orch.log_path.read_text()[-3000:])
