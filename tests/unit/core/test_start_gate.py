"""Holding a job's worker-API calls while it is Creating, and reading a mount's identity."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from orchestrator.containers.backend import DirectoryIdentity
from orchestrator.containers.mount_identity import identity_through_proc, parse_stat_output
from orchestrator.domain.jobs import JobState, UpdateKind
from orchestrator.jobs.start_gate import wait_while_creating
from tests.helpers import job_record


def _enter(job: object, state: JobState) -> None:
    job.state = state  # type: ignore[attr-defined]
    job.publish(UpdateKind.STATE, {"state": state, "reason": "test"})  # type: ignore[attr-defined]


async def test_a_job_that_is_not_creating_passes_at_once() -> None:
    job = job_record(state=JobState.RUNNING)
    assert await asyncio.wait_for(wait_while_creating(job, 5), 1) is True


async def test_a_call_waits_until_the_job_is_running() -> None:
    job = job_record()
    waiting = asyncio.create_task(wait_while_creating(job, 5))
    await asyncio.sleep(0)
    # Other updates (a status line, an event) do not release it.
    job.publish(UpdateKind.STATUS, {"message": "x", "iteration": 0})
    await asyncio.sleep(0.01)
    assert not waiting.done()
    _enter(job, JobState.RUNNING)
    assert await asyncio.wait_for(waiting, 1) is True


async def test_a_call_is_released_when_the_job_fails_to_start() -> None:
    job = job_record()
    waiting = asyncio.create_task(wait_while_creating(job, 5))
    await asyncio.sleep(0)
    _enter(job, JobState.FAILED)
    # Released: the handler's token check then refuses it (the token is revoked).
    assert await asyncio.wait_for(waiting, 1) is True


async def test_the_wait_is_bounded_and_leaves_no_waiter_behind() -> None:
    job = job_record()
    assert await wait_while_creating(job, 0.05) is False
    assert not job._waiters


async def test_a_caller_that_goes_away_leaves_no_waiter_behind() -> None:
    job = job_record()
    waiting = asyncio.create_task(wait_while_creating(job, 5))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not job._waiters


def test_stat_output_is_parsed_strictly() -> None:
    assert parse_stat_output("65024 10010677\n") == DirectoryIdentity(65024, 10010677)
    for bad in ("", "65024", "65024 x", "1 2 3", "-1 2", "stat: cannot stat"):
        assert parse_stat_output(bad) is None


def test_the_identity_through_proc_is_read_where_the_process_sees_it(tmp_path: Path) -> None:
    cgroup = Path("/proc/self/cgroup").read_text()
    names = [part for line in cgroup.splitlines() for part in line.split(":")[-1].split("/")]
    marker = next((name for name in names if len(name) > 3), "")
    if not marker:
        pytest.skip("this process sits in the root cgroup: nothing names it")
    st = os.stat(tmp_path)
    seen = identity_through_proc(os.getpid(), marker, str(tmp_path))
    assert seen == DirectoryIdentity(st.st_dev, st.st_ino)


def test_a_process_whose_cgroup_does_not_name_the_container_is_not_asked(tmp_path: Path) -> None:
    assert identity_through_proc(os.getpid(), "f" * 64, str(tmp_path)) is None
    assert identity_through_proc(0, "f" * 64, str(tmp_path)) is None
    assert identity_through_proc(2**22 + 1, "f" * 64, str(tmp_path)) is None
