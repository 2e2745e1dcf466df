"""A job's history is bounded in bytes as well as in number, in memory and in the store; its
state changes and its result always stay."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from orchestrator.domain.jobs import JobResult, JobState, JobUpdate, TerminalReason, UpdateKind
from orchestrator.jobs.persistence import record_to_json
from orchestrator.jobs.record import utcnow
from orchestrator.jobs.update_history import (
    UPDATE_OVERHEAD,
    VALUE_OVERHEAD,
    UpdateHistory,
    retained_size,
)
from orchestrator.store.sqlite_store import ROW_OVERHEAD, SqliteJobStore
from tests.helpers import job_record

JOB_ID = "6f1c1f7e-4a57-4d0e-9c55-0d6c5a3f0b11"


def _event(sequence: int, text_chars: int = 1000) -> JobUpdate:
    data = {"output": "x" * text_chars}
    return JobUpdate(sequence, utcnow(), UpdateKind.EVENT, {"event_type": "message", "data": data})


def _state(sequence: int, state: JobState = JobState.RUNNING) -> JobUpdate:
    return JobUpdate(sequence, utcnow(), UpdateKind.STATE, {"state": state, "reason": "x"})


def _result(sequence: int) -> JobUpdate:
    result = JobResult(
        success=True, reason=TerminalReason.COMPLETED, message="done", finished_at=utcnow()
    )
    return JobUpdate(sequence, utcnow(), UpdateKind.RESULT, {"result": result})


def _sequences(updates: list[JobUpdate]) -> list[int]:
    return [u.sequence for u in updates]


def test_retained_size_counts_text_and_values() -> None:
    assert retained_size(_event(1, 1000)) == UPDATE_OVERHEAD + 3 * VALUE_OVERHEAD + 1006
    status = JobUpdate(1, utcnow(), UpdateKind.STATUS, {"message": "abc", "iteration": 1})
    assert retained_size(status) == UPDATE_OVERHEAD + 3
    # Tiny values are charged for what they cost in memory, not for their JSON.
    swarm = JobUpdate(
        1, utcnow(), UpdateKind.EVENT, {"event_type": "m", "data": {"x": [[]] * 1000}}
    )
    assert retained_size(swarm) > 1000 * VALUE_OVERHEAD


def test_the_oldest_updates_go_first_once_the_bytes_are_spent() -> None:
    size = retained_size(_event(1))
    history = UpdateHistory(limit=10_000, max_bytes=10 * size)
    for sequence in range(1, 101):
        history.append(_event(sequence))
        assert history.retained_bytes <= 10 * size
    assert _sequences(list(history)) == list(range(91, 101))
    assert history.retained_bytes == 10 * size
    assert _sequences(history.after(95)) == list(range(96, 101))


def test_state_changes_and_the_result_always_stay() -> None:
    size = retained_size(_event(1))
    history = UpdateHistory(limit=50, max_bytes=20 * size)
    history.append(_state(1, JobState.CREATING))
    history.append(_state(2, JobState.RUNNING))
    for sequence in range(3, 500):
        history.append(_event(sequence))
    history.append(_state(500, JobState.STOPPED))
    history.append(_result(501))
    retained = list(history)
    assert _sequences(retained[:2]) == [1, 2]
    assert _sequences(retained[-2:]) == [500, 501]
    assert len(retained) <= 50
    assert history.retained_bytes <= 20 * size
    # Replay from the start: the kept transitions, then what is left, in order; a resume
    # inside the dropped range gets what followed it that is still here.
    assert _sequences(history.after(0)) == _sequences(retained)
    assert _sequences(history.after(1)) == _sequences(retained)[1:]
    assert _sequences(history.after(10)) == _sequences(retained)[2:]
    assert _sequences(history.after(499)) == [500, 501]
    # By count the same way: many small updates never push the transitions out.
    history = UpdateHistory(limit=5)
    history.append(_state(1))
    for sequence in range(2, 100):
        history.append(_event(sequence, 1))
    assert _sequences(list(history)) == [1, 96, 97, 98, 99]


def test_extend_from_a_restore_is_bounded_too() -> None:
    size = retained_size(_event(1))
    history = UpdateHistory(limit=2000, max_bytes=5 * size)
    history.extend([_state(1), *(_event(s) for s in range(2, 40))])
    # The kept state change counts too: four events fit beside it.
    assert _sequences(list(history)) == [1, 36, 37, 38, 39]


async def test_the_store_keeps_a_job_within_its_byte_bound_and_loads_within_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "orchestrator.db"
    max_bytes = 1 << 20
    store = SqliteJobStore(path, history_limit=2000, history_max_bytes=max_bytes)
    store.save_job(record_to_json(job_record(JOB_ID, state=JobState.RUNNING)))
    store.append_update(JOB_ID, _state(1, JobState.CREATING))
    store.append_update(JOB_ID, _state(2, JobState.RUNNING))
    stored_bytes: list[int] = []
    for sequence in range(3, 400):  # ~6.4 MB of events in all
        store.append_update(JOB_ID, _event(sequence, 16_000))
        if sequence % 25 == 0:
            await store.flush()
            stored_bytes.append(_stored_bytes(path))
    store.append_update(JOB_ID, _result(400))
    await store.flush()
    assert max(stored_bytes) <= max_bytes, stored_bytes
    assert _stored_bytes(path) <= max_bytes
    kinds = _kinds(path)
    assert kinds[:2] == ["state", "state"]
    assert kinds[-1] == "result"
    assert kinds.count("event") > 40  # it was pruned to the bound, not emptied
    await store.close()

    # What a restart loads is within the bound it runs with, kept kinds included.
    smaller = SqliteJobStore(path, history_limit=2000, history_max_bytes=max_bytes // 4)
    try:
        (stored,) = smaller.load_unfinished(2000)
    finally:
        await smaller.close()
    loaded = list(stored.updates)
    assert _sequences(loaded[:2]) == [1, 2]
    assert loaded[-1].kind is UpdateKind.RESULT
    events = [u for u in loaded if u.kind is UpdateKind.EVENT]
    assert 5 < len(events) < kinds.count("event")
    assert _sequences(events) == list(range(events[0].sequence, 400))  # the newest ones


def _stored_bytes(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        total = conn.execute(
            "SELECT COALESCE(SUM(LENGTH(payload) + ?), 0) FROM updates WHERE job_id = ?",
            (ROW_OVERHEAD, JOB_ID),
        ).fetchone()[0]
    return int(total)


def _kinds(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT kind FROM updates ORDER BY seq")]


def test_sequences_stay_contiguous_in_the_window() -> None:
    # after() indexes directly while the window is contiguous; kept updates beside it do not
    # break that.
    history = UpdateHistory(limit=10)
    history.append(_state(1))
    for sequence in range(2, 30):
        history.append(_event(sequence, 1))
    assert _sequences(history.after(25)) == [26, 27, 28, 29]
    assert _sequences(history.after(0))[0] == 1
