"""The job store interface: the only way the orchestrator reaches persistent state.

Live jobs are held in memory by the job manager and written through; ended jobs live only
here, and every read of one (GetJob, ListJobs, WatchJob) comes from the store, so the process
does not grow with its history.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.domain.jobs import JobUpdate


@dataclass(frozen=True)
class StoredJob:
    """One job as loaded at start: its durable fields, history, token digest, sealed grants
    and the digests of its keys (the LLM key of a Claude Code job, the egress key)."""

    data: dict[str, Any]
    updates: Sequence[JobUpdate]
    token_digest: bytes | None
    sealed_grants: bytes | None
    llm_key_digest: bytes | None = None
    egress_key_digest: bytes | None = None


class JobStore(abc.ABC):
    """Persists jobs, their state transitions, bounded event history, results and usage.

    Writes are queued and applied in order by one writer; :meth:`flush` waits until everything
    queued so far is durable. Implementations never store a token or an LLM key in clear.
    """

    @abc.abstractmethod
    def save_job(
        self,
        data: dict[str, Any],
        token_digest: bytes | None = None,
        sealed_grants: bytes | None = None,
        llm_key_digest: bytes | None = None,
        egress_key_digest: bytes | None = None,
    ) -> None:
        """Queues the job's current durable fields (a later save of the same job wins; a
        digest or sealed grants left out keep their stored value)."""

    @abc.abstractmethod
    def append_update(self, job_id: str, update: JobUpdate) -> None:
        """Queues one history item."""

    @abc.abstractmethod
    def forget_secrets(self, job_id: str) -> None:
        """Queues dropping the job's token and LLM key digests and sealed grants (the job
        ended)."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Waits until every queued write is durable."""

    @abc.abstractmethod
    def hide_job(self, job_id: str) -> None:
        """Queues hiding an ended job from every read (``CleanupJob``): it is forgotten by the
        service, while its row and history stay on disk as the record of what ran."""

    @abc.abstractmethod
    def is_hidden(self, job_id: str) -> bool:
        """Whether the id belongs to a job that was cleaned up (so it cannot be reused)."""

    @abc.abstractmethod
    def load_unfinished(self, history_limit: int) -> list[StoredJob]:
        """At start: the jobs a restart must pick up, oldest first, with their last
        ``history_limit`` updates (state changes and results are always kept): every job not
        yet ended, and every ended job whose container was not removed yet."""

    @abc.abstractmethod
    def read_job(self, job_id: str) -> dict[str, Any] | None:
        """The stored fields of one job (what was durable when last flushed), unless hidden."""

    @abc.abstractmethod
    def iter_jobs(self, after_order: int, states: Collection[str]) -> Iterator[dict[str, Any]]:
        """Stored jobs created after ``after_order``, in creation order, whose state is one of
        ``states`` (every state when empty), hidden ones left out. Lazy: a page reads only
        what it shows."""

    @abc.abstractmethod
    def read_updates(self, job_id: str, after_sequence: int) -> list[JobUpdate]:
        """The job's retained updates after ``after_sequence``, oldest first."""

    @abc.abstractmethod
    def count_jobs(self) -> dict[tuple[str, str], int]:
        """How many stored jobs, hidden ones left out, are in each (state, mode)."""

    @abc.abstractmethod
    def last_order(self) -> int:
        """The largest creation order stored (0 when empty)."""

    @abc.abstractmethod
    async def close(self) -> None: ...
