"""How a container's death is typed: an OOM kill the engine flags a moment after the exit is
still OOM_KILLED; a plain SIGKILL stays EXITED."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from orchestrator.containers.backend import ContainerBackend, ContainerExit, ContainerInfo
from orchestrator.jobs.manager import ContainerJobManager
from orchestrator.jobs.models import CreateJobRequest, JobState, TerminalReason
from orchestrator.settings import Settings
from orchestrator.tokens import TokenStore


class LaggingEngine:
    """Starts a container and reports its OOMKilled flag only from the n-th inspection on."""

    def __init__(self, flagged_from: int | None) -> None:
        self.flagged_from = flagged_from
        self.inspections = 0

    async def create_and_start(self, spec: Any) -> str:
        return "container-1"

    async def inspect(self, container_id: str) -> ContainerInfo:
        self.inspections += 1
        flagged = self.flagged_from is not None and self.inspections >= self.flagged_from
        return ContainerInfo(
            container_id, "c", {}, running=False, exit_code=137, oom_killed=flagged, status="exited"
        )

    async def stop(self, container_id: str, grace_seconds: int) -> None:
        return None

    async def logs_tail(self, container_id: str, lines: int) -> str:
        return ""

    async def remove(self, container_id: str) -> None:
        return None

    async def remove_job_network(self, instance: str, job_id: str) -> None:
        return None

    async def mounted_directory(self, container_id: str, container_path: str) -> None:
        return None  # it mounts nothing: no workspace to verify


async def run_exit(tmp_path: Path, engine: LaggingEngine) -> Any:
    (tmp_path / "projects").mkdir()
    settings = Settings.from_env({"IRONCLAW_BASE_DIR": str(tmp_path), "ORCHESTRATOR_PERSIST": "0"})
    backend = cast(ContainerBackend, engine)
    manager = ContainerJobManager(settings, backend, TokenStore(), orchestrator_url="http://x")
    created = await manager.create_job(CreateJobRequest(task="allocate"))
    job_id = created.job.job_id
    await manager.handle_container_exit(
        ContainerExit("container-1", job_id, exit_code=137, oom_killed=False)
    )
    await manager.close()
    return manager.get_job(job_id)


@pytest.mark.parametrize("flagged_from", [1, 3])
async def test_a_late_oom_flag_still_types_the_job_oom_killed(
    tmp_path: Path, flagged_from: int
) -> None:
    engine = LaggingEngine(flagged_from)
    job = await run_exit(tmp_path, engine)
    assert job.state is JobState.FAILED
    assert job.result.reason is TerminalReason.OOM_KILLED
    assert engine.inspections == flagged_from


async def test_a_sigkill_without_an_oom_flag_is_an_exit(tmp_path: Path) -> None:
    engine = LaggingEngine(flagged_from=None)
    job = await run_exit(tmp_path, engine)
    assert job.result.reason is TerminalReason.EXITED
    assert job.result.exit_code == 137
    assert engine.inspections >= 2  # it looked again before deciding
