"""Pushed workspaces: one push per job at a time, each bounded in time as well as in bytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from orchestrator.errors import Busy, DeadlineExceeded
from orchestrator.workspaces.results import RESULTS_DIR, WorkspaceResults

JOB = "3f0c2b8e-1d4a-4e5f-9a7b-6c5d4e3f2a1b"


async def stalled(sent: asyncio.Event, release: asyncio.Event) -> AsyncIterator[bytes]:
    # A job that sent the start of its archive and then trickles nothing more.
    yield b"\x1f\x8b"
    sent.set()
    await release.wait()


def results(tmp_path: Path, executor: ThreadPoolExecutor, timeout_s: float) -> WorkspaceResults:
    return WorkspaceResults(
        tmp_path,
        max_bytes=1 << 20,
        max_unpacked_bytes=16 << 20,
        retain_s=60.0,
        executor=executor,
        timeout_s=timeout_s,
    )


async def test_a_push_that_never_ends_is_cut_at_its_deadline_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    with ThreadPoolExecutor(2) as executor:
        store = results(tmp_path, executor, timeout_s=0.3)
        with pytest.raises(DeadlineExceeded, match="WORKSPACE_UPLOAD_TIMEOUT_S"):
            await store.receive(JOB, stalled(asyncio.Event(), asyncio.Event()))
        assert not store.has(JOB)
        assert list((tmp_path / RESULTS_DIR).iterdir()) == []


async def test_a_second_push_of_the_same_job_while_one_runs_is_busy(tmp_path: Path) -> None:
    with ThreadPoolExecutor(2) as executor:
        store = results(tmp_path, executor, timeout_s=30.0)
        sent, release = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(store.receive(JOB, stalled(sent, release)))
        await asyncio.wait_for(sent.wait(), timeout=5)
        with pytest.raises(Busy, match="already pushing"):
            await store.receive(JOB, stalled(asyncio.Event(), asyncio.Event()))
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        # Once the first is over, the same job is admitted again: its push then runs (and is
        # cut here by the test's own bound), where a second one was refused at once.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await store.receive(JOB, stalled(asyncio.Event(), asyncio.Event()))
