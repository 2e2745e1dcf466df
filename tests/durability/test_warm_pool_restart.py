"""kill -9 of an orchestrator with claimed and unclaimed warm-pool containers: after the restart
the claimed job runs on to its result, the unclaimed slots are removed and the pool is made
again, and nothing is left behind (no container, relay or network without an owner)."""

from __future__ import annotations

import contextlib
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ironclaw_client.api.v1 import jobs_pb2 as pb
from tests.durability.conftest import free_port, job_stub
from tests.helpers import wait_for

pytestmark = pytest.mark.docker
SCRIPTS = Path(__file__).parent / "scripts"
NETWORK_LABEL = "ironclaw.network.instance"


def _ready_slots(metrics_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0
    found = re.search(r'ironclaw_warm_pool_slots\{mode="worker",state="ready"\} (\S+)', text)
    return int(float(found.group(1))) if found else 0


def _slots(docker_engine: Any, instance: str) -> dict[str, str]:
    """Slot id → container id of the instance's warm-slot containers (claimed or not)."""
    rows = docker_engine.api.containers(
        all=True, filters={"label": [f"ironclaw.instance={instance}", "ironclaw.warm_slot"]}
    )
    return {row["Labels"]["ironclaw.warm_slot"]: row["Id"] for row in rows}


def _network_owners(docker_engine: Any, instance: str) -> set[str]:
    """The ids the instance's job networks and relays are named after."""
    label = f"{NETWORK_LABEL}={instance}"
    rows = docker_engine.api.networks(filters={"label": label})
    relays = docker_engine.api.containers(all=True, filters={"label": label})
    return {row["Labels"]["ironclaw.network.job_id"] for row in [*rows, *relays]}


@pytest.fixture
def remove_networks(docker_engine: Any, test_instance: str) -> Iterator[None]:
    yield
    label = f"{NETWORK_LABEL}={test_instance}"
    for row in docker_engine.api.containers(all=True, filters={"label": label}):
        with contextlib.suppress(Exception):
            docker_engine.api.remove_container(row["Id"], force=True)
    for row in docker_engine.api.networks(filters={"label": label}):
        with contextlib.suppress(Exception):
            docker_engine.api.remove_network(row["Id"])


async def test_kill_9_with_claimed_and_unclaimed_slots_leaves_no_orphan(
    orchestrator_process: Any, worker_image: str, docker_engine: Any, remove_networks: None
) -> None:
    metrics_port = free_port()
    orch = orchestrator_process(
        WORKER_IMAGE=worker_image,
        LLM_PROVIDER="scripted",
        LLM_SCRIPT=str(SCRIPTS / "sleep-then-finish.yaml"),
        WARM_POOL="worker=2",
        METRICS_PORT=str(metrics_port),
    )
    instance = orch.env["ORCHESTRATOR_INSTANCE"]
    await orch.start()
    await wait_for(lambda: _ready_slots(metrics_port) == 2, timeout=120, what="a full pool")
    async with job_stub(orch.target) as stub:
        job = (await stub.CreateJob(pb.CreateJobRequest(task="warm job"))).job
        assert "-warm-" in job.container_name
        claimed = job.container_name.rsplit("-warm-", 1)[1]

        async def in_tool() -> bool:
            found = (await stub.GetJob(pb.GetJobRequest(job_id=job.job_id))).job
            return found.iteration >= 1

        await wait_for(in_tool, timeout=60, what="the job to be in its tool call")
        # Refilled: the claimed slot's container and two unclaimed ones.
        await wait_for(lambda: _ready_slots(metrics_port) == 2, timeout=120, what="a refill")
    before = _slots(docker_engine, instance)
    assert len(before) == 3
    assert claimed in before
    unclaimed = set(before) - {claimed}
    orch.kill9()

    await orch.start()
    async with job_stub(orch.target) as stub:

        async def ended() -> Any:
            found = (await stub.GetJob(pb.GetJobRequest(job_id=job.job_id))).job
            return found if found.state in (pb.JOB_STATE_STOPPED, pb.JOB_STATE_FAILED) else None

        final = await wait_for(ended, timeout=90, what="the claimed job's end")
        assert final.result.reason == pb.TERMINAL_REASON_COMPLETED, final.result.message
        assert final.result.message == "Finished after the restart."
    # The old unclaimed slots are gone; the pool was made anew; the job's slot left with it.
    await wait_for(lambda: _ready_slots(metrics_port) == 2, timeout=120, what="a new pool")
    await wait_for(
        lambda: not (set(_slots(docker_engine, instance)) & (unclaimed | {claimed})),
        timeout=60,
        what="the old slots' removal",
    )
    now = _slots(docker_engine, instance)
    assert len(now) == 2
    # Every network and relay belongs to a slot that exists.
    await wait_for(
        lambda: _network_owners(docker_engine, instance) == set(now),
        timeout=60,
        what="no orphan network or relay",
    )
    # A graceful stop removes the unclaimed slots, their relays and networks.
    assert orch.terminate() == 0
    assert _slots(docker_engine, instance) == {}
    assert _network_owners(docker_engine, instance) == set()
