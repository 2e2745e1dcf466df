"""How a container's death is typed: an OOM kill the engine flags a moment after the exit is
still OOM_KILLED; a plain SIGKILL stays EXITED."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.containers.backend import ContainerExit, ContainerInfo
from orchestrator.domain.jobs import CreateJobRequest, JobSnapshot, JobState, TerminalReason
from orchestrator.jobs.manager import ContainerJobManager
from orchestrator.settings import Settings
from orchestrator.tokens import TokenStore
from tests.fakes.fake_backend import FakeBackend


class LaggingEngine(FakeBackend):
    """Reports a container's OOMKilled flag only from the n-th inspection on, as an engine under
    load can."""

    def __init__(self, flagged_from: int | None) -> None:
        super().__init__()
        self.flagged_from = flagged_from
        self.inspections = 0

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        self.inspections += 1
        flagged = self.flagged_from is not None and self.inspections >= self.flagged_from
        return ContainerInfo(
            container_id, "c", {}, running=False, exit_code=137, oom_killed=flagged, status="exited"
        )


async def run_exit(tmp_path: Path, engine: LaggingEngine) -> JobSnapshot:
    (tmp_path / "projects").mkdir()
    settings = Settings.from_env({"IRONCLAW_BASE_DIR": str(tmp_path), "ORCHESTRATOR_PERSIST": "0"})
    manager = ContainerJobManager(settings, engine, TokenStore(), orchestrator_url="http://x")
    created = await manager.create_job(CreateJobRequest(task="allocate"))
    job_id = created.job.job_id
    container = engine.container_of(job_id)
    container.running, container.status, container.exit_code = False, "exited", 137
    await manager.handle_container_exit(
        ContainerExit(container.container_id, job_id, exit_code=137, oom_killed=False)
    )
    job = await manager.stop_job(job_id)  # waits for the teardown: nothing left in flight
    await manager.close()
    return job


@pytest.mark.parametrize("flagged_from", [1, 3])
async def test_a_late_oom_flag_still_types_the_job_oom_killed(
    tmp_path: Path, flagged_from: int
) -> None:
    engine = LaggingEngine(flagged_from)
    job = await run_exit(tmp_path, engine)
    assert job.state is JobState.FAILED
    assert job.result is not None
    assert job.result.reason is TerminalReason.OOM_KILLED
    assert engine.inspections == flagged_from


async def test_a_sigkill_without_an_oom_flag_is_an_exit(tmp_path: Path) -> None:
    engine = LaggingEngine(flagged_from=None)
    job = await run_exit(tmp_path, engine)
    assert job.result is not None
    assert job.result.reason is TerminalReason.EXITED
    assert job.result.exit_code == 137
    assert engine.inspections >= 2  # it looked again before deciding
