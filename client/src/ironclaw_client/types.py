"""What the client hands out: frozen dataclasses and enums, no protobuf. Each value keeps the
message it was made from in ``proto`` (not compared, not in ``repr``) for callers that want the
wire form, e.g. to print it as JSON."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias


class JobState(enum.Enum):
    """Creating → Running → Stopped or Failed."""

    UNSPECIFIED = "unspecified"
    CREATING = "creating"
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.STOPPED, JobState.FAILED)


class JobMode(enum.Enum):
    """Which agent runs in the job's container."""

    WORKER = "worker"
    CLAUDE_CODE = "claude-code"
    AGENT = "agent"  # an agent of the operator's catalogue, by name


class TerminalReason(enum.Enum):
    """Why a job ended; every terminal job carries exactly one."""

    UNSPECIFIED = "unspecified"
    COMPLETED = "completed"
    STOPPED_BY_OPERATOR = "stopped_by_operator"
    FAILED = "failed"
    EXITED = "exited"
    OOM_KILLED = "oom_killed"
    TIMED_OUT = "timed_out"
    BUDGET_EXCEEDED = "budget_exceeded"
    START_FAILED = "start_failed"
    CONTAINER_LOST = "container_lost"
    CREDENTIALS_LOST = "credentials_lost"
    NODE_LOST = "node_lost"


@dataclass(frozen=True)
class CredentialGrant:
    """A secret handed to one job; served only to its token, never returned by the API."""

    name: str
    value: str = field(repr=False)
    credential_type: str = "api_token"
    env_name: str = ""  # default on the server: <NAME>_TOKEN
    # Egress allowlist entries the value is injected into by the egress gateway; the job's
    # container then holds a placeholder, never the value.
    inject_hosts: tuple[str, ...] = ()
    inject_header: str = ""  # default on the server: Authorization
    inject_format: str = ""  # bearer (default), token, basic or raw


@dataclass(frozen=True)
class JobLimits:
    """Per-job overrides; zero (or empty) means the orchestrator's default."""

    max_iterations: int = 0
    timeout_seconds: int = 0
    memory_mb: int = 0
    llm_token_budget: int = 0
    llm_call_budget: int = 0
    llm_max_tokens_per_call: int = 0
    claude_max_turns: int = 0
    claude_model: str = ""


@dataclass(frozen=True)
class LlmUsage:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class JobResult:
    """A terminal job's one result."""

    success: bool
    reason: TerminalReason
    message: str
    iterations: int = 0
    exit_code: int = 0  # meaningful for EXITED / OOM_KILLED
    details: Mapping[str, Any] = field(default_factory=dict)
    finished_at: datetime | None = None
    proto: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Job:
    """A job as the orchestrator last described it."""

    job_id: str
    task: str
    mode: JobMode
    state: JobState
    project_dir: str = ""
    container_name: str = ""
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    deadline: datetime | None = None
    result: JobResult | None = None
    status_message: str = ""
    iteration: int = 0
    usage: LlmUsage = LlmUsage()
    labels: Mapping[str, str] = field(default_factory=dict)
    credential_names: tuple[str, ...] = ()
    llm_provider: str = ""
    log_tail: str = ""
    limits: JobLimits = JobLimits()
    last_sequence: int = 0
    mcp_servers: tuple[str, ...] = ()
    wasm_tools: tuple[str, ...] = ()
    agent: str = ""  # agent mode: the catalogue entry it runs
    proto: Any = field(default=None, repr=False, compare=False)

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal


@dataclass(frozen=True)
class CreatedJob:
    """What ``create_job`` returns: the job, and whether this id had already made it (a caller's
    second call with the same ``job_id``; the client's own retries never set it)."""

    job: Job
    already_existed: bool = False


@dataclass(frozen=True)
class GitWorkspace:
    """A workspace cloned from git by the job's container before its agent starts (instead
    of a ``project_dir``). ``credential`` names a grant of the job injected for the URL's host
    (``CredentialGrant.inject_hosts``, ``inject_format="basic"`` for git over HTTPS)."""

    url: str
    ref: str = ""
    credential: str = ""


@dataclass(frozen=True)
class UploadedWorkspace:
    """What ``upload_workspace`` returns: pass ``project_dir`` to ``create_job``."""

    workspace_id: str
    project_dir: str
    unpacked_bytes: int
    entries: int


# ---- WatchJob items: one class per kind, each with its sequence number and time -------------


@dataclass(frozen=True)
class Snapshot:
    """The first item of every stream: the job as it is."""

    sequence: int
    time: datetime | None
    job: Job
    proto: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class StateChanged:
    sequence: int
    time: datetime | None
    state: JobState
    reason: str
    proto: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class StatusUpdate:
    """A status line the agent reported (what a progress display shows)."""

    sequence: int
    time: datetime | None
    message: str
    iteration: int
    proto: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Event:
    """An agent event: ``message``, ``tool_use``, ``tool_result``, ``reasoning`` or ``status``
    (``data`` shapes in the README's worker API section), or ``egress``, recorded by the
    orchestrator's egress gateway for each connection attempt (README, "Egress gateway")."""

    sequence: int
    time: datetime | None
    event_type: str
    data: Mapping[str, Any]
    proto: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class UsageUpdate:
    sequence: int
    time: datetime | None
    usage: LlmUsage
    proto: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class ResultUpdate:
    """The terminal item: the stream ends after it."""

    sequence: int
    time: datetime | None
    result: JobResult
    proto: Any = field(default=None, repr=False, compare=False)


JobUpdate: TypeAlias = Snapshot | StateChanged | StatusUpdate | Event | UsageUpdate | ResultUpdate
