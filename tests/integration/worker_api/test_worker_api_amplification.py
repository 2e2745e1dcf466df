"""What a job can make the orchestrator keep through ``/event``, against a real orchestrator and
real HTTP: the attack that took RSS from 104 MB to 1.37 GB and the store to 1 GB (25 requests of
~29 MB of nested data) now leaves both where they were, and what a job can send within the
limits is kept within its history's byte bound, in memory, in the store, and after a restart."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from ironclaw_contract.json_bounds import json_size
from ironclaw_contract.worker_api import MAX_EVENT_JSON_BYTES, MAX_REPORT_BODY_BYTES
from orchestrator.domain.jobs import JobUpdate, UpdateKind
from orchestrator.jobs.update_history import retained_size
from orchestrator.service import Orchestrator
from orchestrator.store.sqlite_store import ROW_OVERHEAD
from tests.integration.worker_api.conftest import Job, JobFactory, WorkerHttp

pytestmark = pytest.mark.docker

HISTORY_MAX_BYTES = 1 << 20  # JOB_HISTORY_MAX_MB=1
MB = 1 << 20


def _attack_body() -> bytes:
    """The reported attack: nine objects of 200 strings of 16 KB, ~29 MB of JSON."""
    data = {f"a{i}": {f"b{j}": "x" * 16_000 for j in range(200)} for i in range(9)}
    return json.dumps({"event_type": "tool_result", "data": data}).encode()


def _largest_nested_body() -> bytes:
    """The same shape, as large as the event route reads: about four times the event bound."""
    data = {f"a{i}": {f"b{j}": "x" * 16_000 for j in range(5)} for i in range(3)}
    body = json.dumps({"event_type": "tool_result", "data": data}).encode()
    assert MAX_EVENT_JSON_BYTES * 3 < len(body) <= MAX_REPORT_BODY_BYTES
    return body


def _post_blocking(orch: Orchestrator, job: Job, route: str, body: bytes) -> tuple[int, Any]:
    """One POST with http.client: it sends from the caller's buffer, so this process's RSS
    (the orchestrator's) is not inflated by a client-side copy of the body, as aiohttp's
    client transport buffer would be when the server stops reading."""
    conn = http.client.HTTPConnection(orch.http_host, orch.http_port, timeout=60)
    try:
        headers = {"Authorization": f"Bearer {job.token}", "Content-Type": "application/json"}
        # The server may answer and close before taking the whole body.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.request("POST", f"/worker/{job.job_id}/{route}", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@contextlib.asynccontextmanager
async def _peak_rss() -> AsyncIterator[list[int]]:
    """Samples this process's RSS (the orchestrator runs in it) every 10 ms; yields [peak]."""
    peak = [_rss()]

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], _rss())
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        peak[0] = max(peak[0], _rss())


async def _replay(orch: Orchestrator, job_id: str, after: int = 0) -> list[JobUpdate]:
    """The job's retained history after ``after`` (from the start when 0), over ``watch``."""
    last = orch.manager.get_job(job_id).last_sequence
    updates: list[JobUpdate] = []

    async def collect() -> None:
        async for item in orch.manager.watch(job_id, after, from_start=after == 0):
            assert isinstance(item, JobUpdate)
            updates.append(item)
            if item.sequence >= last:
                return

    await asyncio.wait_for(collect(), timeout=20)
    return updates


