"""How the gateway knows a job: its proxy credentials are ``job_id:worker_token`` (HTTP Basic,
as every proxy-aware tool takes them from ``http://user:password@proxy``), checked by the job
manager exactly as the worker API checks a bearer token; and where its attempts go: ``egress``
events in the job's history, at a bounded rate."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from orchestrator.egress.audit import EVENT_TYPE, EgressAttempt
from orchestrator.egress.outcomes import EgressRefused, Reason
from orchestrator.errors import OrchestratorError, RateLimited
from orchestrator.http_api.rate_limit import JobRateLimiter
from orchestrator.jobs.manager import ContainerJobManager
from orchestrator.jobs.start_gate import START_HOLD_S
from orchestrator.metrics import Metrics

JobHosts = Callable[[str], Sequence[str] | None]


@dataclass(frozen=True)
class EgressIdentity:
    """A job the gateway serves, and its own allowlist (None: the operator's)."""

    job_id: str
    allow_hosts: tuple[str, ...] | None = None


class EgressJobs(Protocol):
    """What the gateway asks about jobs."""

    async def egress_identity(self, job_id: str, token: str) -> EgressIdentity | None:
        """The job if ``token`` is its live worker token, else None; EgressRefused
        (unavailable) while the job is not yet allowed to act."""
        ...


def _no_job_hosts(job_id: str) -> None:
    return None


class ManagerEgressJobs:
    """:class:`EgressJobs` on the job manager. ``job_hosts`` gives a job's own list (its
    ``CreateJob`` egress settings, once they exist); by default every job has the operator's."""

    def __init__(self, manager: ContainerJobManager, job_hosts: JobHosts = _no_job_hosts) -> None:
        self._manager = manager
        self._job_hosts = job_hosts

    async def egress_identity(self, job_id: str, token: str) -> EgressIdentity | None:
        try:
            job_id = str(uuid.UUID(job_id))
        except ValueError:
            return None
        # Like the worker API: nothing leaves for a job whose workspace is not yet proven.
        if not await self._manager.hold_while_creating(job_id, token, START_HOLD_S):
            raise EgressRefused(
                Reason.UNAVAILABLE, f"job {job_id} is still starting: retry shortly", status=503
            )
        try:
            self._manager.authenticate(job_id, token)
        except OrchestratorError:
            return None
        hosts = self._job_hosts(job_id)
        return EgressIdentity(job_id, None if hosts is None else tuple(hosts))


class JobEgressAudit:
    """Records each attempt of a known job as an ``egress`` event. A job can make attempts as
    fast as it can open connections, so events pass a token bucket per job (the event rate's
    settings); what it drops is counted, and the metrics count every attempt regardless."""

    def __init__(
        self,
        manager: ContainerJobManager,
        rate: float,
        burst: int,
        metrics: Metrics | None = None,
    ) -> None:
        self._manager = manager
        self._limiter = JobRateLimiter(rate, burst, what="egress events")
        self._metrics = metrics

    def __call__(self, attempt: EgressAttempt) -> None:
        if attempt.job_id is None:
            return
        try:
            self._limiter.check(attempt.job_id)
        except RateLimited:
            if self._metrics is not None:
                self._metrics.egress_event_dropped()
            return
        # A tunnel can outlive its job: the event of an ended job has nowhere to go.
        with contextlib.suppress(OrchestratorError):
            self._manager.record_event(attempt.job_id, EVENT_TYPE, attempt.event_data())
