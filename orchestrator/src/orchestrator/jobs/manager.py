"""ContainerJobManager: owns every job's state machine and its container's lifecycle.

It knows no protobuf and no HTTP: the gRPC servicer and the HTTP worker API are two thin doors
onto it. All state changes happen on the event loop; container work goes through the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from orchestrator.containers.backend import ContainerBackend, ContainerExit
from orchestrator.containers.spec import LABEL_JOB_ID, build_container_spec, container_name
from orchestrator.errors import (
    BudgetExceeded,
    EngineUnavailable,
    FailedPrecondition,
    InvalidArgument,
    JobNotFound,
    OrchestratorError,
)
from orchestrator.jobs.isolation import job_network_request
from orchestrator.jobs.models import (
    NO_TOOLS,
    CreateJobRequest,
    CredentialGrant,
    FollowUpPrompt,
    GrantedTools,
    JobLimitOverrides,
    JobLimits,
    JobMode,
    JobResult,
    JobSnapshot,
    JobState,
    JobUpdate,
    TerminalReason,
    UpdateKind,
)
from orchestrator.jobs.order_index import CreationOrderIndex
from orchestrator.jobs.projects import (
    check_writable_by_sandbox,
    create_job_project_dir,
    validate_bind_mount_path,
)
from orchestrator.jobs.record import JobRecord, utcnow
from orchestrator.jobs.state import check_transition
from orchestrator.llm.policy import check_budget
from orchestrator.logging import get_logger
from orchestrator.model_names import model_name_problem
from orchestrator.settings import Settings
from orchestrator.store.base import JobStore
from orchestrator.store.codec import record_from_json, record_to_json
from orchestrator.store.sealing import GrantSealer
from orchestrator.tokens import TokenStore, token_digest, validate_grants
from orchestrator.tool_catalog import ToolCatalog

if TYPE_CHECKING:
    from orchestrator.metrics import Metrics

log = get_logger(__name__)

MAX_TASK_CHARS = 100_000
MAX_LABELS = 32
LABEL_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}$")
MAX_PROMPT_CHARS = 100_000
MAX_QUEUED_PROMPTS = 100
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
HISTORY_LIMIT = 2000
SIGKILL_EXIT_CODE = 137  # 128 + SIGKILL: how an OOM kill looks until the engine flags it
OOM_CONFIRM_S = 1.0
OOM_CONFIRM_INTERVAL_S = 0.1


def parse_job_id(raw: str) -> str:
    """Normalizes a job id; anything but a UUID is InvalidArgument."""
    try:
        return str(uuid.UUID(raw.strip()))
    except (ValueError, AttributeError):
        raise InvalidArgument(f"job id {raw[:64]!r} is not a UUID") from None


@dataclass(frozen=True)
class CreatedJob:
    """What ``create_job`` returns: the job, its token (in-process callers only), and whether
    an idempotent retry found it already there (then ``token`` is None)."""

    job: JobSnapshot
    token: str | None
    already_existed: bool


@dataclass(frozen=True)
class JobPage:
    jobs: list[JobSnapshot]
    next_page_token: str


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
    ) -> None:
        self._settings = settings
        self._catalog = catalog or ToolCatalog(settings.base_dir)
        self._metrics = metrics
        self._store = store
        self._sealer = sealer
        self._backend = backend
        self._tokens = tokens
        self._orchestrator_url = orchestrator_url
        self._llm_provider_name = llm_provider_name
        self._jobs: dict[str, JobRecord] = {}
        # The jobs not yet ended: what reconciliation and the reaper look at, every pass, without
        # walking a long history of ended ones.
        self._live: dict[str, JobRecord] = {}
        self._by_order = CreationOrderIndex(self._jobs)
        self._order = 0
        self._background: set[asyncio.Task[Any]] = set()
        self._accepting = True
        if metrics is not None:
            metrics.watch_jobs(self.state_counts)

    @property
    def metrics(self) -> Metrics | None:
        """The process's metrics, when it keeps any."""
        return self._metrics

    def state_counts(self) -> dict[tuple[str, str], int]:
        """How many known jobs are in each (state, mode)."""
        counts: dict[tuple[str, str], int] = {}
        for job in self._jobs.values():
            key = (job.state.value, job.mode.value)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def set_orchestrator_url(self, url: str) -> None:
        """The worker API's URL as containers reach it (known once the API is bound)."""
        self._orchestrator_url = url

    @property
    def tokens(self) -> TokenStore:
        return self._tokens

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def backend(self) -> ContainerBackend:
        return self._backend

    def container_id(self, job_id: str) -> str | None:
        """The id of the job's container while it exists."""
        return self._get(job_id).container_id

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
        job_id = parse_job_id(request.job_id) if request.job_id else str(uuid.uuid4())
        existing = self._jobs.get(job_id)
        if existing is not None:
            return CreatedJob(existing.snapshot(), None, already_existed=True)
        task = request.task.strip()
        if not task:
            raise InvalidArgument("task is empty: say what the job should do")
        if len(task) > MAX_TASK_CHARS:
            raise InvalidArgument(f"task is {len(task)} characters; the limit is {MAX_TASK_CHARS}")
        if request.mode is JobMode.CLAUDE_CODE and not self._settings.claude_auth_configured:
            raise FailedPrecondition(
                "Claude Code mode is not enabled: set ANTHROPIC_API_KEY or "
                "CLAUDE_CODE_OAUTH_TOKEN on the orchestrator"
            )
        labels = _validate_labels(request.labels)
        grants = validate_grants(request.credentials)
        tools = self._grant_tools(request, grants)
        limits = self._effective_limits(request.mode, request.limits)
        if request.project_dir:
            project = validate_bind_mount_path(request.project_dir, self._settings.projects_dir)
            check_writable_by_sandbox(project)
        else:
            project = create_job_project_dir(self._settings.projects_dir, job_id)
        # A concurrent create with the same id may have won while the checks above ran.
        existing = self._jobs.get(job_id)
        if existing is not None:
            return CreatedJob(existing.snapshot(), None, already_existed=True)

        now = utcnow()
        self._order += 1
        job = JobRecord(
            job_id=job_id,
            order=self._order,
            task=task,
            mode=request.mode,
            project_dir=str(project),
            container_name=container_name(request.mode, job_id),
            created_at=now,
            limits=limits,
            deadline=now + timedelta(seconds=limits.timeout_seconds),
            labels=labels,
            credential_names=tuple(g.name for g in grants),
            llm_provider=self._llm_provider_name,
            wait_for_prompts=request.wait_for_prompts,
            history_limit=HISTORY_LIMIT,
            tools=tools,
        )
        self._jobs[job_id] = job
        self._live[job_id] = job
        if self._metrics is not None:
            self._metrics.job_created(request.mode.value)
        token = self._tokens.create_token(job_id, grants)
        # Held until the container is started, so reconciliation never judges the job
        # "vanished" while it is being created. A fresh lock is acquired without suspending.
        await job.lifecycle_lock.acquire()
        try:
            self._publish(
                job, UpdateKind.STATE, {"state": JobState.CREATING, "reason": "job created"}
            )
            if self._store is not None:
                sealed = self._sealer.seal(job_id, grants) if (self._sealer and grants) else None
                self._store.save_job(record_to_json(job), token_digest(token), sealed)
                # The job must be on disk before its container can call back or outlive us.
                await self._store.flush()
            log.info(
                "job created", job_id=job_id, mode=request.mode.value, project_dir=str(project)
            )
            network = None
            if self._settings.job_network == "isolated":
                network = await self._backend.create_job_network(
                    job_network_request(self._settings, job_id, self._orchestrator_url)
                )
            spec = build_container_spec(
                network=network,
                settings=self._settings,
                job_id=job_id,
                mode=request.mode,
                limits=limits,
                created_at=now,
                deadline=job.deadline,
                token=token,
                orchestrator_url=self._orchestrator_url,
                project_dir=str(project),
                wait_for_prompts=request.wait_for_prompts,
            )
            if job.state is JobState.CREATING:
                job.container_id = await self._backend.create_and_start(spec)
                self._persist(job)
        except OrchestratorError as exc:
            self._finish(job, TerminalReason.START_FAILED, exc.message, teardown=False)
            job.torn_down.set()
            self._spawn(self._release_network(job_id))
            raise
        except Exception as exc:
            message = f"container start failed: {type(exc).__name__}: {exc}"
            self._finish(job, TerminalReason.START_FAILED, message, teardown=False)
            job.torn_down.set()
            self._spawn(self._release_network(job_id))
            raise FailedPrecondition(message) from exc
        finally:
            job.lifecycle_lock.release()
        if job.state is JobState.CREATING:
            self._transition(job, JobState.RUNNING, "container started")
            job.started_at = utcnow()
            if self._metrics is not None:
                self._metrics.job_started(
                    job.mode.value, (job.started_at - job.created_at).total_seconds()
                )
            log.info("job running", job_id=job_id, container=job.container_name)
        elif job.state.is_terminal and job.container_id is not None:
            # Stopped or died while starting: make sure its container goes too.
            self._spawn(self._teardown(job))
        return CreatedJob(job.snapshot(), token, already_existed=False)

    def _grant_tools(
        self, request: CreateJobRequest, grants: tuple[CredentialGrant, ...]
    ) -> GrantedTools:
        if not request.mcp_servers and not request.wasm_tools:
            return NO_TOOLS
        if request.mode is not JobMode.WORKER:
            raise InvalidArgument(
                "MCP servers and WASM tools are offered to worker-mode jobs only; Claude Code "
                "jobs use the CLI's own tools"
            )
        return self._catalog.grant(
            request.mcp_servers, request.wasm_tools, (grant.name for grant in grants)
        )

    def served_tools(self, job_id: str) -> dict[str, Any]:
        """What ``GET /worker/{id}/tools`` answers: the job's granted custom tools."""
        return self._catalog.served_tools(self._get(job_id).tools)

    def _effective_limits(self, mode: JobMode, o: JobLimitOverrides) -> JobLimits:
        s = self._settings
        claude = mode is JobMode.CLAUDE_CODE

        def pick(value: int | None, default: int, name: str, low: int, high: int) -> int:
            if value is None:
                return default
            if not low <= value <= high:
                raise InvalidArgument(f"limits.{name}={value} is out of range [{low}, {high}]")
            return value

        return JobLimits(
            max_iterations=pick(
                o.max_iterations, s.worker_max_iterations, "max_iterations", 1, 10_000
            ),
            timeout_seconds=pick(
                o.timeout_seconds,
                s.claude_timeout_s if claude else s.worker_timeout_s,
                "timeout_seconds",
                1,
                7 * 86400,
            ),
            memory_mb=pick(
                o.memory_mb,
                s.claude_memory_mb if claude else s.worker_memory_mb,
                "memory_mb",
                16,
                1 << 20,
            ),
            llm_token_budget=pick(
                o.llm_token_budget, s.job_llm_token_budget, "llm_token_budget", 0, 1 << 40
            ),
            llm_call_budget=pick(
                o.llm_call_budget, s.job_llm_call_budget, "llm_call_budget", 0, 1 << 30
            ),
            llm_max_tokens_per_call=pick(
                o.llm_max_tokens_per_call,
                s.job_llm_max_tokens_per_call,
                "llm_max_tokens_per_call",
                1,
                s.job_llm_max_tokens_per_call,
            ),
            claude_max_turns=pick(
                o.claude_max_turns, s.claude_max_turns, "claude_max_turns", 1, 10_000
            ),
            claude_model=_validate_model_name(o.claude_model or s.claude_model),
        )

    # ---------------------------------------------------------------- read

    def _get(self, job_id: str) -> JobRecord:
        job = self._jobs.get(parse_job_id(job_id))
        if job is None:
            raise JobNotFound(job_id)
        return job

    def get_job(self, job_id: str) -> JobSnapshot:
        return self._get(job_id).snapshot()

    def list_jobs(
        self,
        states: frozenset[JobState] = frozenset(),
        page_size: int = 0,
        page_token: str = "",
    ) -> JobPage:
        """Jobs in creation order, optionally filtered by state, one page at a time. The page
        token is the last order returned; the next page starts there by bisection."""
        size = page_size or DEFAULT_PAGE_SIZE
        if size > MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size {size} exceeds the maximum of {MAX_PAGE_SIZE}")
        after = 0
        if page_token:
            if not page_token.isdigit():
                raise InvalidArgument("page_token is invalid: pass the one the last page returned")
            after = int(page_token)
        page: list[JobSnapshot] = []
        last_order = 0
        more = False
        for job in self._by_order.after(after):
            if states and job.state not in states:
                continue
            if len(page) == size:
                more = True
                break
            page.append(job.snapshot())
            last_order = job.order
        return JobPage(page, str(last_order) if more else "")

    def job_ids(self) -> list[str]:
        return list(self._jobs)

    async def watch(
        self, job_id: str, after_sequence: int = 0, from_start: bool = False
    ) -> AsyncIterator[JobSnapshot | JobUpdate]:
        """The job's snapshot (when after_sequence is 0), then every later update in order;
        ends after the terminal result. ``from_start`` replays the retained history instead
        of the snapshot."""
        job = self._get(job_id)
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
                if self._jobs.get(job.job_id) is not job:
                    return  # cleaned up
                await waiter
            finally:
                if waiter.cancelled() or not waiter.done():
                    job.forget_waiter(waiter)  # this watcher stopped: no waiter left behind

    # ---------------------------------------------------------------- worker-side calls

    def authenticate(self, job_id: str, token: str) -> JobRecord:
        """The job if ``token`` is its live token; raises Unauthenticated otherwise."""
        from orchestrator.errors import Unauthenticated

        job = self._jobs.get(job_id)
        if job is None or not self._tokens.validate(job_id, token):
            raise Unauthenticated()
        return job

    def record_status(self, job_id: str, message: str, iteration: int | None) -> None:
        job = self._get(job_id)
        if job.state.is_terminal:
            return
        job.status_message = message
        if iteration is not None:
            job.iteration = iteration
        self._publish(job, UpdateKind.STATUS, {"message": message, "iteration": job.iteration})

    def record_event(self, job_id: str, event_type: str, data: Mapping[str, Any]) -> None:
        job = self._get(job_id)
        if job.state.is_terminal:
            return
        self._publish(job, UpdateKind.EVENT, {"event_type": event_type, "data": dict(data)})

    def send_prompt(self, job_id: str, content: str, done: bool) -> None:
        """Queues a follow-up for the job's agent (read by ``GET /prompt``)."""
        job = self._get(job_id)
        if job.state.is_terminal:
            raise FailedPrecondition(f"job {job.job_id} has ended ({job.state.value})")
        if not done and not content.strip():
            raise InvalidArgument("prompt is empty: send text, or done=true to finish")
        if len(content) > MAX_PROMPT_CHARS:
            raise InvalidArgument(f"prompt exceeds {MAX_PROMPT_CHARS} characters")
        if len(job.prompts) >= MAX_QUEUED_PROMPTS:
            raise FailedPrecondition(f"{MAX_QUEUED_PROMPTS} prompts are already queued")
        job.prompts.append(FollowUpPrompt(content=content, done=done))

    def next_prompt(self, job_id: str) -> FollowUpPrompt | None:
        job = self._get(job_id)
        return job.prompts.popleft() if job.prompts else None

    def begin_llm_call(self, job_id: str) -> JobLimits:
        """Checks the job's LLM budgets before a call and counts the call; raises
        BudgetExceeded with the numbers."""
        job = self._get(job_id)
        limits = job.limits
        usage = job.usage
        try:
            check_budget(
                usage.calls, usage.total_tokens, limits.llm_call_budget, limits.llm_token_budget
            )
        except BudgetExceeded as exc:
            job.budget_refused = exc.message
            raise
        job.usage = usage.plus(0, 0, calls=1)
        return limits

    def refund_llm_call(self, job_id: str) -> None:
        """Uncounts a call that ``begin_llm_call`` counted but that never reached a provider."""
        job = self._jobs.get(job_id)
        if job is not None and job.usage.calls > 0:
            job.usage = job.usage.plus(0, 0, calls=-1)

    def record_budget_refusal(self, job_id: str, message: str) -> None:
        self._get(job_id).budget_refused = message

    def record_llm_usage(self, job_id: str, input_tokens: int, output_tokens: int) -> None:
        job = self._jobs.get(job_id)
        if job is None:
            return
        job.usage = job.usage.plus(input_tokens, output_tokens, calls=0)
        self._publish(
            job,
            UpdateKind.USAGE,
            {"usage": job.usage},
        )

    def complete_job(
        self,
        job_id: str,
        success: bool,
        message: str,
        iterations: int | None = None,
        details: Mapping[str, Any] | None = None,
        teardown: bool = True,
    ) -> JobSnapshot:
        """Records the job's one result (success → Stopped, failure → Failed), revokes its
        token at once and tears the container down in the background (or, with
        ``teardown=False``, when the caller calls :meth:`begin_teardown`)."""
        job = self._get(job_id)
        if job.state.is_terminal:
            raise FailedPrecondition(f"job {job.job_id} has already ended ({job.state.value})")
        if success:
            reason = TerminalReason.COMPLETED
        else:
            reason = _failure_reason(details, job.budget_refused)
        self._finish(
            job,
            reason,
            message,
            iterations=iterations,
            details=details,
            success=success,
            teardown=teardown,
        )
        return job.snapshot()

    def begin_teardown(self, job_id: str) -> None:
        """Stops and removes an ended job's container in the background."""
        job = self._jobs.get(job_id)
        if job is not None and job.state.is_terminal and not job.torn_down.is_set():
            self._spawn(self._teardown(job))

    # ---------------------------------------------------------------- stop / cleanup

    async def stop_job(self, job_id: str) -> JobSnapshot:
        """Stops the job's container (grace period, then kill), removes it, revokes the token;
        the job ends Stopped (STOPPED_BY_OPERATOR). Stopping an ended job changes nothing."""
        job = self._get(job_id)
        if not job.state.is_terminal:
            self._finish(job, TerminalReason.STOPPED_BY_OPERATOR, "stopped by operator")
        await job.torn_down.wait()
        return job.snapshot()

    async def cleanup_job(self, job_id: str) -> None:
        """Forgets an ended job from memory (its container is removed first if still there)."""
        job = self._get(job_id)
        if not job.state.is_terminal:
            raise FailedPrecondition(
                f"job {job.job_id} is {job.state.value}: stop it before cleaning it up"
            )
        await job.torn_down.wait()
        if job.container_id is not None:
            await self._backend.remove(job.container_id)
        self._jobs.pop(job.job_id, None)
        # Wake watchers so they notice the job is gone.
        job.publish(UpdateKind.STATUS, {"message": "job cleaned up", "iteration": job.iteration})

    # ---------------------------------------------------------------- container events

    async def handle_container_exit(self, event: ContainerExit) -> None:
        """A container died: unless its job already ended, the job fails with the reason."""
        job = self._jobs.get(event.job_id)
        if job is None or job.state.is_terminal:
            return
        if event.exit_code == SIGKILL_EXIT_CODE and not event.oom_killed:
            event = await self._confirm_oom(event)
            if job.state.is_terminal:
                return
        if event.oom_killed:
            reason = TerminalReason.OOM_KILLED
            message = f"container was OOM-killed (memory limit {job.limits.memory_mb} MiB)"
        else:
            reason = TerminalReason.EXITED
            message = f"container exited with code {event.exit_code} without reporting a result"
        log.warning(
            "job container died", job_id=job.job_id, reason=reason.value, exit_code=event.exit_code
        )
        self._finish(job, reason, message, exit_code=event.exit_code)

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

    def restore(self) -> int:
        """Loads every stored job (at start, before serving). Live jobs get their token back
        (from its digest) and their grants (when they were sealed); a live job whose grants
        cannot be recovered fails with CREDENTIALS_LOST instead of running without them.
        Returns the number of live jobs, which reconciliation then matches with containers."""
        if self._store is None:
            return 0
        live = 0
        for stored in self._store.load(HISTORY_LIMIT):
            job = record_from_json(stored.data, HISTORY_LIMIT)
            job.history.extend(stored.updates)
            if stored.updates:
                job.sequence = max(job.sequence, stored.updates[-1].sequence)
            self._jobs[job.job_id] = job
            self._order = max(self._order, job.order)
            if job.state.is_terminal:
                if job.container_id is None:
                    job.torn_down.set()
                else:  # ended, but its teardown did not finish before the restart
                    self._spawn(self._teardown(job))
                continue
            live += 1
            self._live[job.job_id] = job
            grants: tuple[CredentialGrant, ...] | None = ()
            if job.credential_names:
                grants = None
                if stored.sealed_grants is not None and self._sealer is not None:
                    grants = self._sealer.open(job.job_id, stored.sealed_grants)
            if stored.token_digest is None:
                self._finish(job, TerminalReason.CONTAINER_LOST, "job token lost in a restart")
            elif grants is None:
                self._tokens.adopt_digest(job.job_id, stored.token_digest)
                self._finish(
                    job,
                    TerminalReason.CREDENTIALS_LOST,
                    "credential grants were lost in an orchestrator restart (set "
                    "ORCHESTRATOR_SECRETS_KEY to keep them across restarts)",
                )
            else:
                self._tokens.adopt_digest(job.job_id, stored.token_digest, grants)
        log.info("jobs restored", total=len(self._jobs), live=live)
        return live

    async def reconcile_once(self) -> None:
        """Level-triggered pass matching jobs with this instance's containers: adopts the
        container of a live job, removes containers without a live job, fails live jobs whose
        container is gone or dead (a missed exit event) and jobs past their deadline.

        Raises EngineUnavailable when the engine cannot be listed: then nothing is decided."""
        now = utcnow()
        for overdue in list(self._live.values()):
            if now >= overdue.deadline:
                self._count_reconcile("timed_out")
                self._finish(
                    overdue,
                    TerminalReason.TIMED_OUT,
                    f"timed out after {overdue.limits.timeout_seconds} s",
                )
        listed_at = utcnow()
        containers = await self._backend.list_managed(self._settings.instance)
        seen: set[str] = set()
        for info in containers:
            job_id = info.labels.get(LABEL_JOB_ID, "")
            job = self._jobs.get(job_id)
            if job is None or (job.state.is_terminal and job.torn_down.is_set()):
                log.warning(
                    "removing a container without a live job", job_id=job_id, container=info.name
                )
                self._count_reconcile("removed_orphan")
                await self._backend.remove(info.container_id)
                continue
            if job.state.is_terminal:
                continue  # its teardown is under way
            seen.add(job_id)
            if job.container_id != info.container_id and not job.lifecycle_lock.locked():
                job.container_id = info.container_id
                self._persist(job)
                log.info("adopted a running container", job_id=job_id, container=info.name)
                self._count_reconcile("adopted")
            if job.state is JobState.CREATING and not job.lifecycle_lock.locked():
                self._transition(job, JobState.RUNNING, "container adopted")
                job.started_at = job.started_at or utcnow()
            if not info.running and not job.lifecycle_lock.locked():
                # The listing may be stale (a container between create and start is not
                # running yet): only an inspected exit counts.
                detail = await self._backend.inspect(info.container_id)
                if detail is not None and (detail.running or not detail.exited):
                    continue
                self._count_reconcile("exit_detected")
                await self.handle_container_exit(
                    ContainerExit(
                        container_id=info.container_id,
                        job_id=job_id,
                        exit_code=detail.exit_code if detail else None,
                        oom_killed=bool(detail and detail.oom_killed),
                    )
                )
        for live in list(self._live.values()):
            # A job created after the listing began cannot be judged by it.
            if live.job_id in seen or live.lifecycle_lock.locked() or live.created_at >= listed_at:
                continue
            self._count_reconcile("container_lost")
            self._finish(live, TerminalReason.CONTAINER_LOST, "container vanished")
        for job_id in await self._backend.list_job_networks(self._settings.instance):
            owner = self._jobs.get(job_id)
            if owner is None or (owner.state.is_terminal and owner.torn_down.is_set()):
                log.warning("removing a job network without a live job", job_id=job_id)
                await self._release_network(job_id)

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

    async def shutdown(self, drain: bool = False) -> None:
        """Stops accepting jobs; with ``drain`` stops every live job. Waits for teardowns."""
        self._accepting = False
        if drain:
            for job in list(self._live.values()):
                if not job.state.is_terminal:
                    self._finish(job, TerminalReason.STOPPED_BY_OPERATOR, "orchestrator drained")
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # ---------------------------------------------------------------- internals

    def _publish(self, job: JobRecord, kind: UpdateKind, payload: dict[str, Any]) -> None:
        update = job.publish(kind, payload)
        if self._store is not None:
            self._store.append_update(job.job_id, update)
            if kind is not UpdateKind.EVENT:
                self._store.save_job(record_to_json(job))

    def _count_reconcile(self, action: str) -> None:
        if self._metrics is not None:
            self._metrics.reconcile_action(action)

    def _persist(self, job: JobRecord) -> None:
        if self._store is not None:
            self._store.save_job(record_to_json(job))

    def _transition(self, job: JobRecord, target: JobState, reason: str) -> None:
        check_transition(job.state, target)
        job.state = target
        self._publish(job, UpdateKind.STATE, {"state": target, "reason": reason})

    def _finish(
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
        """Records the job's one terminal result, revokes its token, tells every watcher and
        (in the background) keeps the log tail, stops and removes the container."""
        if job.state.is_terminal:
            return
        target = reason.terminal_state
        self._live.pop(job.job_id, None)
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
        self._transition(job, target, reason.value)
        self._publish(job, UpdateKind.RESULT, {"result": job.result})
        if self._store is not None:
            self._store.forget_secrets(job.job_id)
        log.info("job ended", job_id=job.job_id, state=target.value, reason=reason.value)
        if self._metrics is not None:
            self._metrics.job_ended(
                job.mode.value, reason.value, (now - job.created_at).total_seconds()
            )
        if teardown:
            self._spawn(self._teardown(job))

    async def _teardown(self, job: JobRecord) -> None:
        try:
            async with job.lifecycle_lock:
                container_id = job.container_id
                if container_id is None:
                    return
                try:
                    await self._backend.stop(container_id, self._settings.stop_grace_s)
                    tail = await self._backend.logs_tail(
                        container_id, self._settings.log_tail_lines
                    )
                    if tail:
                        job.log_tail = tail
                    await self._backend.remove(container_id)
                    job.container_id = None
                    self._persist(job)
                except Exception as exc:
                    # The reaper and the next reconciliation retry what is left behind.
                    log.warning("container teardown failed", job_id=job.job_id, error=str(exc))
        finally:
            await self._release_network(job.job_id)
            job.torn_down.set()

    async def _release_network(self, job_id: str) -> None:
        """Removes the job's isolated network and relay, if it has them (never raises)."""
        try:
            await self._backend.remove_job_network(self._settings.instance, job_id)
        except Exception as exc:
            # The next reconciliation retries.
            log.warning("job network removal failed", job_id=job_id, error=str(exc))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Waits for background teardowns and makes every queued write durable."""
        for task in list(self._background):
            with contextlib.suppress(Exception):
                await task
        if self._store is not None:
            await self._store.close()


def _failure_reason(
    details: Mapping[str, Any] | None, budget_refused: str | None
) -> TerminalReason:
    reported = str((details or {}).get("reason", "")).lower()
    if reported in ("budget_exceeded", "budget") or (budget_refused and not reported):
        return TerminalReason.BUDGET_EXCEEDED
    if reported in ("deadline", "timed_out", "timeout"):
        return TerminalReason.TIMED_OUT
    return TerminalReason.FAILED


def _validate_labels(labels: Mapping[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"at most {MAX_LABELS} labels are allowed")
    checked: dict[str, str] = {}
    for key, value in labels.items():
        if not LABEL_KEY_PATTERN.match(key):
            raise InvalidArgument(f"label key {key[:64]!r} is invalid")
        if len(value) > 256:
            raise InvalidArgument(f"label {key!r} is longer than 256 characters")
        checked[key] = value
    return checked


def _validate_model_name(model: str) -> str:
    # The rule lives with the settings' (model_names): CLAUDE_CODE_MODEL is checked by it at start.
    problem = model_name_problem(model)
    if problem:
        raise InvalidArgument(problem)
    return model
