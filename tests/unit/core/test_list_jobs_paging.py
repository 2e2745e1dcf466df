"""ListJobs paging through the manager over a real store of ended jobs (which are read from the
store, not held in memory), merged with the live jobs in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from orchestrator.domain.jobs import (
    JobResult,
    JobState,
    JobUpdate,
    TerminalReason,
    UpdateKind,
)
from orchestrator.errors import InvalidArgument
from orchestrator.jobs.manager import ContainerJobManager
from orchestrator.jobs.persistence import record_to_json
from orchestrator.jobs.record import JobRecord, utcnow
from orchestrator.settings import Settings
from orchestrator.store.sqlite_store import SqliteJobStore
from orchestrator.tokens import TokenStore
from tests.fakes.fake_backend import FakeBackend
from tests.helpers import job_record

# ------------------------------------------------------------------ through the manager


def _ended_job(order: int, state: JobState) -> tuple[JobRecord, list[JobUpdate]]:
    created = utcnow() - timedelta(hours=1) + timedelta(seconds=order)
    reason = TerminalReason.COMPLETED if state is JobState.STOPPED else TerminalReason.FAILED
    result = JobResult(
        success=state is JobState.STOPPED,
        reason=reason,
        message="done",
        finished_at=created + timedelta(seconds=1),
    )
    job = job_record(
        order=order,
        created_at=created,
        history_limit=10,
        state=state,
        finished_at=result.finished_at,
        result=result,
        sequence=1,
    )
    update = JobUpdate(sequence=1, time=created, kind=UpdateKind.RESULT, payload={"result": result})
    return job, [update]


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[ContainerJobManager]:
    """A manager restored from a store of 250 ended jobs (every seventh one failed)."""
    store = SqliteJobStore(tmp_path / "orchestrator.db")
    for order in range(1, 251):
        state = JobState.FAILED if order % 7 == 0 else JobState.STOPPED
        job, updates = _ended_job(order, state)
        store.save_job(record_to_json(job))
        for update in updates:
            store.append_update(job.job_id, update)
    await store.flush()
    settings = Settings.from_env({"IRONCLAW_BASE_DIR": str(tmp_path), "METRICS_PORT": "0"})
    # Restoring and listing ended jobs without containers never reaches the engine.
    manager = ContainerJobManager(settings, FakeBackend(), TokenStore(), store=store)
    manager.restore()
    yield manager
    await store.close()


def _walk(manager: ContainerJobManager, size: int, states: frozenset[JobState]) -> list[str]:
    tasks: list[str] = []
    token = ""
    while True:
        page = manager.list_jobs(states, size, token)
        assert len(page.jobs) <= size
        tasks += [job.task for job in page.jobs]
        token = page.next_page_token
        if not token:
            return tasks


async def test_pages_of_a_restored_history_cover_every_job_once_in_order(
    manager: ContainerJobManager,
) -> None:
    everything = [f"job {order}" for order in range(1, 251)]
    assert _walk(manager, 100, frozenset()) == everything
    assert _walk(manager, 7, frozenset()) == everything
    first = manager.list_jobs(frozenset(), 100)
    assert first.next_page_token == "100"
    last = manager.list_jobs(frozenset(), 100, "200")
    assert [job.task for job in last.jobs] == everything[200:]
    assert last.next_page_token == ""
    assert manager.list_jobs(frozenset(), 100, "250").jobs == []


async def test_state_filter_pages_only_through_matching_jobs(manager: ContainerJobManager) -> None:
    failed = [f"job {order}" for order in range(7, 251, 7)]
    assert _walk(manager, 10, frozenset({JobState.FAILED})) == failed
    page = manager.list_jobs(frozenset({JobState.FAILED}), 10, "70")
    assert page.jobs[0].task == "job 77"


async def test_cleaned_up_jobs_leave_the_pages_without_shifting_the_others(
    manager: ContainerJobManager,
) -> None:
    first = manager.list_jobs(frozenset(), 100)
    gone = [first.jobs[-1].job_id, first.jobs[0].job_id]
    second = manager.list_jobs(frozenset(), 100, first.next_page_token)
    gone.append(second.jobs[0].job_id)
    for job_id in gone:
        await manager.cleanup_job(job_id)
    again = manager.list_jobs(frozenset(), 100, first.next_page_token)
    assert [job.task for job in again.jobs][:2] == ["job 102", "job 103"]
    remaining = [f"job {order}" for order in range(1, 251) if order not in (1, 100, 101)]
    assert _walk(manager, 100, frozenset()) == remaining


def test_a_malformed_page_token_is_invalid_argument(manager: ContainerJobManager) -> None:
    with pytest.raises(InvalidArgument):
        manager.list_jobs(frozenset(), 100, "not-a-number")