def _stored(path: Path, job_id: str) -> tuple[int, list[str]]:
    """The bytes the store holds for the job (as its bound counts them) and the row kinds."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        total = conn.execute(
            "SELECT COALESCE(SUM(LENGTH(payload) + ?), 0) FROM updates WHERE job_id = ?",
            (ROW_OVERHEAD, job_id),
        ).fetchone()[0]
        kinds = [
            row[0]
            for row in conn.execute(
                "SELECT kind FROM updates WHERE job_id = ? ORDER BY seq", (job_id,)
            )
        ]
    return int(total), kinds


def _files_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def _check_history(updates: list[JobUpdate], last_sequence: int) -> list[JobUpdate]:
    """The checks any retained history must pass; returns its events."""
    assert sum(retained_size(u) for u in updates) <= HISTORY_MAX_BYTES
    sequences = [u.sequence for u in updates]
    assert sequences == sorted(set(sequences))
    assert sequences[-1] == last_sequence
    assert updates[0].kind is UpdateKind.STATE  # the transitions are always kept
    events = [u for u in updates if u.kind is UpdateKind.EVENT]
    for event in events:
        assert json_size(event.payload["data"]) <= MAX_EVENT_JSON_BYTES
    return events


async def test_huge_nested_events_leave_memory_and_the_store_bounded_across_a_restart(
    start_orch: Any,
    make_settings: Any,
    test_agent_image: str,
    jobs: JobFactory,
    api_for: Callable[[Orchestrator], WorkerHttp],
) -> None:
    settings = make_settings(
        WORKER_IMAGE=test_agent_image,
        JOB_HISTORY_MAX_MB="1",
        JOB_EVENT_RATE="0",  # the byte bounds are under test here, not the rate
    )
    orch: Orchestrator = await start_orch(settings)
    api = api_for(orch)
    job: Job = await jobs.create(orch, ready=True)
    store_path: Path = settings.store_path

    # The attack as reported: each body is refused before it is read, and nothing is kept.
    attack = _attack_body()
    assert len(attack) > 27 * MB  # ~29 million bytes
    before = orch.manager.get_job(job.job_id).last_sequence
    start_rss = _rss()
    async with _peak_rss() as peak:
        for _ in range(25):
            status, body = await asyncio.to_thread(_post_blocking, orch, job, "event", attack)
            assert (status, body["error"]) == (413, "body_too_large"), body
            assert str(MAX_REPORT_BODY_BYTES) in body["message"]
    assert peak[0] - start_rss < 50 * MB, (start_rss, peak[0])
    assert orch.manager.get_job(job.job_id).last_sequence == before

    # The largest bodies the route reads, again and again: each event is cut to its bound
    # (saying so), and the history keeps the newest within its byte bound.
    largest = _largest_nested_body()
    async with _peak_rss() as peak:
        for _ in range(60):
            reply = await api.call(job, "POST", "event", data=largest)
            assert (reply.status, reply.body) == (200, {"status": "ok"}), reply.text
    assert peak[0] - start_rss < 100 * MB, (start_rss, peak[0])
    last = orch.manager.get_job(job.job_id).last_sequence
    assert last == before + 60
    events = _check_history(await _replay(orch, job.job_id), last)
    assert 5 <= len(events) < 60  # 60 events of 64 KB do not fit in 1 MiB: the oldest went
    for event in events:  # every part kept, each cut (and marked) to fit the bound together
        data = event.payload["data"]
        assert [len(data[f"a{i}"]) for i in range(3)] == [5, 5, 5]
        assert all(text.endswith(" chars]") for part in data.values() for text in part.values())
    assert [e.sequence for e in events] == list(range(last - len(events) + 1, last + 1))

    # The store holds no more than the bound either, and its files stay small.
    await orch.stop(grace=1)  # containers stay: the next start adopts the job
    stored_bytes, kinds = _stored(store_path, job.job_id)
    assert stored_bytes <= HISTORY_MAX_BYTES
    assert kinds[0] == "state"
    assert 5 <= kinds.count("event") < 60
    assert _files_size(store_path) < 16 * MB

    # After a restart, what is restored is bounded the same way, replay works from the start
    # and from inside the dropped range, and the job goes on.
    again: Orchestrator = await start_orch(settings)
    jobs.created[:] = [(again, job.job_id)]  # stopped through the orchestrator that has it now
    restored = _check_history(await _replay(again, job.job_id), last)
    assert [e.sequence for e in restored] == [e.sequence for e in events][-len(restored) :]
    resumed = await _replay(again, job.job_id, after=before + 1)  # that one was dropped
    assert resumed
    assert all(u.sequence > before + 1 for u in resumed)
    assert resumed[-1].sequence == last
    api = api_for(again)
    reply = await api.call(job, "POST", "event", {"event_type": "status", "data": {"x": 1}})
    assert reply.status == 200, reply.text
    assert again.manager.get_job(job.job_id).last_sequence == last + 1
