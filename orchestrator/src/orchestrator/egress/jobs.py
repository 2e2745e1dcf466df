"""How the gateway knows a job: its proxy credentials are ``job_id:egress_key`` (HTTP Basic, as
every proxy-aware tool takes them from ``http://user:password@proxy``), the key derived from the
job's worker token (``ironclaw_contract.job_keys``) so its commands never hold the token itself,
checked by the job manager against the digest it keeps; and where its attempts go: ``egress``
events in the job's history, at a bounded rate."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from typing import Protocol

from orchestrator.egress.audit import EVENT_TYPE, EgressAttempt
from orchestrator.egress.inject import Injection, injections_for
from orchestrator.egress.outcomes import EgressRefused, Reason
from orchestrator.errors import OrchestratorError, RateLimited
from orchestrator.http_api.rate_limit import JobRateLimiter
from orchestrator.jobs.manager import ContainerJobManager
from orchestrator.jobs.start_gate import START_HOLD_S
from orchestrator.metrics import Metrics


@dataclass(frozen=True)
class EgressIdentity:
    """A job the gateway serves, and its own allowlist (None: the operator's)."""

    job_id: str
    allow_hosts: tuple[str, ...] | None = None
    # The job's grants with inject_hosts, as the gateway applies them.
    injections: tuple[Injection, ...] = ()


class EgressJobs(Protocol):
    """What the gateway asks about jobs."""

    async def egress_identity(self, job_id: str, token: str) -> EgressIdentity | None:
        """The job if ``token`` is its live egress key, else None; EgressRefused
        (unavailable) while the job is not yet allowed to act."""
        ...


class ManagerEgressJobs:
    """:class:`EgressJobs` on the job manager: a job's own list is the one its ``CreateJob``
    named (already checked against the operator's at admission); without one, the operator's."""

    def __init__(self, manager: ContainerJobManager) -> None:
        self._manager = manager

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
            job = self._manager.authenticate_egress(job_id, token)
        except OrchestratorError:
            return None
        grants = self._manager.tokens.grants(job_id)
        return EgressIdentity(job_id, job.egress_hosts, injections_for(grants))


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
