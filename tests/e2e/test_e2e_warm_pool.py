"""Warm pools on the real engine: a job claims a started container that held no job identity,
runs the scripted job to completion in it, and the pool refills; a job naming its own project
and a failed claim start cold; the slot's container holds no token before its claim."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ironclaw_client.api.v1 import jobs_pb2 as pb
from orchestrator.jobs.warm_pool import WarmPool, WarmSlot
from tests.e2e.support import create, wait_terminal
from tests.helpers import wait_for

pytestmark = pytest.mark.docker

TASK = "Write hello.txt and read it back."


def _pool(run: Any) -> WarmPool:
    pool = run.orch.manager.warm_pool
    assert pool is not None
    return pool


def _ready_slots(pool: WarmPool) -> list[WarmSlot]:
    return [slot for slot in pool._slots.values() if slot.ready]


async def _wait_ready(pool: WarmPool, count: int = 1) -> list[WarmSlot]:
    return await wait_for(
        lambda: len(_ready_slots(pool)) >= count and _ready_slots(pool),
        timeout=90,
        what=f"{count} ready warm slot(s)",
    )


def _slot_containers(docker_engine: Any, instance: str) -> list[dict[str, Any]]:
    rows = docker_engine.api.containers(
        all=True, filters={"label": [f"ironclaw.instance={instance}", "ironclaw.warm_slot"]}
    )
    return list(rows)


async def test_a_job_claims_a_warm_slot_runs_to_completion_and_the_pool_refills(
    e2e: Any, docker_engine: Any, worker_image: str, base_dir: Path
) -> None:
    # The default network mode: the slot already sits on its own network behind its relay.
    run = await e2e(
        "hello_file.yaml",
        WARM_POOL="worker=1",
        JOB_NETWORK="isolated",
        JOB_RELAY_IMAGE=worker_image,
    )
    pool = _pool(run)
    [slot] = await _wait_ready(pool)
    assert slot.container_id is not None
    inspected = docker_engine.api.inspect_container(slot.container_id)
    env = dict(item.split("=", 1) for item in inspected["Config"]["Env"])
    # No job identity before the claim: neither a job id nor a token, in the environment...
    assert "IRONCLAW_WORKER_TOKEN" not in env
    assert "IRONCLAW_JOB_ID" not in env
    assert env["IRONCLAW_WARM_SLOT"] == slot.slot_id
    assert inspected["Config"]["Labels"]["ironclaw.warm_slot"] == slot.slot_id
    assert "ironclaw.job_id" not in inspected["Config"]["Labels"]
    assert inspected["Config"]["Cmd"] == ["--await-claim"]
    assert inspected["HostConfig"]["NetworkMode"] == f"ironclaw-job-{slot.slot_id}"
    # ... nor on disk: its workspace is empty, and nothing it can read holds a token.
    assert list(slot.directory.iterdir()) == []
    found = docker_engine.api.exec_create(
        slot.container_id, ["sh", "-c", "grep -rl irc_ /workspace /tmp /home/sandbox; true"]
    )
    assert docker_engine.api.exec_start(found["Id"]).strip() == b""
    # Its secret opens its claim channel only: the worker API refuses it everywhere else.
    secret = env["IRONCLAW_WARM_SLOT_SECRET"]
    url = f"http://{run.orch.http_host}:{run.orch.http_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{url}/worker/{slot.slot_id}/job", headers={"Authorization": f"Bearer {secret}"}
        ) as response:
            assert response.status == 401
        async with http.get(
            f"{url}/warm/{slot.slot_id}/claim", headers={"Authorization": "Bearer irc_wrong"}
        ) as response:
            assert response.status == 401

    job = await create(run.stub, TASK)
    assert job.state == pb.JOB_STATE_RUNNING
    # The job runs in the slot's container, with the slot's directory as its project.
    assert job.container_name == slot.container_name
    assert job.project_dir == str(base_dir / "projects" / job.job_id)
    assert not slot.directory.exists()
    final = await wait_terminal(run.stub, job.job_id, timeout=90)
    assert final.result.reason == pb.TERMINAL_REASON_COMPLETED, final.result.message
    assert final.result.message == "Wrote hello.txt."
    hello = base_dir / "projects" / job.job_id / "hello.txt"
    assert hello.read_text() == "hello from the worker\n"
    # The claim revoked the slot's secret: it opens not even the claim channel any more.
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{url}/warm/{slot.slot_id}/claim", headers={"Authorization": f"Bearer {secret}"}
        ) as response,
    ):
        assert response.status == 401
    # The pool made a new slot in the background; the claimed one is gone with its job.
    [fresh] = await _wait_ready(pool)
    assert fresh.slot_id != slot.slot_id
    await wait_for(
        lambda: (
            not any(
                row["Id"] == slot.container_id
                for row in _slot_containers(docker_engine, run.orch.settings.instance)
            )
        ),
        timeout=30,
        what="the claimed slot's container to be removed with its job",
    )
    [state] = pool.states()
    assert (state.claims, state.misses) == (1, 0)
    metrics = run.orch.metrics.exposition().decode()
    assert 'ironclaw_warm_pool_claims_total{mode="worker"} 1.0' in metrics
    assert 'ironclaw_warm_pool_slots{mode="worker",state="ready"} 1.0' in metrics


async def test_a_job_naming_its_project_starts_cold_and_leaves_the_slot(
    e2e: Any, base_dir: Path
) -> None:
    run = await e2e("hello_file.yaml", WARM_POOL="worker=1")
    pool = _pool(run)
    [slot] = await _wait_ready(pool)
    project = base_dir / "projects" / "named"
    project.mkdir()
    os.chown(project, 1000, 1000)
    job = await create(run.stub, TASK, project_dir=str(project))
    assert job.container_name == f"ironclaw-worker-{job.job_id}"
    final = await wait_terminal(run.stub, job.job_id, timeout=90)
    assert final.result.reason == pb.TERMINAL_REASON_COMPLETED, final.result.message
    assert (project / "hello.txt").exists()
    assert [s.slot_id for s in _ready_slots(pool)] == [slot.slot_id]
    [state] = pool.states()
    assert (state.claims, state.misses) == (0, 1)
    metrics = run.orch.metrics.exposition().decode()
    assert 'ironclaw_warm_pool_misses_total{mode="worker",reason="project"} 1.0' in metrics


async def test_a_failed_claim_falls_back_to_a_cold_start(
    e2e: Any, docker_engine: Any, base_dir: Path
) -> None:
    run = await e2e("hello_file.yaml", WARM_POOL="worker=1")
    pool = _pool(run)
    [slot] = await _wait_ready(pool)
    assert slot.container_id is not None
    # A frozen slot: its waiting poll is answered, but its agent never calls in as the job.
    pid = int(docker_engine.api.inspect_container(slot.container_id)["State"]["Pid"])
    os.kill(pid, signal.SIGSTOP)
    job = await create(run.stub, TASK)
    assert job.state == pb.JOB_STATE_RUNNING
    assert job.container_name == f"ironclaw-worker-{job.job_id}"
    final = await wait_terminal(run.stub, job.job_id, timeout=90)
    assert final.result.reason == pb.TERMINAL_REASON_COMPLETED, final.result.message
    assert (base_dir / "projects" / job.job_id / "hello.txt").exists()
    # The frozen slot is removed and replaced.
    await wait_for(
        lambda: docker_engine.api.containers(all=True, filters={"id": slot.container_id}) == [],
        timeout=30,
        what="the frozen slot's removal",
    )
    [state] = pool.states()
    assert (state.claims, state.misses) == (0, 1)
    metrics = run.orch.metrics.exposition().decode()
    assert 'ironclaw_warm_pool_misses_total{mode="worker",reason="claim_failed"} 1.0' in metrics
