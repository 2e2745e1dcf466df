"""The job store interface: the only way the orchestrator reaches persistent state."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.jobs.models import JobUpdate


@dataclass(frozen=True)
class StoredJob:
    """One job as loaded at start: its durable fields, history, token digest, sealed grants
    and, for a Claude Code job, its LLM key's digest."""

    data: dict[str, Any]
    updates: Sequence[JobUpdate]
    token_digest: bytes | None
    sealed_grants: bytes | None
    llm_key_digest: bytes | None = None


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
    def load(self, history_limit: int) -> list[StoredJob]:
        """Every stored job, oldest first, with its last ``history_limit`` updates (state
        changes and results are always kept)."""

    @abc.abstractmethod
    async def close(self) -> None: ...
