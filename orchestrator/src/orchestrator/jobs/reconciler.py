"""Matching what the store says with what the engine runs: the restore at start, the periodic
reconciliation (the reaper), and the container exits the engine reports.

Level-triggered: every pass looks at the live jobs and this instance's containers as they are,
so a missed event, a restart or an engine outage only postpones a decision, never loses one.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

from ironclaw_contract.worker_api import Refusal
from orchestrator.containers.backend import ContainerBackend, ContainerExit, ContainerInfo
from orchestrator.containers.spec import LABEL_JOB_ID, LABEL_WARM_SLOT
from orchestrator.domain.jobs import CredentialGrant, JobState, TerminalReason
from orchestrator.errors import EngineUnavailable
from orchestrator.jobs.lifecycle import JobLifecycle
from orchestrator.jobs.persistence import record_from_json
from orchestrator.jobs.record import JobRecord, utcnow
from orchestrator.jobs.table import JobTable
from orchestrator.logging import get_logger
from orchestrator.settings import Settings
from orchestrator.store.sealing import GrantSealer
from orchestrator.tokens import TokenStore

if TYPE_CHECKING:
    from orchestrator.jobs.warm_pool import WarmPool
    from orchestrator.metrics import Metrics

log = get_logger(__name__)

SIGKILL_EXIT_CODE = 137  # 128 + SIGKILL: how an OOM kill looks until the engine flags it
OOM_CONFIRM_S = 1.0
OOM_CONFIRM_INTERVAL_S = 0.1

# LLM refusals that mean the job's budget ran out (``Refusal`` values).
_BUDGET_REFUSALS = frozenset({Refusal.CALL_BUDGET.value, Refusal.TOKEN_BUDGET.value})


class Reconciler:
    """Restores jobs at start and keeps them matched with their containers."""

    def __init__(
        self,
        settings: Settings,
        backend: ContainerBackend,
        tokens: TokenStore,
        table: JobTable,
        lifecycle: JobLifecycle,
        history_limit: int,
        sealer: GrantSealer | None = None,
        metrics: Metrics | None = None,
        warm: WarmPool | None = None,
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._tokens = tokens
        self._table = table
        self._lifecycle = lifecycle
        self._history_limit = history_limit
        self._sealer = sealer
        self._metrics = metrics
        self._warm = warm

    def _job_of(self, info: ContainerInfo) -> tuple[str, JobRecord | None]:
        """The job id a container belongs to, and its record: a job container's label names
        it; a warm slot's container belongs to the job that claimed the slot (if any)."""
        job_id = info.labels.get(LABEL_JOB_ID, "")
        if job_id:
            return job_id, self._table.record(job_id)
        job = self._table.by_warm_slot(info.labels.get(LABEL_WARM_SLOT, ""))
        return (job.job_id, job) if job is not None else ("", None)

    def _pool_owns(self, slot_id: str) -> bool:
        return bool(slot_id) and self._warm is not None and self._warm.owns(slot_id)

    # ---- restore --------------------------------------------------------------------------

    def restore(self) -> int:
        """Loads the jobs a restart must pick up (at start, before serving): live jobs get their
        token back (from its digest) and their grants (when they were sealed); a live job whose
        grants cannot be recovered fails with CREDENTIALS_LOST instead of running without them.
        Ended jobs stay in the store. Returns the number of live jobs, which reconciliation
        then matches with containers."""
        table = self._table
        table.load_counts()
        live = 0
        for stored in table.store.load_unfinished(self._history_limit):
            job = record_from_json(
                stored.data, self._history_limit, self._settings.job_history_max_bytes
            )
            job.history.extend(stored.updates)
            if stored.updates:
                job.sequence = max(job.sequence, stored.updates[-1].sequence)
            table.add(job, new=False)
            if job.state.is_terminal:
                # Ended, but its teardown did not finish before the restart.
                self._lifecycle.spawn(self._lifecycle.teardown(job))
                continue
            live += 1
            grants: tuple[CredentialGrant, ...] | None = ()
            if job.credential_names:
                grants = None
                if stored.sealed_grants is not None and self._sealer is not None:
                    grants = self._sealer.open(job.job_id, stored.sealed_grants)
            if stored.token_digest is None:
                self._lifecycle.finish(
                    job, TerminalReason.CONTAINER_LOST, "job token lost in a restart"
                )
            elif grants is None:
                self._tokens.adopt_digest(job.job_id, stored.token_digest)
                self._lifecycle.finish(
                    job,
                    TerminalReason.CREDENTIALS_LOST,
                    "credential grants were lost in an orchestrator restart (set "
                    "ORCHESTRATOR_SECRETS_KEY to keep them across restarts)",
                )
            else:
                self._tokens.adopt_digest(job.job_id, stored.token_digest, grants)
                if stored.llm_key_digest is not None:
                    self._tokens.adopt_llm_key_digest(job.job_id, stored.llm_key_digest)
                if stored.egress_key_digest is not None:
                    self._tokens.adopt_egress_key_digest(job.job_id, stored.egress_key_digest)
                if job.warm_slot and job.state is JobState.CREATING:
                    # Its claim may never have been answered, and the slot's secret died with
                    # the old process: the container waits for a claim no one can send.
                    self._lifecycle.finish(
                        job,
                        TerminalReason.START_FAILED,
                        "the orchestrator restarted while the job was claiming a warm "
                        "container: create the job again",
                    )
        log.info("jobs restored", total=sum(table.counts().values()), live=live)
        return live

    # ---- reconciliation -------------------------------------------------------------------

    async def reconcile_once(self) -> None:
        """Level-triggered pass matching jobs with this instance's containers: adopts the
        container of a live job, removes containers without a live job, fails live jobs whose
        container is gone or dead (a missed exit event) and jobs past their deadline.

        Raises EngineUnavailable when the engine cannot be listed: then nothing is decided."""
        table, lifecycle = self._table, self._lifecycle
        now = utcnow()
        for overdue in list(table.live.values()):
            if now >= overdue.deadline:
                self._count("timed_out")
                lifecycle.finish(
                    overdue,
                    TerminalReason.TIMED_OUT,
                    f"timed out after {overdue.limits.timeout_seconds} s",
                )
        listed_at = utcnow()
        containers = await self._backend.list_managed(self._settings.instance)
        seen: set[str] = set()
        for info in containers:
            job_id, job = self._job_of(info)
            if job is None and self._pool_owns(info.labels.get(LABEL_WARM_SLOT, "")):
                continue  # an unclaimed warm slot: the pool's
            if job is None or (job.state.is_terminal and job.torn_down.is_set()):
                log.warning(
                    "removing a container without a live job", job_id=job_id, container=info.name
                )
                self._count("removed_orphan")
                await self._backend.remove(info.container_id)
                if job is not None and job.container_id == info.container_id:
                    await self._forget_container(job)
                continue
            if job.state.is_terminal:
                continue  # its teardown is under way
            seen.add(job_id)
            if job.container_id != info.container_id and not job.lifecycle_lock.locked():
                job.container_id = info.container_id
                lifecycle.persist(job)
                log.info("adopted a running container", job_id=job_id, container=info.name)
                self._count("adopted")
            if job.state is JobState.CREATING and not job.lifecycle_lock.locked():
                lifecycle.started(job, "container adopted")
            if not info.running and not job.lifecycle_lock.locked():
                # The listing may be stale (a container between create and start is not
                # running yet): only an inspected exit counts.
                detail = await self._backend.inspect(info.container_id)
                if detail is not None and (detail.running or not detail.exited):
                    continue
                self._count("exit_detected")
                await self.handle_container_exit(
                    ContainerExit(
                        container_id=info.container_id,
                        job_id=job_id,
                        exit_code=detail.exit_code if detail else None,
                        oom_killed=bool(detail and detail.oom_killed),
                        lost_node=detail.lost_node if detail else None,
                        detail=detail.detail if detail else "",
                    )
                )
        for live in list(table.live.values()):
            # A job created after the listing began cannot be judged by it.
            if live.job_id in seen or live.lifecycle_lock.locked() or live.created_at >= listed_at:
                continue
            self._count("container_lost")
            lifecycle.finish(live, TerminalReason.CONTAINER_LOST, "container vanished")
        listed = {self._job_of(info)[0] for info in containers}
        for ended in table.records():
            if ended.state.is_terminal and ended.torn_down.is_set() and ended.job_id not in listed:
                await self._forget_container(ended)  # its container went meanwhile
        for job_id in await self._backend.list_job_networks(self._settings.instance):
            # Named after a job, or after the warm slot it claimed or the pool still holds.
            if self._pool_owns(job_id):
                continue
            owner = table.record(job_id) or table.by_warm_slot(job_id)
            if owner is None or (owner.state.is_terminal and owner.torn_down.is_set()):
                log.warning("removing a job network without a live job", job_id=job_id)
                await lifecycle.release_network(job_id)

    async def _forget_container(self, job: JobRecord) -> None:
        """An ended job's container is gone after all: the record, written, leaves memory."""
        job.container_id = None
        self._lifecycle.persist(job)
        await self._table.store.flush()
        self._table.evict(job)

    async def run_reaper(self, interval: float = 2.0) -> None:
        """Reconciles every ``interval`` seconds; engine trouble only postpones decisions."""
        while True:
            outcome = "ok"
            try:
                await self.reconcile_once()
            except EngineUnavailable as exc:
                outcome = "postponed"
                log.warning("reconciliation postponed: engine unreachable", error=exc.message)
            except Exception as exc:
                outcome = "failed"
                log.warning("reconciliation pass failed", error=str(exc))
            if self._metrics is not None:
                self._metrics.reconcile_pass(outcome)
            await asyncio.sleep(interval)

    # ---- container exits ------------------------------------------------------------------

    async def handle_container_exit(self, event: ContainerExit) -> None:
        """A container died: unless its job already ended, the job fails with the reason."""
        if event.job_id:
            job = self._table.record(event.job_id)
        else:
            job = self._table.by_warm_slot(event.slot_id)
            if job is None:
                if self._warm is not None:
                    self._warm.slot_exited(event.slot_id)
                return
            event = replace(event, job_id=job.job_id)
        if job is None or job.state.is_terminal:
            return
        if event.lost_node is not None:
            log.warning("job's node went down", job_id=job.job_id, node=event.lost_node)
            self._lifecycle.finish(
                job,
                TerminalReason.NODE_LOST,
                f"node {event.lost_node} running the job went down",
            )
            return
        if event.exit_code == SIGKILL_EXIT_CODE and not event.oom_killed:
            event = await self._confirm_oom(event)
            if job.state.is_terminal:
                return
        if event.oom_killed:
            reason = TerminalReason.OOM_KILLED
            message = f"container was OOM-killed (memory limit {job.limits.memory_mb} MiB)"
        elif job.budget_refused in _BUDGET_REFUSALS and event.exit_code != 0:
            # Its LLM budget refused or cut a call, then the agent gave up without a result
            # (a third-party agent only knows the provider's error): the budget ended it. A model
            # refused by the allowlist is not a budget: that exit stays EXITED.
            reason = TerminalReason.BUDGET_EXCEEDED
            message = (
                f"container exited with code {event.exit_code} after its LLM calls were "
                f"refused ({job.budget_refused})"
            )
        else:
            reason = TerminalReason.EXITED
            message = f"container exited with code {event.exit_code} without reporting a result"
            if event.detail:
                message = f"{message}: {event.detail}"
        log.warning(
            "job container died", job_id=job.job_id, reason=reason.value, exit_code=event.exit_code
        )
        self._lifecycle.finish(job, reason, message, exit_code=event.exit_code)

    async def _confirm_oom(self, event: ContainerExit) -> ContainerExit:
        """A SIGKILL exit may be an OOM kill that the engine flags a moment later (under load
        its ``oom`` event can trail the ``die`` event and the inspected flag can lag): look
        again, briefly, before calling it a plain exit."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + OOM_CONFIRM_S
        while True:
            try:
                detail = await self._backend.inspect(event.container_id)
            except Exception:
                return event
            if detail is None:
                return event
            if detail.oom_killed:
                return replace(event, oom_killed=True)
            if loop.time() >= deadline:
                return event
            await asyncio.sleep(OOM_CONFIRM_INTERVAL_S)

    async def watch_container_exits(self) -> None:
        """Consumes the backend's exit notifications until cancelled."""
        async for event in self._backend.exits(self._settings.instance):
            try:
                await self.handle_container_exit(event)
            except Exception:
                log.exception("handling a container exit failed", job_id=event.job_id)

    def _count(self, action: str) -> None:
        if self._metrics is not None:
            self._metrics.reconcile_action(action)
