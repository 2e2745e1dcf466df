"""ContainerJobManager.watch on a live job restored from a real store: every watcher gets every
update in order, and a watcher that goes away leaves nothing behind on the job."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.domain.jobs import JobSnapshot, JobState, JobUpdate
from orchestrator.jobs.manager import ContainerJobManager
from orchestrator.jobs.persistence import record_to_json
from orchestrator.settings import Settings
from orchestrator.store.sqlite_store import SqliteJobStore
from orchestrator.tokens import TokenStore, token_digest
from tests.fakes.fake_backend import FakeBackend
from tests.helpers import job_record

JOB_ID = str(uuid.UUID(int=7))


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[ContainerJobManager]:
    """A manager holding one running job, restored from its store (no engine involved)."""
    store = SqliteJobStore(tmp_path / "orchestrator.db")
    job = job_record(
        JOB_ID,
        task="watch me",
        container_name="ironclaw-worker-watch",
        state=JobState.RUNNING,
        container_id="c0ffee",
    )
    store.save_job(record_to_json(job), token_digest("irc_watch"))
    await store.flush()
    settings = Settings.from_env({"IRONCLAW_BASE_DIR": str(tmp_path), "METRICS_PORT": "0"})
    manager = ContainerJobManager(settings, FakeBackend(), TokenStore(), store=store)
    assert manager.restore() == 1
    yield manager
    await store.close()


async def _collect(
    manager: ContainerJobManager, into: list[JobSnapshot | JobUpdate], count: int
) -> None:
    async for item in manager.watch(JOB_ID):
        into.append(item)
        if len(into) == count:
            return


def _waiters(manager: ContainerJobManager) -> Any:
    # The record's pending waiters: what a watcher leaves behind when it goes away.
    record = manager._table.record(JOB_ID)
    assert record is not None
    return record._waiters


async def test_every_watcher_gets_every_update_in_order(manager: ContainerJobManager) -> None:
    received: list[list[JobSnapshot | JobUpdate]] = [[] for _ in range(20)]
    watchers = [asyncio.create_task(_collect(manager, into, 31)) for into in received]
    # Each watcher has its snapshot before anything is published.
    await asyncio.wait_for(_until(lambda: all(received)), 5)
    for i in range(30):
        manager.record_event(JOB_ID, "message", {"i": i})
        if i % 7 == 0:
            await asyncio.sleep(0)  # some updates arrive while watchers are still busy
    await asyncio.wait_for(asyncio.gather(*watchers), 5)
    for items in received:
        assert isinstance(items[0], JobSnapshot)
        events = [u.payload["data"]["i"] for u in items[1:] if isinstance(u, JobUpdate)]
        assert events == list(range(30))
    assert not _waiters(manager)


async def test_a_watcher_that_goes_away_leaves_no_waiter(manager: ContainerJobManager) -> None:
    received: list[JobSnapshot | JobUpdate] = []
    watcher = asyncio.create_task(_collect(manager, received, 100))
    await asyncio.wait_for(_until(lambda: received and _waiters(manager)), 5)
    watcher.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watcher
    assert not _waiters(manager)
    manager.record_event(JOB_ID, "message", {"i": 0})  # nobody to wake, nothing to fail


async def _until(condition: Any) -> None:
    """Yields to the loop until ``condition()`` holds (callers put a deadline around it)."""
    while not condition():
        await asyncio.sleep(0)
