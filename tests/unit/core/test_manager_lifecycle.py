"""The job manager on an in-memory engine: a job's life from creation to its one result and
teardown, the reconciler's decisions, and where jobs live (live ones in memory, ended ones in
the store only, read from there by GetJob, ListJobs and WatchJob, also after a restart)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.containers.backend import ContainerExit
from orchestrator.domain.jobs import (
    CreateJobRequest,
    JobSnapshot,
    JobState,
    JobUpdate,
    TerminalReason,
    UpdateKind,
)
from orchestrator.errors import AlreadyExists, FailedPrecondition, JobNotFound, Unauthenticated
from orchestrator.jobs.manager import ContainerJobManager
from orchestrator.settings import Settings
from orchestrator.store.sqlite_store import SqliteJobStore
from orchestrator.tokens import TokenStore
from tests.fakes.fake_backend import FakeBackend
from tests.helpers import wait_for

INSTANCE = "unit-lifecycle"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "projects").mkdir()
    return Settings.from_env(
        {
            "IRONCLAW_BASE_DIR": str(tmp_path),
            "ORCHESTRATOR_INSTANCE": INSTANCE,
            "METRICS_PORT": "0",
            "STOP_GRACE_S": "0",
        }
    )


Start = Callable[..., ContainerJobManager]


@pytest.fixture
async def start(
    settings: Settings, tmp_path: Path
) -> AsyncIterator[Callable[[FakeBackend], ContainerJobManager]]:
    """Makes managers over one store file (a second one is the orchestrator restarted)."""
    managers: list[ContainerJobManager] = []

    def make(backend: FakeBackend) -> ContainerJobManager:
        store = SqliteJobStore(tmp_path / "orchestrator.db")
        manager = ContainerJobManager(
            settings, backend, TokenStore(), orchestrator_url="http://orch:1", store=store
        )
        manager.restore()
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        await manager.shutdown()
        await manager.close()


async def created(manager: ContainerJobManager, task: str = "work") -> tuple[str, str]:
    job = await manager.create_job(CreateJobRequest(task=task))
    assert job.token is not None
    return job.job.job_id, job.token


async def ended(manager: ContainerJobManager, job_id: str) -> JobSnapshot:
    await wait_for(lambda: manager.get_job(job_id).state.is_terminal, 5, what="the end")
    return manager.get_job(job_id)


async def test_a_job_runs_in_its_container_and_completes(start: Start) -> None:
    backend = FakeBackend()
    manager = start(backend)
    job_id, token = await created(manager)
    container = backend.container_of(job_id)
    assert manager.get_job(job_id).state is JobState.RUNNING
    assert container.spec.env["IRONCLAW_WORKER_TOKEN"] == token
    assert manager.authenticate(job_id, token).job_id == job_id
    snapshot = await manager.complete_job(job_id, True, "all green", teardown=False)
    assert snapshot.state is JobState.STOPPED
    assert snapshot.result is not None
    assert snapshot.result.reason is TerminalReason.COMPLETED
    with pytest.raises(Unauthenticated):
        manager.authenticate(job_id, token)  # the token died with the result
    backend.write_log(container.container_id, "last words")
    manager.begin_teardown(job_id)
    await wait_for(lambda: container.container_id in backend.removed, 5, what="teardown")
    await wait_for(lambda: manager.get_job(job_id).log_tail == "last words\n", 5)


@pytest.mark.parametrize(
    ("exit_code", "oom", "reason"),
    [(3, False, TerminalReason.EXITED), (137, True, TerminalReason.OOM_KILLED)],
)
async def test_a_container_that_dies_fails_its_job_with_the_reason(
    start: Start, exit_code: int, oom: bool, reason: TerminalReason
) -> None:
    backend = FakeBackend()
    manager = start(backend)
    job_id, _ = await created(manager)
    watcher = asyncio.create_task(manager.watch_container_exits())
    try:
        await wait_for(lambda: backend.watching(INSTANCE), 5, what="the exit watcher")
        backend.exit(backend.container_of(job_id).container_id, exit_code, oom_killed=oom)
        job = await ended(manager, job_id)
    finally:
        watcher.cancel()
    assert job.state is JobState.FAILED
    assert job.result is not None
    assert job.result.reason is reason
    assert job.result.exit_code == exit_code


async def test_a_start_failure_is_recorded_and_raised(start: Start) -> None:
    backend = FakeBackend(images=set())
    manager = start(backend)
    with pytest.raises(FailedPrecondition, match="not found"):
        await manager.create_job(CreateJobRequest(task="x"))
    (job,) = manager.list_jobs().jobs
    assert job.state is JobState.FAILED
    assert job.result is not None
    assert job.result.reason is TerminalReason.START_FAILED
    assert backend.containers == {}


async def test_reconciliation_fails_vanished_and_overdue_jobs_and_removes_orphans(
    start: Start, settings: Settings
) -> None:
    backend = FakeBackend()
    manager = start(backend)
    gone, _ = await created(manager, "gone")
    late = await manager.create_job(
        CreateJobRequest(task="late", limits=_overrides(timeout_seconds=1))
    )
    backend.vanish(backend.container_of(gone).container_id)
    orphan = await backend.create_and_start(backend.created[0])  # a copy nobody owns
    backend.containers[orphan].spec = _relabel(backend.containers[orphan].spec, "f" * 8)
    await wait_for(lambda: manager.get_job(late.job.job_id).deadline < _now(), 3)
    await manager.reconcile_once()
    assert _reason(manager, gone) is TerminalReason.CONTAINER_LOST
    assert _reason(manager, late.job.job_id) is TerminalReason.TIMED_OUT
    assert orphan not in backend.containers


async def test_ended_jobs_leave_memory_and_are_read_from_the_store(start: Start) -> None:
    backend = FakeBackend()
    manager = start(backend)
    job_id, _ = await created(manager)
    running, _ = await created(manager, "still running")
    await manager.stop_job(job_id)
    await wait_for(lambda: manager._table.record(job_id) is None, 5, what="eviction")
    job = manager.get_job(job_id)
    assert job.state is JobState.STOPPED
    assert job.result is not None
    assert job.result.reason is TerminalReason.STOPPED_BY_OPERATOR
    assert [j.job_id for j in manager.list_jobs().jobs] == [job_id, running]
    assert [j.job_id for j in manager.list_jobs(frozenset({JobState.RUNNING})).jobs] == [running]
    replay = [item async for item in manager.watch(job_id, from_start=True)]
    assert all(isinstance(item, JobUpdate) for item in replay)
    kinds = [item.kind for item in replay if isinstance(item, JobUpdate)]
    assert kinds[-1] is UpdateKind.RESULT
    assert [item async for item in manager.watch(job_id)] == [job]
    assert manager.state_counts() == {("Stopped", "worker"): 1, ("Running", "worker"): 1}


async def test_watchers_are_told_of_the_end_only_once_it_is_on_disk(
    start: Start, tmp_path: Path
) -> None:
    backend = FakeBackend()
    manager = start(backend)
    job_id, _ = await created(manager)
    seen: list[str] = []

    async def watch() -> None:
        async for item in manager.watch(job_id):
            if isinstance(item, JobUpdate) and item.kind is UpdateKind.RESULT:
                # What a restart would read at this moment already holds the result.
                data = SqliteJobStore(tmp_path / "orchestrator.db").read_job(job_id)
                assert data is not None
                seen.append(data["state"])

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0)  # the watcher is waiting
    await manager.complete_job(job_id, False, "gave up")
    await asyncio.wait_for(watcher, 5)
    assert seen == ["Failed"]


async def test_a_restart_picks_up_live_jobs_and_leaves_ended_ones_in_the_store(
    start: Start,
) -> None:
    backend = FakeBackend()
    first = start(backend)
    live, token = await created(first, "live")
    done, _ = await created(first, "done")
    await first.stop_job(done)
    await first.close()
    second = start(backend)
    assert second._table.record(done) is None
    assert second.get_job(done).state is JobState.STOPPED
    assert second.authenticate(live, token).job_id == live
    await second.reconcile_once()
    assert second.get_job(live).state is JobState.RUNNING
    assert second.container_id(live) == backend.container_of(live).container_id


async def test_an_idempotent_retry_finds_the_job_also_once_it_ended(start: Start) -> None:
    backend = FakeBackend()
    manager = start(backend)
    request = CreateJobRequest(task="x", job_id="8c5c1f3e-0000-4000-8000-0000000000aa")
    first = await manager.create_job(request)
    await manager.stop_job(first.job.job_id)
    await wait_for(lambda: manager._table.record(first.job.job_id) is None, 5)
    again = await manager.create_job(request)
    assert again.already_existed
    assert again.token is None
    assert len(backend.created) == 1


async def test_cleanup_forgets_a_job_for_good_but_keeps_its_id_taken(start: Start) -> None:
    backend = FakeBackend()
    manager = start(backend)
    request = CreateJobRequest(task="x", job_id="8c5c1f3e-0000-4000-8000-0000000000bb")
    job_id = (await manager.create_job(request)).job.job_id
    with pytest.raises(FailedPrecondition, match="stop it before cleaning it up"):
        await manager.cleanup_job(job_id)
    await manager.stop_job(job_id)
    await manager.cleanup_job(job_id)
    with pytest.raises(JobNotFound):
        manager.get_job(job_id)
    assert manager.list_jobs().jobs == []
    assert manager.state_counts() == {}
    with pytest.raises(AlreadyExists):
        await manager.create_job(request)


async def test_drain_stops_every_live_job(start: Start) -> None:
    backend = FakeBackend()
    manager = start(backend)
    ids = [(await created(manager, f"job {n}"))[0] for n in range(3)]
    await manager.shutdown(drain=True)
    for job_id in ids:
        assert _reason(manager, job_id) is TerminalReason.STOPPED_BY_OPERATOR
    assert backend.containers == {}


async def test_exits_of_jobs_that_already_ended_change_nothing(start: Start) -> None:
    backend = FakeBackend()
    manager = start(backend)
    job_id, _ = await created(manager)
    await manager.complete_job(job_id, True, "done")
    await manager.handle_container_exit(ContainerExit("whatever", job_id, 1, False))
    assert _reason(manager, job_id) is TerminalReason.COMPLETED


# ---- helpers ----------------------------------------------------------------------------


def _overrides(**values: Any) -> Any:
    from orchestrator.domain.jobs import JobLimitOverrides

    return JobLimitOverrides(**values)


def _relabel(spec: Any, job_id: str) -> Any:
    from dataclasses import replace

    return replace(spec, labels={**spec.labels, "ironclaw.job_id": job_id})


def _now() -> Any:
    from orchestrator.jobs.record import utcnow

    return utcnow()


def _reason(manager: ContainerJobManager, job_id: str) -> TerminalReason:
    result = manager.get_job(job_id).result
    assert result is not None
    return result.reason
