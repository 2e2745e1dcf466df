"""A job's life after admission: its state machine, its one terminal result, and the teardown of
its container, its network and its token.

The end of a job is made durable before it is told: the state change and the result are
numbered and queued to the store at once, shown to watchers only after the store has flushed
them, and the record leaves memory only once its teardown is written too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from orchestrator.containers.backend import ContainerBackend
from orchestrator.domain.jobs import JobResult, JobState, TerminalReason, UpdateKind
from orchestrator.domain.state import check_transition
from orchestrator.jobs.persistence import record_to_json
from orchestrator.jobs.record import JobRecord, utcnow
from orchestrator.jobs.table import JobTable
from orchestrator.logging import get_logger
from orchestrator.settings import Settings
from orchestrator.tokens import TokenStore

if TYPE_CHECKING:
    from orchestrator.metrics import Metrics

log = get_logger(__name__)


class JobLifecycle:
    """Moves jobs through their states and takes down what they leave behind."""

    def __init__(
        self,
        settings: Settings,
        backend: ContainerBackend,
        tokens: TokenStore,
        table: JobTable,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._tokens = tokens
        self._table = table
        self._store = table.store
        self._metrics = metrics
        self._background: set[asyncio.Task[Any]] = set()

    # ---- what every change goes through -------------------------------------------------

    def publish(self, job: JobRecord, kind: UpdateKind, payload: dict[str, Any]) -> None:
        """One update of the job's history, written through to the store."""
        update = job.publish(kind, payload)
        self._store.append_update(job.job_id, update)
        if kind is not UpdateKind.EVENT:
            self._store.save_job(record_to_json(job))

    def persist(self, job: JobRecord) -> None:
        self._store.save_job(record_to_json(job))

    def transition(self, job: JobRecord, target: JobState, reason: str) -> None:
        check_transition(job.state, target)
        before = job.state
        job.state = target
        self._table.moved(job, before)
        self.publish(job, UpdateKind.STATE, {"state": target, "reason": reason})

    def started(self, job: JobRecord, reason: str) -> None:
        """The job's container runs: Creating → Running."""
        self.transition(job, JobState.RUNNING, reason)
        job.started_at = job.started_at or utcnow()
        if self._metrics is not None:
            self._metrics.job_started(
                job.mode.value, (job.started_at - job.created_at).total_seconds()
            )

    # ---- the end --------------------------------------------------------------------------

    def finish(
        self,
        job: JobRecord,
        reason: TerminalReason,
        message: str,
        *,
        iterations: int | None = None,
        exit_code: int | None = None,
        details: Mapping[str, Any] | None = None,
        success: bool | None = None,
        teardown: bool = True,
    ) -> None:
        """Records the job's one terminal result and revokes its token at once; tells every
        watcher once that is on disk, then (in the background, unless ``teardown`` is False:
        see :meth:`begin_teardown`) keeps the log tail, stops and removes the container."""
        if job.state.is_terminal:
            return
        target = reason.terminal_state
        self._tokens.revoke(job.job_id)
        now = utcnow()
        job.result = JobResult(
            success=reason is TerminalReason.COMPLETED if success is None else success,
            reason=reason,
            message=message,
            finished_at=now,
            iterations=iterations if iterations is not None else job.iteration,
            exit_code=exit_code,
            details=dict(details) if details else None,
        )
        job.finished_at = now
        job.prompts.clear()
        job.hold_updates()
        self.transition(job, target, reason.value)
        self.publish(job, UpdateKind.RESULT, {"result": job.result})
        self._store.forget_secrets(job.job_id)
        log.info("job ended", job_id=job.job_id, state=target.value, reason=reason.value)
        if self._metrics is not None:
            self._metrics.job_ended(
                job.mode.value, reason.value, (now - job.created_at).total_seconds()
            )
        self.spawn(self._announce_end(job, teardown))

    async def _announce_end(self, job: JobRecord, teardown: bool) -> None:
        try:
            await self._store.flush()
        finally:
            job.release_updates()
        if teardown:
            await self.teardown(job)

    def begin_teardown(self, job: JobRecord) -> None:
        """Stops and removes an ended job's container in the background."""
        if job.state.is_terminal and not job.torn_down.is_set():
            self.spawn(self.teardown(job))

    async def teardown(self, job: JobRecord) -> None:
        """Keeps the log tail, stops and removes the container, removes the job's network;
        then the record, written, leaves memory. Failures are left to reconciliation."""
        try:
            async with job.lifecycle_lock:
                container_id = job.container_id
                if container_id is not None:
                    await self._remove_container(job, container_id)
        finally:
            await self.release_network(job.network_key)
            await self._leave_memory(job)

    async def _remove_container(self, job: JobRecord, container_id: str) -> None:
        try:
            await self._backend.stop(container_id, self._settings.stop_grace_s)
            tail = await self._backend.logs_tail(container_id, self._settings.log_tail_lines)
            if tail:
                job.log_tail = tail
            await self._backend.remove(container_id)
            job.container_id = None
            self.persist(job)
        except Exception as exc:
            # The reaper and the next reconciliation retry what is left behind.
            log.warning("container teardown failed", job_id=job.job_id, error=str(exc))

    async def abandon(self, job: JobRecord) -> None:
        """A job that ended before it had a container (its start failed): nothing to stop."""
        await self.release_network(job.network_key)
        await self._leave_memory(job)

    async def _leave_memory(self, job: JobRecord) -> None:
        try:
            await self._store.flush()
        except Exception as exc:
            log.warning("job store flush failed", job_id=job.job_id, error=str(exc))
            job.torn_down.set()
            return  # stays in memory: nothing is lost, the next restart reads the store
        job.torn_down.set()
        if job.container_id is None:
            self._table.evict(job)

    async def release_network(self, job_id: str) -> None:
        """Removes the isolated network and relay named after ``job_id`` (a job's, or the
        warm-pool slot's it claimed: ``JobRecord.network_key``), if any (never raises)."""
        try:
            await self._backend.remove_job_network(self._settings.instance, job_id)
        except Exception as exc:
            # The next reconciliation retries.
            log.warning("job network removal failed", job_id=job_id, error=str(exc))

    # ---- background work ----------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def wait_background(self) -> None:
        """Waits for every teardown and announcement under way."""
        # A task may spawn another (an announcement starts its teardown): until none is left.
        while pending := [task for task in self._background if not task.done()]:
            await asyncio.gather(*pending, return_exceptions=True)
