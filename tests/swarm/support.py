"""Helpers of the Swarm tests: the held demo job, and what the manager says about a job."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

from ironclaw_client.api.v1 import jobs_pb2 as pb
from tests.conftest import ROOT
from tests.helpers import wait_for
from tests.swarm.fixtures import ZONE_LABEL, SwarmCluster

DEMO_SCRIPT = ROOT / "deploy" / "demo" / "fix-the-tests.yaml"
RELEASE_FILE = ".release"
HOLD_TURN = {
    "content": "Waiting until I am let go.",
    "tool_calls": [
        {
            "name": "shell",
            "arguments": {
                "command": (
                    f"i=0; while [ ! -e {RELEASE_FILE} ] && [ $i -lt 1200 ]; do "
                    "sleep 0.1; i=$((i+1)); done; echo released"
                ),
                "timeout": 180,
            },
        }
    ],
}
TERMINAL = (pb.JOB_STATE_STOPPED, pb.JOB_STATE_FAILED)


async def release(cluster: SwarmCluster, job_id: str, fetched: str = "calc.py") -> None:
    """Lets the held job go: the release file, made in its task's /workspace on its node (the
    workspace is a volume there, no directory of this host), once the job has fetched its
    project into it (``fetched`` is there: before, the fetch would find /workspace not empty)."""
    task = running_task(cluster, job_id)
    assert task is not None, f"job {job_id} has no running task to release"
    client = cluster.node(task["hostname"]).client()
    container_id = task["Status"]["ContainerStatus"]["ContainerID"]

    def run(*argv: str) -> bool:
        made = client.api.exec_create(container_id, list(argv), user="1000:1000")
        client.api.exec_start(made["Id"])
        return bool(client.api.exec_inspect(made["Id"])["ExitCode"] == 0)

    try:
        await wait_for(
            lambda: run("test", "-e", f"/workspace/{fetched}"),
            timeout=30,
            interval=0.1,
            what=f"job {job_id} to fetch its workspace",
        )
        assert run("touch", f"/workspace/{RELEASE_FILE}")
    finally:
        client.close()


async def downloaded(stub: Any, job_id: str) -> dict[str, bytes]:
    """The regular files of the job's DownloadWorkspace archive, by name."""
    data = b"".join(
        [
            chunk.data
            async for chunk in stub.DownloadWorkspace(pb.DownloadWorkspaceRequest(job_id=job_id))
        ]
    )
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for info in tar.getmembers():
            content = tar.extractfile(info) if info.isfile() else None
            if content is not None:
                files[info.name] = content.read()
    return files


async def create_job(stub: Any, project: Path, zone: str) -> str:
    request = pb.CreateJobRequest(
        task="Fix the failing tests.",
        project_dir=str(project),
        placement=pb.JobPlacement(node_labels={ZONE_LABEL: zone}),
    )
    return str((await stub.CreateJob(request)).job.job_id)


async def get_job(stub: Any, job_id: str) -> Any:
    return (await stub.GetJob(pb.GetJobRequest(job_id=job_id))).job


async def ended_job(stub: Any, job_id: str, timeout: float = 90) -> Any:
    async def ended() -> Any:
        job = await get_job(stub, job_id)
        return job if job.state in TERMINAL else None

    return await wait_for(ended, timeout=timeout, interval=0.1, what=f"job {job_id} to end")


def running_task(cluster: SwarmCluster, job_id: str) -> dict[str, Any] | None:
    """The job's running task as the manager reports it, with its node's hostname."""
    manager = cluster.manager.client()
    try:
        services = manager.api.services(filters={"label": f"ironclaw.job_id={job_id}"})
        if not services:
            return None
        tasks = manager.api.tasks(filters={"service": services[0]["ID"]})
        running = [t for t in tasks if t["Status"]["State"] == "running"]
        if not running:
            return None
        task = running[0]
        node = manager.api.inspect_node(task["NodeID"])
        return {**task, "hostname": node["Description"]["Hostname"], "service": services[0]}
    finally:
        manager.close()


def no_new_privs(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NoNewPrivs:"):
            return line.split(":", 1)[1].strip()
    return "?"
