"""The whole job lifecycle on a real Kubernetes cluster (KUBECONFIG): an orchestrator on this
machine with CONTAINER_BACKEND=kubernetes, reached by the job pods at an address of this
machine (KUBERNETES_ORCHESTRATOR_CIDR lets only that through their NetworkPolicy), running
the real worker image with the scripted provider.

A job completes; its log streams while it runs; a stop ends it STOPPED_BY_OPERATOR; a job over
its memory limit ends OOM_KILLED; an orchestrator stopped and started again adopts a running
job's pod, which then completes, and removes a pod of its instance that no job owns; nothing of
the instance is left after. Not run without KUBECONFIG (tests/kubernetes/fixtures.py).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from grpc import aio

from ironclaw_client.api.v1 import jobs_pb2 as pb
from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc
from orchestrator.containers.spec import build_container_spec
from orchestrator.domain.jobs import JobLimits, JobMode
from orchestrator.settings import Settings
from tests.helpers import wait_for
from tests.kubernetes.fixtures import KubernetesCluster

TERMINAL = (pb.JOB_STATE_STOPPED, pb.JOB_STATE_FAILED)
SAYS_HELLO = {
    "content": "Saying hello first.",
    "tool_calls": [{"name": "shell", "arguments": {"command": "echo k8s-says-hello"}}],
}
DONE = {"content": "Said hello on Kubernetes."}


def script_of(tmp_path: Path, name: str, *turns: dict[str, Any]) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(list(turns)))
    return path


def shell(command: str, timeout: int = 120) -> dict[str, Any]:
    return {
        "content": f"Running {command}",
        "tool_calls": [{"name": "shell", "arguments": {"command": command, "timeout": timeout}}],
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def k8s_orchestrator(
    kubernetes_cluster: KubernetesCluster, tmp_path: Path, test_instance: str
) -> AsyncIterator[Callable[..., Any]]:
    """Starts orchestrators on this machine running jobs on the cluster; stops them and deletes
    what the instance left after, even when the test fails."""
    from orchestrator.service import Orchestrator, start_orchestrator

    host = kubernetes_cluster.host_address()
    port = free_port()
    started: list[tuple[Orchestrator, aio.Channel]] = []

    async def start(script: Path) -> tuple[Orchestrator, Any, Settings]:
        settings = Settings.from_env(
            {
                "IRONCLAW_BASE_DIR": str(tmp_path / "base"),
                "ORCHESTRATOR_INSTANCE": test_instance,
                "CONTAINER_BACKEND": "kubernetes",
                "JOB_NETWORK": "bridge",
                "KUBERNETES_NAMESPACE": kubernetes_cluster.namespace,
                "KUBERNETES_ORCHESTRATOR_URL": f"https://{host}:{port}",
                "KUBERNETES_ORCHESTRATOR_CIDR": f"{host}/32",
                "KUBERNETES_REQUEST_CPUS": "0.1",
                "KUBERNETES_REQUEST_MEMORY_MB": "64",
                "ORCHESTRATOR_HTTP_BIND": "0.0.0.0",
                "WORKER_IMAGE": kubernetes_cluster.worker_image,
                "LLM_PROVIDER": "scripted",
                "LLM_SCRIPT": str(script),
                "STOP_GRACE_S": "2",
                "METRICS_ENABLED": "0",
            }
        )
        orch = await start_orchestrator(settings, grpc_port=0, http_port=port, reaper_interval=0.5)
        channel = aio.insecure_channel(f"127.0.0.1:{orch.grpc_port}")
        started.append((orch, channel))
        return orch, pb_grpc.JobServiceStub(channel), settings

    try:
        yield start
    finally:
        for orch, channel in started:
            await channel.close(grace=None)
            try:
                await orch.stop(grace=1)
            except Exception as exc:  # the next one is stopped all the same
                print(f"stopping an orchestrator failed: {exc!r}")
        kubernetes_cluster.remove_instance(test_instance)


async def create(stub: Any, memory_mb: int = 0) -> str:
    request = pb.CreateJobRequest(task="Say hello.", limits=pb.JobLimits(memory_mb=memory_mb))
    return str((await stub.CreateJob(request)).job.job_id)


async def job_of(stub: Any, job_id: str) -> Any:
    return (await stub.GetJob(pb.GetJobRequest(job_id=job_id))).job


async def ended(stub: Any, job_id: str, timeout: float = 180) -> Any:
    async def done() -> Any:
        job = await job_of(stub, job_id)
        return job if job.state in TERMINAL else None

    return await wait_for(done, timeout=timeout, interval=0.25, what=f"job {job_id} to end")


async def running(stub: Any, job_id: str) -> Any:
    async def up() -> Any:
        job = await job_of(stub, job_id)
        assert job.state not in TERMINAL, job.result.message
        return job if job.state == pb.JOB_STATE_RUNNING else None

    return await wait_for(up, timeout=180, interval=0.25, what=f"job {job_id} to run")


async def logs(stub: Any, job_id: str) -> str:
    request = pb.StreamLogsRequest(job_id=job_id, follow=False)
    return b"".join([chunk.data async for chunk in stub.StreamLogs(request)]).decode(
        "utf-8", "replace"
    )


async def test_a_job_completes_and_nothing_is_left(
    k8s_orchestrator: Any, kubernetes_cluster: KubernetesCluster, tmp_path: Path, test_instance: str
) -> None:
    _, stub, _ = await k8s_orchestrator(script_of(tmp_path, "hello", SAYS_HELLO, DONE))
    job_id = await create(stub)
    job = await ended(stub, job_id)
    assert job.state == pb.JOB_STATE_STOPPED, job.result.message
    assert job.result.reason == pb.TERMINAL_REASON_COMPLETED
    assert job.result.message == DONE["content"]
    await wait_for(
        lambda: not kubernetes_cluster.leftovers(test_instance),
        timeout=60,
        what="the job's pod, secret and policy to be gone",
    )


async def test_logs_stream_while_it_runs_and_a_stop_ends_it(
    k8s_orchestrator: Any, kubernetes_cluster: KubernetesCluster, tmp_path: Path, test_instance: str
) -> None:
    script = script_of(tmp_path, "long", SAYS_HELLO, shell("sleep 120", timeout=150), DONE)
    _, stub, _ = await k8s_orchestrator(script)
    job_id = await create(stub)
    await running(stub, job_id)
    text = await wait_for(lambda: _log_has(stub, job_id, "tool shell"), timeout=60, what="the log")
    assert "tool shell" in text
    # The token is in the pod's environment through its Secret, never in its spec.
    (pod,) = (
        kubernetes_cluster.core()
        .list_namespaced_pod(
            kubernetes_cluster.namespace, label_selector=f"ironclaw.job_id={job_id}"
        )
        .items
    )
    (container,) = pod.spec.containers
    token_env = next(e for e in container.env if e.name == "IRONCLAW_WORKER_TOKEN")
    assert token_env.value is None
    assert token_env.value_from.secret_key_ref.name == f"{pod.metadata.name}-token"
    stopped = (await stub.StopJob(pb.StopJobRequest(job_id=job_id))).job
    job = stopped if stopped.state in TERMINAL else await ended(stub, job_id)
    assert job.state == pb.JOB_STATE_STOPPED
    assert job.result.reason == pb.TERMINAL_REASON_STOPPED_BY_OPERATOR
    await wait_for(
        lambda: not kubernetes_cluster.leftovers(test_instance), timeout=60, what="cleanup"
    )


async def _log_has(stub: Any, job_id: str, text: str) -> str | None:
    found = await logs(stub, job_id)
    return found if text in found else None


async def test_a_job_over_its_memory_limit_is_oom_killed(
    k8s_orchestrator: Any, tmp_path: Path
) -> None:
    # On cgroup v2 the kubelet kills the whole container on OOM (memory.oom.group), so the
    # agent goes with the tool that took the memory: the pod reports OOMKilled.
    hog = shell("python3 -c 'b = bytearray(600 * 2**20); print(len(b))'")
    _, stub, _ = await k8s_orchestrator(script_of(tmp_path, "hog", hog, DONE))
    job_id = await create(stub, memory_mb=128)
    job = await ended(stub, job_id)
    assert job.state == pb.JOB_STATE_FAILED
    assert job.result.reason == pb.TERMINAL_REASON_OOM_KILLED, job.result.message


async def test_a_restarted_orchestrator_adopts_its_job_and_removes_an_orphan(
    k8s_orchestrator: Any, kubernetes_cluster: KubernetesCluster, tmp_path: Path, test_instance: str
) -> None:
    script = script_of(tmp_path, "adopt", SAYS_HELLO, shell("sleep 20", timeout=60), DONE)
    first, stub, settings = await k8s_orchestrator(script)
    job_id = await create(stub)
    await running(stub, job_id)
    # A pod of this instance that no job owns (as a lost store would leave).
    orphan = build_container_spec(
        settings=settings,
        job_id="00000000-0000-4000-8000-000000000abc",
        mode=JobMode.WORKER,
        limits=JobLimits(
            max_iterations=1,
            timeout_seconds=60,
            memory_mb=128,
            llm_token_budget=0,
            llm_call_budget=0,
            llm_max_tokens_per_call=16,
            claude_max_turns=1,
            claude_model="",
        ),
        created_at=datetime.now(UTC),
        token="irc_orphan-token",
        orchestrator_url=settings.kubernetes_orchestrator_url or "",
        project_dir=str(tmp_path),
    )
    orphan_id = await first.backend.create_and_start(orphan)
    await first.stop(grace=1)
    _, stub, _ = await k8s_orchestrator(script)
    job = await ended(stub, job_id)
    assert job.result.reason == pb.TERMINAL_REASON_COMPLETED, job.result.message
    await wait_for(
        lambda: not any(orphan_id in item for item in kubernetes_cluster.leftovers(test_instance)),
        timeout=60,
        what="the orphan pod to be removed",
    )
