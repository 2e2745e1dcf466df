"""Where the jobs are: the ones still running (and ended ones until their container is gone) as
records in memory, every ended one in the store only.

Reads go to memory first and to the store for the rest, so memory holds what is live and does
not grow with history. The store is written through for every job, so a job that leaves memory
is already on disk; it leaves only after a flush (see the lifecycle).
"""

from __future__ import annotations

import contextlib
import heapq
from collections.abc import Generator
from dataclasses import dataclass

from orchestrator.domain.jobs import JobSnapshot, JobState, JobUpdate
from orchestrator.errors import JobNotFound
from orchestrator.jobs.persistence import snapshot_from_json
from orchestrator.jobs.record import JobRecord
from orchestrator.store.base import JobStore


@dataclass(frozen=True)
class JobPage:
    jobs: list[JobSnapshot]
    next_page_token: str


class JobTable:
    """The jobs of one orchestrator, in memory and in its store."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._memory: dict[str, JobRecord] = {}
        # The jobs not yet ended: what reconciliation and the reaper look at, every pass.
        self.live: dict[str, JobRecord] = {}
        self._order = 0
        self._counts: dict[tuple[str, str], int] = {}

    @property
    def store(self) -> JobStore:
        return self._store

    def load_counts(self) -> None:
        """Takes the per-state counts and the last creation order from the store (at start)."""
        self._counts = dict(self._store.count_jobs())
        self._order = max(self._order, self._store.last_order())

    def next_order(self) -> int:
        self._order += 1
        return self._order

    # ---- memory -------------------------------------------------------------------------

    def add(self, job: JobRecord, *, new: bool = True) -> None:
        """Takes a record into memory: a job just created (``new``: counted), or one a restart
        picked up from the store (already counted)."""
        self._memory[job.job_id] = job
        if not job.state.is_terminal:
            self.live[job.job_id] = job
        self._order = max(self._order, job.order)
        if new:
            self._count(job, job.state, 1)

    def record(self, job_id: str) -> JobRecord | None:
        """The job's record while it is in memory (live, or ended with its teardown pending)."""
        return self._memory.get(job_id)

    def require(self, job_id: str) -> JobRecord:
        """The job's record; an ended job no longer in memory counts as not found here."""
        job = self._memory.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def by_warm_slot(self, slot_id: str) -> JobRecord | None:
        """The job in memory that claimed the warm-pool slot, if one did."""
        if not slot_id:
            return None
        for job in self._memory.values():
            if job.warm_slot == slot_id:
                return job
        return None

    def records(self) -> list[JobRecord]:
        return list(self._memory.values())

    def moved(self, job: JobRecord, before: JobState) -> None:
        """The job went from ``before`` to its current state."""
        self._count(job, before, -1)
        self._count(job, job.state, 1)
        if job.state.is_terminal:
            self.live.pop(job.job_id, None)

    def evict(self, job: JobRecord) -> None:
        """An ended job whose record is on disk leaves memory."""
        if self._memory.get(job.job_id) is job and job.state.is_terminal:
            del self._memory[job.job_id]

    def forget(self, job_id: str, state: JobState, mode: str) -> None:
        """A cleaned-up job: gone from memory and from every read of the store."""
        self._memory.pop(job_id, None)
        self.live.pop(job_id, None)
        self._store.hide_job(job_id)
        key = (state.value, mode)
        self._counts[key] = max(0, self._counts.get(key, 0) - 1)

    def _count(self, job: JobRecord, state: JobState, delta: int) -> None:
        key = (state.value, job.mode.value)
        self._counts[key] = self._counts.get(key, 0) + delta

    def counts(self) -> dict[tuple[str, str], int]:
        """How many known jobs are in each (state, mode)."""
        return {key: count for key, count in self._counts.items() if count > 0}

    # ---- reads --------------------------------------------------------------------------

    def exists(self, job_id: str) -> bool:
        return job_id in self._memory or self._store.read_job(job_id) is not None

    def id_taken(self, job_id: str) -> bool:
        """Whether the id is one of a job known now or one that was cleaned up."""
        return self.exists(job_id) or self._store.is_hidden(job_id)

    def snapshot(self, job_id: str) -> JobSnapshot:
        job = self._memory.get(job_id)
        if job is not None:
            return job.snapshot()
        data = self._store.read_job(job_id)
        if data is None:
            raise JobNotFound(job_id)
        return snapshot_from_json(data)

    def page(self, after: int, states: frozenset[JobState], size: int) -> JobPage:
        """Up to ``size`` jobs created after order ``after``, in creation order, filtered by
        state; the page token is the last order shown when more follow."""
        page: list[JobSnapshot] = []
        last = 0
        with contextlib.closing(self._ordered(after, states)) as jobs:
            for order, snapshot in jobs:
                if len(page) == size:
                    return JobPage(page, str(last))
                page.append(snapshot)
                last = order
        return JobPage(page, "")

    def _ordered(
        self, after: int, states: frozenset[JobState]
    ) -> Generator[tuple[int, JobSnapshot], None, None]:
        # Memory holds the truth about its jobs (the store may lag by a batch): the store's
        # rows of jobs in memory are skipped, and the two streams merged by creation order.
        memory = sorted(
            (job for job in self._memory.values() if job.order > after),
            key=lambda job: job.order,
        )
        from_memory = (
            (job.order, job.snapshot()) for job in memory if not states or job.state in states
        )
        names = {state.value for state in states}
        stored = self._store.iter_jobs(after, names)
        try:
            from_store = (
                (int(data["order"]), snapshot_from_json(data))
                for data in stored
                if data["job_id"] not in self._memory
            )
            yield from heapq.merge(from_memory, from_store, key=lambda item: item[0])
        finally:
            close = getattr(stored, "close", None)
            if close is not None:
                close()

    def job_ids(self) -> list[str]:
        """Every known job's id, in creation order (for tests and tools; reads the store)."""
        ids = dict.fromkeys(data["job_id"] for data in self._store.iter_jobs(0, ()))
        ids.update(dict.fromkeys(self._memory))
        return list(ids)

    def stored_updates(self, job_id: str, sequence: int) -> list[JobUpdate]:
        """An ended job's retained history after ``sequence``, from the store."""
        return self._store.read_updates(job_id, sequence)
