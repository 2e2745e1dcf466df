"""The mutable in-memory record of one job and its ordered update history.

Only the job manager mutates a record, always on the event loop; readers get frozen snapshots.
Most records are of ended jobs that nobody waits on, so the synchronisation objects a live job
needs (lock, prompt queue, watchers' waiters) are made on first use.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from ironclaw_contract.agent_catalog import AgentEntry
from orchestrator.domain.jobs import (
    HISTORY_MAX_BYTES,
    NO_TOOLS,
    FollowUpPrompt,
    GitSource,
    GrantedTools,
    JobLimits,
    JobMode,
    JobResult,
    JobSnapshot,
    JobState,
    JobUpdate,
    LlmUsage,
    UpdateKind,
)
from orchestrator.jobs.once_flag import OnceFlag
from orchestrator.jobs.update_history import UpdateHistory


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class JobRecord:
    """A job as the manager tracks it."""

    job_id: str
    order: int  # creation order, for stable pagination
    task: str
    mode: JobMode
    project_dir: str
    container_name: str
    created_at: datetime
    limits: JobLimits
    deadline: datetime
    labels: dict[str, str]
    credential_names: tuple[str, ...]
    llm_provider: str
    wait_for_prompts: bool
    history_limit: int
    history_max_bytes: int = HISTORY_MAX_BYTES  # JOB_HISTORY_MAX_MB
    tools: GrantedTools = NO_TOOLS  # shared: most jobs have none
    egress_hosts: tuple[str, ...] | None = None  # the job's own egress list; None: operator's
    git: GitSource | None = None  # where its workspace is cloned from, if it is
    agent: AgentEntry | None = None  # agent mode: the catalogue entry, as at creation
    state: JobState = JobState.CREATING
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: JobResult | None = None
    status_message: str = ""
    iteration: int = 0
    usage: LlmUsage = field(default_factory=LlmUsage)
    log_tail: str = ""
    container_id: str | None = None
    # The warm-pool slot whose container the job claimed (jobs/warm_pool.py): its container
    # and isolated network are named after the slot, not the job.
    warm_slot: str | None = None
    # Set while a warm slot's claim waits for the job's first call (never persisted).
    claim_answered: asyncio.Event | None = field(default=None, repr=False)
    # The code (a Refusal) of the last LLM call the job's policy refused: types a later failure
    # and tells the agent why (GET /job's llm_refusal).
    budget_refused: str | None = None
    # The ledger's reservations for LLM calls in flight (never persisted: a restart ends them).
    reserved_calls: int = 0
    reserved_tokens: int = 0
    sequence: int = 0
    history: UpdateHistory = field(init=False, repr=False)
    torn_down: OnceFlag = field(default_factory=OnceFlag, repr=False)
    _prompts: deque[FollowUpPrompt] | None = field(default=None, init=False, repr=False)
    _lifecycle_lock: asyncio.Lock | None = field(default=None, init=False, repr=False)
    _waiters: list[asyncio.Future[None]] | None = field(default=None, init=False, repr=False)
    # Updates numbered but not yet shown to watchers: the end of a job is announced only once
    # it is durable (see hold_updates).
    _held: list[JobUpdate] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.history = UpdateHistory(self.history_limit, self.history_max_bytes)

    @property
    def network_key(self) -> str:
        """The id the job's isolated network and relay are named after."""
        return self.warm_slot or self.job_id

    @property
    def prompts(self) -> deque[FollowUpPrompt]:
        """Follow-up prompts queued for the job's agent."""
        if self._prompts is None:
            self._prompts = deque()
        return self._prompts

    @property
    def lifecycle_lock(self) -> asyncio.Lock:
        """Serializes container lifecycle work (create/start vs. stop/teardown) for this job."""
        if self._lifecycle_lock is None:
            self._lifecycle_lock = asyncio.Lock()
        return self._lifecycle_lock

    def publish(self, kind: UpdateKind, payload: dict[str, Any]) -> JobUpdate:
        """Numbers one update; appends it and wakes every watcher unless updates are held."""
        self.sequence += 1
        update = JobUpdate(sequence=self.sequence, time=utcnow(), kind=kind, payload=payload)
        if self._held is not None:
            self._held.append(update)
        else:
            self.history.append(update)
            self._wake()
        return update

    def hold_updates(self) -> None:
        """From now on, updates are numbered (and can be stored) but watchers see none of
        them until :meth:`release_updates`: the job's end is told once it is on disk."""
        if self._held is None:
            self._held = []

    def release_updates(self) -> None:
        """Shows the held updates, in order, and wakes every watcher."""
        held, self._held = self._held, None
        if held:
            self.history.extend(held)
            self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        if waiters:
            # Each watcher brings its own future and registers it again after waking: no lost
            # wake-ups, no per-watcher queues, and nothing to clean up behind the woken ones.
            self._waiters = None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def wake_on_change(self, waiter: asyncio.Future[None]) -> None:
        """Resolves ``waiter`` at the next :meth:`publish`. Register it before reading the
        history, then await it; :meth:`forget_waiter` if it is given up."""
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)

    def forget_waiter(self, waiter: asyncio.Future[None]) -> None:
        """Drops a waiter that will not be awaited (its watcher stopped)."""
        if self._waiters and waiter in self._waiters:
            self._waiters.remove(waiter)

    def updates_after(self, sequence: int) -> list[JobUpdate]:
        """Retained updates with a larger sequence number, oldest first."""
        return self.history.after(sequence)

    def snapshot(self) -> JobSnapshot:
        return JobSnapshot(
            job_id=self.job_id,
            task=self.task,
            mode=self.mode,
            state=self.state,
            project_dir=self.project_dir,
            container_name=self.container_name,
            created_at=self.created_at,
            limits=self.limits,
            deadline=self.deadline,
            labels=dict(self.labels),
            credential_names=self.credential_names,
            llm_provider=self.llm_provider,
            wait_for_prompts=self.wait_for_prompts,
            started_at=self.started_at,
            finished_at=self.finished_at,
            result=self.result,
            status_message=self.status_message,
            iteration=self.iteration,
            usage=replace(self.usage),
            log_tail=self.log_tail,
            last_sequence=self.sequence,
            mcp_servers=self.tools.mcp_server_names,
            wasm_tools=self.tools.wasm_tool_names,
            egress_hosts=self.egress_hosts,
            git=self.git,
            agent=self.agent,
        )
