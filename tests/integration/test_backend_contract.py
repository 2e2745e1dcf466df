"""The container-backend contract, one suite run against the in-memory fake, a real Docker
engine, a real three-node Swarm and, where KUBECONFIG names one, a real Kubernetes cluster:
create and start, list by instance, logs, exits with their
code, OOM kills, stop, remove. What the job manager relies on, whichever engine is behind it.

The commands run in the base image of the job images (no entrypoint, python3). The fake runs
no process: its rig plays the outcome the command would have (an exit code, an
OOM kill) through the fake's own test hooks, so the fake is held to what the engines do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator.containers.backend import ContainerBackend, ContainerExit, ContainerSpec
from orchestrator.containers.spec import build_container_spec
from orchestrator.domain.jobs import JobLimits, JobMode
from orchestrator.settings import Settings
from tests.fakes.fake_backend import FakeBackend
from tests.helpers import wait_for
from tests.swarm.fixtures import BASE_IMAGE, revive_dead_daemons

LIMITS = JobLimits(
    max_iterations=5,
    timeout_seconds=600,
    memory_mb=64,
    llm_token_budget=0,
    llm_call_budget=0,
    llm_max_tokens_per_call=1024,
    claude_max_turns=5,
    claude_model="",
)
EXIT_3 = ("/bin/sh", "-c", "echo contract-says-hello; exit 3")
SLEEP = ("/bin/sh", "-c", "echo sleeping; exec sleep 300")
# 64 MiB limit, 300 MiB asked for: the kernel's OOM killer ends it.
OOM = ("python3", "-c", "b = bytearray(300 * 2**20); print(len(b))")


@dataclass
class Rig:
    """A backend under contract and what the suite needs to drive it."""

    backend: ContainerBackend
    settings: Settings
    project: Path
    fake: FakeBackend | None = None

    def spec(self, command: tuple[str, ...]) -> ContainerSpec:
        job_id = str(uuid.uuid4())
        spec = build_container_spec(
            settings=self.settings,
            job_id=job_id,
            mode=JobMode.WORKER,
            limits=LIMITS,
            created_at=datetime.now(UTC),
            token="irc_contract_token",
            orchestrator_url="http://127.0.0.1:9",
            project_dir=str(self.project),
            binds_host_paths=self.backend.binds_host_paths,  # as the manager builds it
        )
        return replace(spec, command=command)

    async def start(self, spec: ContainerSpec) -> str:
        container_id = await self.backend.create_and_start(spec)
        if self.fake is not None:
            # What the command would do on an engine.
            if spec.command == EXIT_3:
                self.fake.write_log(container_id, "contract-says-hello")
                self.fake.exit(container_id, 3)
            elif spec.command == OOM:
                self.fake.exit(container_id, 137, oom_killed=True)
        return container_id


@pytest.fixture(params=["fake", "docker", "swarm", "kubernetes"])
async def rig(request: Any, tmp_path: Path, test_instance: str) -> AsyncIterator[Rig]:
    project = tmp_path / "project"
    project.mkdir()
    os.chown(project, 1000, 1000)
    env = {
        "IRONCLAW_BASE_DIR": str(tmp_path),
        "ORCHESTRATOR_INSTANCE": test_instance,
        "JOB_NETWORK": "bridge",
        "WORKER_CPUS": "0.5",
        "STOP_GRACE_S": "1",
    }
    if request.param == "fake":
        fake = FakeBackend()
        yield Rig(fake, Settings.from_env(env), project, fake)
        return
    if request.param == "docker":
        from orchestrator.containers.docker_backend import DockerBackend

        request.getfixturevalue("swarm_job_image")  # builds on the base image: it is there
        backend: ContainerBackend = DockerBackend()
        settings = Settings.from_env({**env, "WORKER_IMAGE": BASE_IMAGE})
    elif request.param == "kubernetes":
        from orchestrator.containers.kubernetes_backend import KubernetesBackend

        # Not run without KUBECONFIG (tests/kubernetes/fixtures.py).
        cluster = request.getfixturevalue("kubernetes_cluster")
        settings = Settings.from_env(
            {
                **env,
                "CONTAINER_BACKEND": "kubernetes",
                "KUBERNETES_NAMESPACE": cluster.namespace,
                "KUBERNETES_ORCHESTRATOR_URL": "http://127.0.0.1:9",
                "WORKER_IMAGE": cluster.image,
            }
        )
        backend = KubernetesBackend(settings)
        try:
            yield Rig(backend, settings, project)
        finally:
            for info in await backend.list_managed(test_instance):
                with contextlib.suppress(Exception):
                    await backend.remove(info.container_id)
            await backend.close()
            cluster.remove_instance(test_instance)
        return
    else:
        from orchestrator.containers.swarm_backend import SwarmBackend

        cluster = request.getfixturevalue("swarm_cluster")
        revive_dead_daemons(cluster)
        settings = Settings.from_env(
            {
                **env,
                "CONTAINER_BACKEND": "swarm",
                "SWARM_MANAGER_URL": cluster.manager.socket,
                "SWARM_POLL_INTERVAL_S": "0.25",
                "WORKER_IMAGE": BASE_IMAGE,
            }
        )
        backend = SwarmBackend(settings)
    try:
        yield Rig(backend, settings, project)
    finally:
        for info in await backend.list_managed(test_instance):
            with contextlib.suppress(Exception):
                await backend.remove(info.container_id)
        await backend.close()


async def test_an_exit_is_listed_reported_with_its_code_and_logged(rig: Rig) -> None:
    spec = rig.spec(EXIT_3)
    job_id = spec.labels["ironclaw.job_id"]
    # Subscribed first: an engine reports what happens after the subscription.
    exits: list[ContainerExit] = []

    async def pump() -> None:
        async for event in rig.backend.exits(rig.settings.instance):
            exits.append(event)
            return

    watcher = asyncio.create_task(pump())
    await asyncio.sleep(0)
    container_id = await rig.start(spec)
    await wait_for(lambda: exits, timeout=30, what="the exit to be reported")
    watcher.cancel()
    event = exits[0]
    assert (event.container_id, event.job_id, event.exit_code) == (container_id, job_id, 3)
    assert not event.oom_killed
    rows = await rig.backend.list_managed(rig.settings.instance)
    listed = {info.container_id: info for info in rows}
    assert listed[container_id].labels["ironclaw.job_id"] == job_id
    assert not listed[container_id].running
    info = await rig.backend.inspect(container_id)
    assert info is not None
    assert info.exited
    assert info.exit_code == 3
    tail = await wait_for(
        lambda: _log_says(rig, container_id, "contract-says-hello"), timeout=10, what="the log"
    )
    assert "contract-says-hello" in tail
    await rig.backend.remove(container_id)
    assert await rig.backend.inspect(container_id) is None
    assert container_id not in {
        info.container_id for info in await rig.backend.list_managed(rig.settings.instance)
    }
    await rig.backend.remove(container_id)  # a missing one is no error


async def _log_says(rig: Rig, container_id: str, text: str) -> str | None:
    tail = await rig.backend.logs_tail(container_id, 20)
    return tail if text in tail else None


async def test_a_running_container_is_stopped_and_its_end_reported(rig: Rig) -> None:
    container_id = await rig.start(rig.spec(SLEEP))
    info = await rig.backend.inspect(container_id)
    assert info is not None
    assert info.running
    other = await rig.backend.list_managed(f"{rig.settings.instance}-other")
    assert container_id not in {i.container_id for i in other}, "listed for its instance only"
    await rig.backend.stop(container_id, grace_seconds=1)
    stopped = await rig.backend.inspect(container_id)
    assert stopped is not None
    assert not stopped.running
    assert not stopped.oom_killed, "a stop is not an OOM kill"
    await rig.backend.stop(container_id, grace_seconds=1)  # stopping twice is no error
    await rig.backend.remove(container_id)


async def test_a_container_over_its_memory_limit_is_an_oom_kill(rig: Rig) -> None:
    spec = rig.spec(OOM)
    exits: list[ContainerExit] = []

    async def pump() -> None:
        async for event in rig.backend.exits(rig.settings.instance):
            exits.append(event)
            return

    watcher = asyncio.create_task(pump())
    await asyncio.sleep(0)
    container_id = await rig.start(spec)
    await wait_for(lambda: exits, timeout=30, what="the OOM kill to be reported")
    watcher.cancel()
    assert exits[0].container_id == container_id
    assert exits[0].exit_code == 137
    assert exits[0].oom_killed
    await rig.backend.remove(container_id)
