"""ContainerJobManager: the one door onto jobs for the gRPC servicer and the HTTP worker API.

It knows no protobuf and no HTTP. It composes the parts that each do one job: admission (what a
request may ask for), the table (where jobs are: live in memory, ended in the store), the
lifecycle (state machine, the one result, teardown), the ledger (LLM budgets and usage) and the
reconciler (restore, reconciliation, container exits). All state changes happen on the event
loop; container work goes through the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ironclaw_contract.worker_api import FailureReason
from orchestrator.agent_catalog import AgentCatalog
from orchestrator.containers.backend import ContainerBackend, ContainerExit
from orchestrator.containers.spec import (
    build_container_spec,
    container_name,
    default_memory_mb,
)
from orchestrator.domain.jobs import (
    CreateJobRequest,
    FollowUpPrompt,
    JobSnapshot,
    JobState,
    JobUpdate,
    TerminalReason,
    UpdateKind,
)
from orchestrator.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    JobNotFound,
    OrchestratorError,
    Unauthenticated,
)
from orchestrator.jobs.admission import AdmittedJob, admit, check_text, parse_job_id
from orchestrator.jobs.bounds import bound_event_data, bound_result, bound_status_message
from orchestrator.jobs.isolation import job_network_request
from orchestrator.jobs.ledger import LlmLedger
from orchestrator.jobs.lifecycle import JobLifecycle
from orchestrator.jobs.persistence import record_to_json
from orchestrator.jobs.projects import HeldProjectDir, hold_job_project_dir
from orchestrator.jobs.reconciler import Reconciler
from orchestrator.jobs.record import JobRecord, utcnow
from orchestrator.jobs.start_gate import wait_while_creating
from orchestrator.jobs.table import JobPage, JobTable
from orchestrator.jobs.warm_pool import WarmPool, WarmSlot
from orchestrator.jobs.workspace_check import verify_mounted_workspace
from orchestrator.logging import get_logger
from orchestrator.settings import Settings
from orchestrator.store.base import JobStore
from orchestrator.store.sealing import GrantSealer
from orchestrator.store.sqlite_store import SqliteJobStore
from orchestrator.tokens import TokenStore, token_digest
from orchestrator.tool_catalog import ToolCatalog
from orchestrator.workspaces.downloads import WorkspaceDownloads, check_downloadable
from orchestrator.workspaces.results import (
    RESULT_UNPACKED_RATIO,
    PushedWorkspace,
    WorkspaceResults,
)
from orchestrator.workspaces.retention import LIVE, UNKNOWN, JobEnd
from orchestrator.workspaces.uploads import UploadedWorkspace, UploadLimits, WorkspaceUploads

if TYPE_CHECKING:
    from orchestrator.metrics import Metrics

__all__ = ["ContainerJobManager", "CreatedJob", "JobPage", "parse_job_id"]

log = get_logger(__name__)

MAX_PROMPT_CHARS = 100_000
MAX_QUEUED_PROMPTS = 100
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
HISTORY_LIMIT = 2000
# From answering a warm slot's claim until the job's first worker-API call: beyond it the claim
# failed and the job starts cold (the slot's agent imports nothing more before that call).
CLAIM_CONFIRM_S = 10.0


@dataclass(frozen=True)
class CreatedJob:
    """What ``create_job`` returns: the job, its token (in-process callers only), and whether
    an idempotent retry found it already there (then ``token`` is None)."""

    job: JobSnapshot
    token: str | None
    already_existed: bool


class ContainerJobManager:
    """Creates, tracks, completes and tears down job containers."""

    def __init__(
        self,
        settings: Settings,
        backend: ContainerBackend,
        tokens: TokenStore,
        orchestrator_url: str = "",
        llm_provider_name: str = "none",
        store: JobStore | None = None,
        sealer: GrantSealer | None = None,
        metrics: Metrics | None = None,
        catalog: ToolCatalog | None = None,
        agents: AgentCatalog | None = None,
    ) -> None:
        self._settings = settings
        self._catalog = catalog or ToolCatalog(settings.base_dir)
        self._agents = agents or AgentCatalog(settings.base_dir)
        self._metrics = metrics
        # Ended jobs are read from the store, so there always is one: without persistence it
        # lives in a temporary directory for the life of the process.
        self._store = store or SqliteJobStore.temporary(HISTORY_LIMIT)
        self._sealer = sealer
        self._backend = backend
        self._tokens = tokens
        self._orchestrator_url = orchestrator_url
        self._egress_url: str | None = None
        self._egress_ca_pem: str | None = None
        self._orchestrator_ca_pem: str | None = None
        self._llm_provider_name = llm_provider_name
        self._table = JobTable(self._store)
        self._lifecycle = JobLifecycle(settings, backend, tokens, self._table, metrics)
        # Off unless WARM_POOL names a pool.
        self._warm = WarmPool(settings, backend, metrics) if settings.warm_pool else None
        self._reconciler = Reconciler(
            settings,
            backend,
            tokens,
            self._table,
            self._lifecycle,
            HISTORY_LIMIT,
            sealer,
            metrics,
            warm=self._warm,
        )
        self._ledger = LlmLedger(self._table.require, self._usage_changed)
        self._accepting = True
        # Unpacking and packing archives is blocking file work: threads of its own, so a
        # transfer never waits behind (or holds up) the engine's calls.
        self._workspace_threads = ThreadPoolExecutor(
            max_workers=2 * settings.workspace_uploads_at_once + 1,
            thread_name_prefix="workspace",
        )
        self._uploads = WorkspaceUploads(
            settings.projects_dir,
            settings.state_dir or settings.base_dir,
            UploadLimits(
                max_bytes=settings.workspace_upload_max_bytes,
                at_once=settings.workspace_uploads_at_once,
                timeout_s=settings.workspace_upload_timeout_s,
                retain_s=settings.workspace_retain_s,
                unused_retain_s=settings.workspace_unused_retain_s,
            ),
            self._workspace_threads,
        )
        self._downloads = WorkspaceDownloads(
            self._workspace_threads, settings.workspace_uploads_at_once
        )
        self._results = WorkspaceResults(
            settings.state_dir or settings.base_dir,
            max_bytes=settings.workspace_upload_max_bytes,
            max_unpacked_bytes=RESULT_UNPACKED_RATIO * settings.workspace_upload_max_bytes,
            retain_s=settings.workspace_retain_s,
            executor=self._workspace_threads,
            timeout_s=settings.workspace_upload_timeout_s,
        )
        if metrics is not None:
            metrics.watch_jobs(self.state_counts)

    @property
    def metrics(self) -> Metrics | None:
        """The process's metrics, when it keeps any."""
        return self._metrics

    @property
    def ledger(self) -> LlmLedger:
        """Where every door reserves and settles the jobs' LLM calls."""
        return self._ledger

    @property
    def orchestrator_url(self) -> str:
        """The worker API's URL as containers reach it ("" until it is bound)."""
        return self._orchestrator_url

    @property
    def tokens(self) -> TokenStore:
        return self._tokens

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def backend(self) -> ContainerBackend:
        return self._backend

    def state_counts(self) -> dict[tuple[str, str], int]:
        """How many known jobs are in each (state, mode)."""
        return self._table.counts()

    @property
    def egress_url(self) -> str | None:
        """The egress gateway as job containers reach it, when their network leads out through
        it only (``JOB_NETWORK=isolated``); None otherwise."""
        return self._egress_url

    @property
    def egress_ca_pem(self) -> str | None:
        """The certificate of the CA the egress gateway injects with (no key: never here)."""
        return self._egress_ca_pem

    def set_egress_ca_pem(self, pem: str | None) -> None:
        self._egress_ca_pem = pem

    def set_egress_url(self, url: str | None) -> None:
        """Set once the gateway's port is bound (port 0 picks one in tests)."""
        self._egress_url = url

    @property
    def orchestrator_ca_pem(self) -> str | None:
        """The CA job containers verify the worker API's certificate with (None: plaintext)."""
        return self._orchestrator_ca_pem

    def set_orchestrator_ca_pem(self, pem: str | None) -> None:
        self._orchestrator_ca_pem = pem

    def set_orchestrator_url(self, url: str) -> None:
        """The worker API's URL as containers reach it (known once the API is bound)."""
        self._orchestrator_url = url

    @property
    def warm_pool(self) -> WarmPool | None:
        """The warm pools, when ``WARM_POOL`` names any."""
        return self._warm

    def start_warm_pool(self) -> None:
        """Starts filling the warm pools (once the worker API and the gateway are bound)."""
        if self._warm is not None and self._accepting:
            self._warm.start(self._orchestrator_url, self._egress_url, self._orchestrator_ca_pem)

    def container_id(self, job_id: str) -> str | None:
        """The id of the job's container while it exists."""
        job = self._table.record(parse_job_id(job_id))
        return job.container_id if job is not None else None

    # ---------------------------------------------------------------- create

    async def create_job(self, request: CreateJobRequest) -> CreatedJob:
        """Validates the request, records the job, starts its container.

        Raises InvalidArgument / FailedPrecondition before anything is recorded; a start failure
        leaves the job Failed (START_FAILED) with no container, and is raised too.
        """
        if not self._accepting:
            raise FailedPrecondition("the orchestrator is shutting down and accepts no new jobs")
        if not self._orchestrator_url:
            raise FailedPrecondition("the worker API is not serving yet")
        if request.job_id:
            existing = self._existing(parse_job_id(request.job_id))
            if existing is not None:
                return existing
        admitted = admit(request, self._settings, self._catalog.grant, self._agents.entry)
        slot, project = self._warm_slot_or_project(admitted)
        try:
            self._uploads.refuse_staging(project.path)
            # A concurrent create with the same id may have won while the checks above ran.
            existing = self._existing(admitted.job_id)
            if existing is not None:
                if slot is not None and self._warm is not None:
                    self._warm.discard(slot, "its job existed already")
                return existing
            job = self._record(admitted, str(project.path))
            # No suspension since the project was opened: a retention sweep cannot have
            # removed an uploaded workspace in between, and from here on it keeps it.
            self._uploads.claim(project.path, job.job_id)
            token = self._tokens.create_token(job.job_id, admitted.grants)
            # The key of what the agent runs that speaks to a model and must not hold the
            # token: it opens only this job's LLM routes (tokens.py), the Anthropic one of a
            # Claude Code job (the CLI's key) and the OpenAI-compatible one of every job.
            llm_key = self._tokens.create_llm_key(job.job_id, token)
            # Its commands' identity at the egress gateway (tokens.py): every job has one, used
            # when its network leads out through the gateway only.
            egress_key = self._tokens.create_egress_key(job.job_id, token)
            if slot is not None:
                # Recorded with the job before the claim is answered: a restart finds the
                # slot's container as the job's (reconciler.py).
                job.warm_slot = slot.slot_id
                job.container_id = slot.container_id
                job.container_name = slot.container_name
            # Held until the container is started, so reconciliation never judges the job
            # "vanished" while it is being created. A fresh lock is acquired without suspending.
            await job.lifecycle_lock.acquire()
            try:
                await self._save_created(job, admitted, token, (llm_key, egress_key))
                if slot is None or not await self._claim(job, slot, token):
                    await self._start(job, project, token, admitted.placement)
            except OrchestratorError as exc:
                self._start_failed(job, exc.message)
                raise
            except Exception as exc:
                message = f"container start failed: {type(exc).__name__}: {exc}"
                self._start_failed(job, message)
                raise FailedPrecondition(message) from exc
            finally:
                job.lifecycle_lock.release()
                if slot is not None and self._warm is not None:
                    self._warm.forget(slot)  # whatever happened, this claim is over
        finally:
            project.close()
        if job.state is JobState.CREATING:
            self._lifecycle.started(
                job, "warm container claimed" if job.warm_slot else "container started"
            )
            log.info("job running", job_id=job.job_id, container=job.container_name)
        elif job.state.is_terminal and job.container_id is not None:
            # Stopped or died while starting: make sure its container goes too.
            self._lifecycle.begin_teardown(job)
        return CreatedJob(job.snapshot(), token, already_existed=False)

    def _warm_slot_or_project(
        self, admitted: AdmittedJob
    ) -> tuple[WarmSlot | None, HeldProjectDir]:
        """A warm slot for the job and its directory as the job's project, when the job's mode
        has a pool with a ready slot and the job names no project (a bind mount cannot be
        added to a running container); else no slot and the project a cold start mounts,
        held open until the started container's /workspace has been compared with it."""
        pool, mode = self._warm, admitted.mode
        if pool is not None and pool.has_pool(mode) and not self._existing_record(admitted):
            if admitted.project_dir:
                pool.count_miss(mode, "project")
            elif (slot := pool.take(mode)) is not None:
                held = self._adopt_slot_directory(pool, slot, admitted.job_id)
                if held is not None:
                    return slot, held
        project = hold_job_project_dir(
            admitted.project_dir, self._settings.projects_dir, admitted.job_id
        )
        return None, project

    def _adopt_slot_directory(
        self, pool: WarmPool, slot: WarmSlot, job_id: str
    ) -> HeldProjectDir | None:
        try:
            held = pool.adopt_directory(slot, self._settings.projects_dir, job_id)
        except (OSError, OrchestratorError) as exc:
            log.warning("a warm slot's directory could not be adopted", error=str(exc))
            pool.discard(slot, "its directory could not be adopted")
            pool.count_miss(slot.mode, "claim_failed")
            return None
        if held is None:  # <projects>/<job_id> exists already: the job mounts that one
            pool.give_back(slot)
            pool.count_miss(slot.mode, "project")
        return held

    def _existing_record(self, admitted: AdmittedJob) -> bool:
        return self._table.exists(admitted.job_id) or self._table.store.is_hidden(admitted.job_id)

    def _existing(self, job_id: str) -> CreatedJob | None:
        """The job already created under this id (an idempotent retry), if there is one."""
        if self._table.exists(job_id):
            return CreatedJob(self._table.snapshot(job_id), None, already_existed=True)
        if self._table.store.is_hidden(job_id):
            raise AlreadyExists(f"job id {job_id} belonged to a job that was cleaned up")
        return None

    def _record(self, admitted: AdmittedJob, project: str) -> JobRecord:
        now = utcnow()
        job = JobRecord(
            job_id=admitted.job_id,
            order=self._table.next_order(),
            task=admitted.task,
            mode=admitted.mode,
            project_dir=project,
            container_name=container_name(admitted.mode, admitted.job_id),
            created_at=now,
            limits=admitted.limits,
            deadline=now + timedelta(seconds=admitted.limits.timeout_seconds),
            labels=admitted.labels,
            credential_names=tuple(grant.name for grant in admitted.grants),
            llm_provider=self._llm_provider_name,
            wait_for_prompts=admitted.wait_for_prompts,
            history_limit=HISTORY_LIMIT,
            history_max_bytes=self._settings.job_history_max_bytes,
            tools=admitted.tools,
            egress_hosts=admitted.egress_hosts,
            git=admitted.git,
            agent=admitted.agent,
        )
        self._table.add(job)
        if self._metrics is not None:
            self._metrics.job_created(job.mode.value)
        return job

    async def _save_created(
        self,
        job: JobRecord,
        admitted: AdmittedJob,
        token: str,
        keys: tuple[str | None, str],
    ) -> None:
        llm_key, egress_key = keys
        self._lifecycle.publish(
            job, UpdateKind.STATE, {"state": JobState.CREATING, "reason": "job created"}
        )
        grants = admitted.grants
        sealed = self._sealer.seal(job.job_id, grants) if (self._sealer and grants) else None
        self._store.save_job(
            record_to_json(job),
            token_digest(token),
            sealed,
            llm_key_digest=token_digest(llm_key) if llm_key else None,
            egress_key_digest=token_digest(egress_key),
        )
        # The job must be on disk before its container can call back or outlive us.
        await self._store.flush()
        log.info("job created", job_id=job.job_id, mode=job.mode.value, project_dir=job.project_dir)

    async def _claim(self, job: JobRecord, slot: WarmSlot, token: str) -> bool:
        """Hands the warm slot to the job: its memory limit set if the job's differs from the
        pool's, then the slot's waiting poll answered with the job id and token. False (the
        slot removed, the job's record cleared of it) when that failed: the job starts cold."""
        pool = self._warm
        assert pool is not None
        assert slot.container_id is not None
        started = time.monotonic()
        try:
            memory_mb = job.limits.memory_mb
            if memory_mb != default_memory_mb(self._settings, job.mode):
                memory = memory_mb * 1024 * 1024
                await self._backend.update_memory(slot.container_id, memory, memory)
            if job.state is not JobState.CREATING:
                pool.forget(slot)
                return True  # stopped meanwhile: the slot's container goes with the job
            job.claim_answered = asyncio.Event()
            delivered = await pool.deliver(slot, job.job_id, token)
            if delivered:
                # The claim counts once the agent calls in as the job: an answer lost on its
                # way (a connection cut, a frozen container) must not leave the job waiting.
                await asyncio.wait_for(job.claim_answered.wait(), CLAIM_CONFIRM_S)
        except Exception as exc:
            log.warning(
                "warm slot claim failed", job_id=job.job_id, error=str(exc) or type(exc).__name__
            )
            delivered = False
        finally:
            job.claim_answered = None
        if job.state is not JobState.CREATING:
            pool.forget(slot)
            return True  # ended meanwhile: its teardown removes the slot's container
        if delivered:
            pool.claimed(slot, time.monotonic() - started)
            return True
        log.warning("warm slot claim failed; starting the job cold", job_id=job.job_id)
        pool.discard(slot, "its claim failed")
        pool.count_miss(job.mode, "claim_failed")
        job.warm_slot = None
        job.container_id = None
        job.container_name = container_name(job.mode, job.job_id)
        self._lifecycle.persist(job)
        return False

    async def _start(
        self, job: JobRecord, project: HeldProjectDir, token: str, placement: tuple[str, ...]
    ) -> None:
        network = None
        if self._settings.job_network == "isolated":
            network = await self._backend.create_job_network(
                job_network_request(
                    self._settings, job.job_id, self._orchestrator_url, self._egress_url
                )
            )
        spec = build_container_spec(
            network=network,
            settings=self._settings,
            job_id=job.job_id,
            mode=job.mode,
            limits=job.limits,
            created_at=job.created_at,
            token=token,
            orchestrator_url=self._orchestrator_url,
            orchestrator_ca_pem=self._orchestrator_ca_pem,
            project_dir=job.project_dir,
            placement=placement,
            agent_image=job.agent.image if job.agent is not None else None,
            binds_host_paths=self._backend.binds_host_paths,
        )
        if job.state is JobState.CREATING:
            job.container_id = await self._backend.create_and_start(spec)
            self._lifecycle.persist(job)
            # Before the job is Running (its worker-API calls wait for that): the engine
            # resolved the project path itself, after the validation.
            await verify_mounted_workspace(self._backend, job.container_id, project)

    def _start_failed(self, job: JobRecord, message: str) -> None:
        # A container that started but failed its workspace check is removed too.
        started = job.container_id is not None
        self._lifecycle.finish(job, TerminalReason.START_FAILED, message, teardown=started)
        if not started:
            self._lifecycle.spawn(self._lifecycle.abandon(job))

    def served_tools(self, job_id: str) -> dict[str, Any]:
        """What ``GET /worker/{id}/tools`` answers: the job's granted custom tools."""
        return self._catalog.served_tools(self._live_record(job_id).tools)

    # ---------------------------------------------------------------- read

    def _live_record(self, job_id: str) -> JobRecord:
        """The in-memory record of a job the worker side talks about."""
        return self._table.require(parse_job_id(job_id))

    def get_job(self, job_id: str) -> JobSnapshot:
        return self._table.snapshot(parse_job_id(job_id))

    def list_jobs(
        self,
        states: frozenset[JobState] = frozenset(),
        page_size: int = 0,
        page_token: str = "",
    ) -> JobPage:
        """Jobs in creation order, optionally filtered by state, one page at a time. The page
        token is the last order returned; the next page starts after it."""
        size = page_size or DEFAULT_PAGE_SIZE
        if size > MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size {size} exceeds the maximum of {MAX_PAGE_SIZE}")
        after = 0
        if page_token:
            if not page_token.isdigit() or len(page_token) > 20:
                raise InvalidArgument("page_token is invalid: pass the one the last page returned")
            after = int(page_token)
        return self._table.page(after, states, size)

    def job_ids(self) -> list[str]:
        return self._table.job_ids()

    async def watch(
        self, job_id: str, after_sequence: int = 0, from_start: bool = False
    ) -> AsyncIterator[JobSnapshot | JobUpdate]:
        """The job's snapshot (when after_sequence is 0), then every later update in order;
        ends after the terminal result. ``from_start`` replays the retained history instead
        of the snapshot."""
        job_id = parse_job_id(job_id)
        job = self._table.record(job_id)
        if job is None:
            async for item in self._watch_stored(job_id, after_sequence, from_start):
                yield item
            return
        cursor = after_sequence
        if after_sequence == 0 and not from_start:
            snapshot = job.snapshot()
            cursor = snapshot.last_sequence
            yield snapshot
            if snapshot.state.is_terminal:
                return
        # One future per wake-up on a loop looked up once: with many watchers per job, an
        # asyncio.Event's per-waiter loop lookup and bookkeeping were a tenth of the fan-out.
        loop = asyncio.get_running_loop()
        while True:
            waiter: asyncio.Future[None] = loop.create_future()
            job.wake_on_change(waiter)
            try:
                for update in job.updates_after(cursor):
                    cursor = update.sequence
                    yield update
                    if update.kind is UpdateKind.RESULT:
                        return
                if job.state.is_terminal and cursor >= job.sequence:
                    return
                await waiter
            finally:
                if waiter.cancelled() or not waiter.done():
                    job.forget_waiter(waiter)  # this watcher stopped: no waiter left behind

    async def _watch_stored(
        self, job_id: str, after_sequence: int, from_start: bool
    ) -> AsyncIterator[JobSnapshot | JobUpdate]:
        # An ended job: everything there is to see is in the store already.
        snapshot = self._table.snapshot(job_id)
        if after_sequence == 0 and not from_start:
            yield snapshot
            return
        for update in self._table.stored_updates(job_id, after_sequence):
            yield update
            if update.kind is UpdateKind.RESULT:
                return

    # ---------------------------------------------------------------- start gate

    async def hold_while_creating(self, job_id: str, token: str, timeout_s: float) -> bool:
        """Holds a worker-API call (or an egress attempt) that carries the live token (or
        egress key) of a job still ``Creating``
        (its container started, its workspace not yet verified) until the job leaves that
        state; False if it has not after ``timeout_s``. Any other call passes at once."""
        job = self._table.record(job_id)
        if job is None or job.state is not JobState.CREATING:
            return True
        if not (
            self._tokens.validate(job_id, token)
            or self._tokens.validate_egress_key(job_id, token)
            or self._tokens.validate_llm_key(job_id, token)
        ):
            return True  # refused by the handler's own check, without waiting
        if job.claim_answered is not None:
            job.claim_answered.set()  # the warm slot's agent runs as this job (see _claim)
        return await wait_while_creating(job, timeout_s)

    # ---------------------------------------------------------------- worker-side calls

    def authenticate(self, job_id: str, token: str) -> JobRecord:
        """The job if ``token`` is its live token; raises Unauthenticated otherwise."""
        job = self._table.record(job_id)
        if job is None or not self._tokens.validate(job_id, token):
            raise Unauthenticated()
        return job

    def authenticate_egress(self, job_id: str, key: str) -> JobRecord:
        """The job if ``key`` is its live egress key; raises Unauthenticated otherwise."""
        job = self._table.record(job_id)
        if job is None or not self._tokens.validate_egress_key(job_id, key):
            raise Unauthenticated()
        return job

    def record_status(self, job_id: str, message: str, iteration: int | None) -> None:
        job = self._live_record(job_id)
        if job.state.is_terminal:
            return
        message = bound_status_message(message)
        job.status_message = message
        if iteration is not None:
            job.iteration = iteration
        self._lifecycle.publish(
            job, UpdateKind.STATUS, {"message": message, "iteration": job.iteration}
        )

    def record_event(self, job_id: str, event_type: str, data: Mapping[str, Any]) -> None:
        job = self._live_record(job_id)
        if job.state.is_terminal:
            return
        # Never more than the bound is kept, whatever arrived (long text cut with a marker).
        bounded = bound_event_data(data)
        self._lifecycle.publish(job, UpdateKind.EVENT, {"event_type": event_type, "data": bounded})

    def send_prompt(self, job_id: str, content: str, done: bool) -> None:
        """Queues a follow-up for the job's agent (read by ``GET /prompt``)."""
        job_id = parse_job_id(job_id)
        job = self._table.record(job_id)
        if job is None or job.state.is_terminal:
            state = self._table.snapshot(job_id).state  # JobNotFound for an unknown job
            raise FailedPrecondition(f"job {job_id} has ended ({state.value})")
        if not done and not content.strip():
            raise InvalidArgument("prompt is empty: send text, or done=true to finish")
        check_text(content, "prompt", MAX_PROMPT_CHARS)
        if len(job.prompts) >= MAX_QUEUED_PROMPTS:
            raise FailedPrecondition(f"{MAX_QUEUED_PROMPTS} prompts are already queued")
        job.prompts.append(FollowUpPrompt(content=content, done=done))

    def next_prompt(self, job_id: str) -> FollowUpPrompt | None:
        job = self._live_record(job_id)
        return job.prompts.popleft() if job.prompts else None

    def _usage_changed(self, job: JobRecord) -> None:
        # After the end a late answer still counts, but the history ended with the result.
        if job.state.is_terminal:
            self._lifecycle.persist(job)
        else:
            self._lifecycle.publish(job, UpdateKind.USAGE, {"usage": job.usage})

    def llm_refusal(self, job_id: str) -> str | None:
        """The code of the job's last LLM refusal, or None (``GET /job``'s ``llm_refusal``)."""
        return self._live_record(job_id).budget_refused

    async def complete_job(
        self,
        job_id: str,
        success: bool,
        message: str,
        iterations: int | None = None,
        details: Mapping[str, Any] | None = None,
        teardown: bool = True,
    ) -> JobSnapshot:
        """Records the job's one result (success → Stopped, failure → Failed), revokes its
        token at once and returns once the result is on disk; the container is torn down in
        the background (or, with ``teardown=False``, when the caller calls
        :meth:`begin_teardown`)."""
        job = self._live_record(job_id)
        if job.state.is_terminal:
            raise FailedPrecondition(f"job {job.job_id} has already ended ({job.state.value})")
        message, details = bound_result(message, details)
        reason = TerminalReason.COMPLETED if success else _failure_reason(details, job)
        self._lifecycle.finish(
            job,
            reason,
            message,
            iterations=iterations,
            details=details,
            success=success,
            teardown=teardown,
        )
        await self._store.flush()
        return job.snapshot()

    def begin_teardown(self, job_id: str) -> None:
        """Stops and removes an ended job's container in the background."""
        job = self._table.record(job_id)
        if job is not None:
            self._lifecycle.begin_teardown(job)

    # ---------------------------------------------------------------- workspaces

    @property
    def uploads(self) -> WorkspaceUploads:
        return self._uploads

    async def upload_workspace(
        self, chunks: AsyncIterator[bytes], compressed: bool | None = None
    ) -> UploadedWorkspace:
        """Unpacks an uploaded archive into a new project directory (see WorkspaceUploads)."""
        if not self._accepting:
            raise FailedPrecondition("the orchestrator is shutting down and accepts no uploads")
        self._uploads.ensure_prepared()
        return await self._uploads.receive(chunks, compressed)

    @property
    def syncs_workspaces(self) -> bool:
        """Whether a job's /workspace is a volume of its own rather than its project directory
        (a backend without host paths): it fetches the project at its start (GET workspace)
        and pushes it back at its end (PUT workspace)."""
        return not self._backend.binds_host_paths

    async def download_workspace(self, job_id: str) -> AsyncIterator[bytes]:
        """The job's project as a .tar.gz, chunk by chunk: while it runs and for
        WORKSPACE_RETAIN_S after it ended (FailedPrecondition later; JobNotFound). Where jobs
        run without host paths: the workspace the job pushed at its end, once it has."""
        job = self.get_job(job_id)
        check_downloadable(job, self._settings.workspace_retain_s)
        if self.syncs_workspaces:
            if not self._results.has(job.job_id):
                if not job.state.is_terminal:
                    raise FailedPrecondition(
                        f"job {job.job_id} runs on a cluster node: its workspace can be "
                        "downloaded once the job has ended and pushed it back"
                    )
                raise FailedPrecondition(
                    f"job {job.job_id} ended without pushing its workspace back (stopped, "
                    "killed, out of memory, or its node was lost): there is nothing to download"
                )
            async for chunk in self._results.stream(job.job_id):
                yield chunk
            return
        async for chunk in self._downloads.stream(job.job_id, job.project_dir):
            yield chunk

    async def workspace_to_fetch(self, job_id: str) -> AsyncGenerator[bytes, None]:
        """What a job's container fetches into its empty /workspace (GET workspace): its
        project directory (an upload, or the directory it was created on) as a .tar.gz."""
        job = self.get_job(job_id)
        if not self.syncs_workspaces:
            raise FailedPrecondition(
                f"job {job.job_id}'s /workspace is its project directory, mounted: there is "
                "nothing to fetch"
            )
        async for chunk in self._downloads.stream(job.job_id, job.project_dir):
            yield chunk

    async def receive_workspace_result(
        self, job_id: str, chunks: AsyncIterator[bytes]
    ) -> PushedWorkspace:
        """Keeps the .tar.gz a running job pushes of its /workspace (PUT workspace), what
        DownloadWorkspace serves once it ended. Refused for a job that has ended or whose
        /workspace is its mounted project directory."""
        job = self.get_job(job_id)
        if not self.syncs_workspaces:
            raise FailedPrecondition(
                f"job {job.job_id}'s /workspace is its project directory, mounted: there is "
                "nothing to push"
            )
        if job.state.is_terminal:
            raise FailedPrecondition(
                f"job {job.job_id} has ended: its workspace can no longer be pushed"
            )
        return await self._results.receive(job.job_id, chunks)

    def workspace_job_end(self, job_id: str) -> JobEnd:
        """Whether a job still runs and when it ended, for the uploads' retention."""
        try:
            job = self._table.snapshot(job_id)
        except (JobNotFound, InvalidArgument):
            return UNKNOWN
        if not job.state.is_terminal:
            return LIVE
        ended = job.finished_at.timestamp() if job.finished_at is not None else None
        return JobEnd(live=False, ended_at=ended)

    async def sweep_workspaces(self, now: float | None = None) -> list[str]:
        """One retention pass over the uploaded workspaces and the pushed results; returns
        the ids removed (uploads' workspace ids, results' job ids)."""
        self._uploads.ensure_prepared()
        self._results.ensure_prepared()
        removed = await self._uploads.sweep(self.workspace_job_end, now)
        return removed + await self._results.sweep(self.workspace_job_end, now)

    async def run_workspace_sweeper(self, interval: float) -> None:
        """Sweeps every ``interval`` seconds until cancelled; an error is logged, not fatal."""
        self._uploads.ensure_prepared()
        self._results.ensure_prepared()
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep_workspaces()
            except Exception as exc:  # the next pass tries again
                log.warning("workspace retention pass failed", error=f"{type(exc).__name__}: {exc}")

    # ---------------------------------------------------------------- stop / cleanup

    async def stop_job(self, job_id: str) -> JobSnapshot:
        """Stops the job's container (grace period, then kill), removes it, revokes the token;
        the job ends Stopped (STOPPED_BY_OPERATOR). Stopping an ended job changes nothing."""
        job_id = parse_job_id(job_id)
        job = self._table.record(job_id)
        if job is None:
            return self._table.snapshot(job_id)
        if not job.state.is_terminal:
            self._lifecycle.finish(job, TerminalReason.STOPPED_BY_OPERATOR, "stopped by operator")
        await job.torn_down.wait()
        return job.snapshot()

    async def cleanup_job(self, job_id: str) -> None:
        """Forgets an ended job: no read finds it any more (its container is removed first if
        still there); its record stays on disk as the history of what ran."""
        job_id = parse_job_id(job_id)
        snapshot = self._table.snapshot(job_id)
        job = self._table.record(job_id)
        if not snapshot.state.is_terminal:
            raise FailedPrecondition(
                f"job {job_id} is {snapshot.state.value}: stop it before cleaning it up"
            )
        if job is not None:
            await job.torn_down.wait()
            if job.container_id is not None:
                await self._backend.remove(job.container_id)
        self._table.forget(job_id, snapshot.state, snapshot.mode.value)
        await self._store.flush()

    # ---------------------------------------------------------------- restore / reconcile

    def restore(self) -> int:
        """Loads what a restart must pick up; see :meth:`Reconciler.restore`."""
        return self._reconciler.restore()

    async def reconcile_once(self) -> None:
        await self._reconciler.reconcile_once()

    async def run_reaper(self, interval: float = 2.0) -> None:
        await self._reconciler.run_reaper(interval)

    async def handle_container_exit(self, event: ContainerExit) -> None:
        await self._reconciler.handle_container_exit(event)

    async def watch_container_exits(self) -> None:
        await self._reconciler.watch_container_exits()

    # ---------------------------------------------------------------- shutdown

    async def shutdown(self, drain: bool = False) -> None:
        """Stops accepting jobs and removes the warm pools' unclaimed containers; with
        ``drain`` stops every live job. Waits for teardowns."""
        self._accepting = False
        if self._warm is not None:
            await self._warm.close()
        if drain:
            for job in list(self._table.live.values()):
                self._lifecycle.finish(
                    job, TerminalReason.STOPPED_BY_OPERATOR, "orchestrator drained"
                )
        await self._lifecycle.wait_background()

    async def close(self) -> None:
        """Waits for background teardowns and makes every queued write durable."""
        with contextlib.suppress(Exception):
            await self._lifecycle.wait_background()
        self._workspace_threads.shutdown(wait=False, cancel_futures=True)
        await self._store.close()


def _failure_reason(details: Mapping[str, Any] | None, job: JobRecord) -> TerminalReason:
    reported = str((details or {}).get("reason", "")).lower()
    if reported in (FailureReason.BUDGET_EXCEEDED, "budget") or (
        job.budget_refused and not reported
    ):
        return TerminalReason.BUDGET_EXCEEDED
    if reported in (FailureReason.DEADLINE, "timed_out", "timeout"):
        return TerminalReason.TIMED_OUT
    return TerminalReason.FAILED
