"""The job record's lean parts: the bounded update history, the teardown flag, and the
synchronisation objects an ended job never needs until something uses them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from orchestrator.domain.jobs import FollowUpPrompt, JobUpdate, UpdateKind
from orchestrator.jobs.once_flag import OnceFlag
from orchestrator.jobs.record import JobRecord, utcnow
from orchestrator.jobs.update_history import UpdateHistory
from tests.helpers import job_record


def _update(sequence: int) -> JobUpdate:
    return JobUpdate(sequence=sequence, time=utcnow(), kind=UpdateKind.STATUS, payload={})


def _record(history_limit: int = 2000) -> JobRecord:
    return job_record("6f1c1f7e-4a57-4d0e-9c55-0d6c5a3f0b11", history_limit=history_limit)


def _sequences(updates: Iterable[JobUpdate]) -> list[int]:
    return [u.sequence for u in updates]


def test_history_keeps_the_last_limit_updates_in_order() -> None:
    history = UpdateHistory(limit=50)
    for sequence in range(1, 1001):
        history.append(_update(sequence))
        assert len(history) == min(sequence, 50)
        assert _sequences(history)[-1] == sequence
    assert _sequences(history) == list(range(951, 1001))
    assert _sequences(history.after(0)) == list(range(951, 1001))
    assert _sequences(history.after(990)) == list(range(991, 1001))
    assert history.after(1000) == []
    assert history.after(5000) == []


def test_history_extend_trims_and_handles_gaps_from_a_restore() -> None:
    history = UpdateHistory(limit=4)
    assert history.after(0) == []
    history.extend(_update(s) for s in (1, 2, 50, 51, 52))  # transitions kept from long ago
    assert _sequences(history) == [2, 50, 51, 52]
    assert _sequences(history.after(1)) == [2, 50, 51, 52]
    assert _sequences(history.after(2)) == [50, 51, 52]
    assert _sequences(history.after(50)) == [51, 52]
    history.append(_update(53))
    assert _sequences(history.after(0)) == [50, 51, 52, 53]


def test_history_agrees_with_a_bounded_list_at_every_step() -> None:
    history = UpdateHistory(limit=7)
    model: list[int] = []
    for sequence in range(1, 300):
        history.append(_update(sequence))
        model = [*model, sequence][-7:]
        for after in (0, sequence - 3, sequence):
            assert _sequences(history.after(after)) == [s for s in model if s > after]


async def test_once_flag_wakes_waiters_and_stays_set() -> None:
    flag = OnceFlag()
    assert not flag.is_set()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 5) == [True, True, True]
    assert flag.is_set()
    assert await asyncio.wait_for(flag.wait(), 5)
    flag.set()
    assert flag.is_set()


def test_an_ended_job_record_holds_no_synchronisation_objects() -> None:
    job = _record()
    job.history.extend([_update(1), _update(2)])
    job.torn_down.set()
    job.publish(UpdateKind.STATUS, {"message": "x", "iteration": 0})
    # Nothing asked for a lock, a prompt queue or a change signal: none was made.
    assert job._lifecycle_lock is None
    assert job._prompts is None
    assert job._waiters is None
    assert job.torn_down.is_set()


async def test_waiters_are_woken_by_the_next_publish_and_can_be_forgotten() -> None:
    job = _record()
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()
    forgotten: asyncio.Future[None] = loop.create_future()
    job.wake_on_change(woken)
    job.wake_on_change(forgotten)
    job.forget_waiter(forgotten)
    update = job.publish(UpdateKind.STATUS, {"message": "x", "iteration": 0})
    assert woken.done()
    assert not forgotten.done()
    assert job.updates_after(0) == [update]
    # Woken waiters are not kept: the next publish has nobody to wake.
    assert job._waiters is None


def test_prompts_and_lock_are_made_once_on_first_use() -> None:
    job = _record()
    job.prompts.append(FollowUpPrompt(content="more", done=False))
    assert len(job.prompts) == 1
    assert job.lifecycle_lock is job.lifecycle_lock
    assert not job.lifecycle_lock.locked()
