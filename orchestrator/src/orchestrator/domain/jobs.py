"""Domain types of a job.

Protobuf stops at the gRPC servicer; HTTP models stop at the worker API.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ironclaw_contract.agent_catalog import AgentEntry
from orchestrator.secrets import Secret

# How many bytes of a job's history (its events and status lines) are kept, in memory and in the
# store, unless JOB_HISTORY_MAX_MB says otherwise; state changes and the result always are.
HISTORY_MAX_BYTES = 4 * 1024 * 1024


class JobState(enum.Enum):
    """Where a job is in its life: Creating → Running → Stopped | Failed."""

    CREATING = "Creating"
    RUNNING = "Running"
    STOPPED = "Stopped"
    FAILED = "Failed"

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.STOPPED, JobState.FAILED)


class JobMode(enum.Enum):
    """Which agent runs in the job's container."""

    WORKER = "worker"
    CLAUDE_CODE = "claude-code"
    # An agent of the operator's catalogue (<IRONCLAW_BASE_DIR>/agents.json), by name.
    AGENT = "agent"

    @property
    def container_prefix(self) -> str:
        return {"worker": "worker", "claude-code": "claude", "agent": "agent"}[self.value]

    @property
    def meters_own_route(self) -> bool:
        """Whether the job's agent calls a provider API route of its own with the job's LLM
        key (Claude Code, catalogue agents), rather than the worker's ``llm/complete``."""
        return self is not JobMode.WORKER


class TerminalReason(enum.Enum):
    """Why a job ended; every terminal job carries exactly one."""

    COMPLETED = "COMPLETED"
    STOPPED_BY_OPERATOR = "STOPPED_BY_OPERATOR"
    FAILED = "FAILED"
    EXITED = "EXITED"
    OOM_KILLED = "OOM_KILLED"
    TIMED_OUT = "TIMED_OUT"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    START_FAILED = "START_FAILED"
    CONTAINER_LOST = "CONTAINER_LOST"
    CREDENTIALS_LOST = "CREDENTIALS_LOST"
    NODE_LOST = "NODE_LOST"  # the cluster node running the job went down

    @property
    def terminal_state(self) -> JobState:
        """The state a job with this reason ends in."""
        if self in (TerminalReason.COMPLETED, TerminalReason.STOPPED_BY_OPERATOR):
            return JobState.STOPPED
        return JobState.FAILED


class InjectFormat(enum.Enum):
    """How the egress gateway writes an injected credential into its header."""

    BEARER = "bearer"  # Bearer <value>
    TOKEN = "token"  # noqa: S105 - token <value> (GitHub's REST API), a format name
    BASIC = "basic"  # HTTP Basic, the value as the password (git over HTTPS)
    RAW = "raw"  # the value as it is (X-Api-Key and the like)


@dataclass(frozen=True)
class GitSource:
    """A workspace cloned from git by the job's container before its agent starts.
    ``credential``: the grant injected for the URL's host, by name ("" when none is named)."""

    url: str
    ref: str = ""
    credential: str = ""


@dataclass(frozen=True)
class CredentialGrant:
    """A secret handed to one job, exposed to its tools as ``env_name``.

    With ``inject_hosts`` the value never enters the container: the tools get ``placeholder``
    (same shape, chosen at admission, kept with the sealed grant), and the egress gateway puts
    the value into ``inject_header`` of requests to those hosts (orchestrator/egress/inject.py).
    """

    name: str
    credential_type: str
    value: Secret
    env_name: str
    inject_hosts: tuple[str, ...] = ()
    inject_header: str = ""
    inject_format: InjectFormat = InjectFormat.BEARER
    placeholder: str = ""

    @property
    def injected(self) -> bool:
        return bool(self.inject_hosts)

    @property
    def container_value(self) -> str:
        """What the job's container holds: the placeholder of an injected grant, else the value."""
        return self.placeholder if self.injected else self.value.reveal()


@dataclass(frozen=True)
class JobLimits:
    """Effective limits of a job (defaults from settings, overridden per job)."""

    max_iterations: int
    timeout_seconds: int
    memory_mb: int
    llm_token_budget: int  # 0 = unlimited
    llm_call_budget: int  # 0 = unlimited
    llm_max_tokens_per_call: int
    claude_max_turns: int
    claude_model: str


@dataclass(frozen=True)
class JobLimitOverrides:
    """What a caller asked to override; ``None`` keeps the default."""

    max_iterations: int | None = None
    timeout_seconds: int | None = None
    memory_mb: int | None = None
    llm_token_budget: int | None = None
    llm_call_budget: int | None = None
    llm_max_tokens_per_call: int | None = None
    claude_max_turns: int | None = None
    claude_model: str | None = None


@dataclass(frozen=True)
class GrantedTools:
    """The custom tools a job was granted from the operator's catalogues, as the worker API
    serves them: MCP server entries (no secrets: credentials are referenced by grant name) and
    WASM tool manifests with the SHA-256 of the module granted."""

    mcp_servers: tuple[Mapping[str, Any], ...] = ()
    wasm_tools: tuple[Mapping[str, Any], ...] = ()

    # Cached: every snapshot (a page of ListJobs makes 100) reads them.
    @functools.cached_property
    def mcp_server_names(self) -> tuple[str, ...]:
        return tuple(str(entry["name"]) for entry in self.mcp_servers)

    @functools.cached_property
    def wasm_tool_names(self) -> tuple[str, ...]:
        return tuple(str(tool["name"]) for tool in self.wasm_tools)


NO_TOOLS = GrantedTools()


@dataclass(frozen=True)
class CreateJobRequest:
    """A validated-shape request to create a job (values are checked by the manager)."""

    task: str
    mode: JobMode = JobMode.WORKER
    project_dir: str | None = None
    credentials: tuple[CredentialGrant, ...] = ()
    limits: JobLimitOverrides = field(default_factory=JobLimitOverrides)
    labels: Mapping[str, str] = field(default_factory=dict)
    job_id: str | None = None
    wait_for_prompts: bool = False
    mcp_servers: tuple[str, ...] = ()
    wasm_tools: tuple[str, ...] = ()
    # The job's own egress allowlist; None: the operator's (EGRESS_ALLOW_HOSTS).
    egress_hosts: tuple[str, ...] | None = None
    git: GitSource | None = None
    # Node labels the job's node must carry (CONTAINER_BACKEND=swarm or kubernetes).
    placement_node_labels: Mapping[str, str] = field(default_factory=dict)
    # Agent mode: the name of the catalogue entry to run.
    agent: str = ""


@dataclass(frozen=True)
class LlmUsage:
    """LLM usage accumulated by one job."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def plus(self, input_tokens: int, output_tokens: int, calls: int = 1) -> LlmUsage:
        return LlmUsage(
            calls=self.calls + calls,
            input_tokens=self.input_tokens + input_tokens,
            output_tokens=self.output_tokens + output_tokens,
        )


@dataclass(frozen=True)
class JobResult:
    """The one terminal result of a job."""

    success: bool
    reason: TerminalReason
    message: str
    finished_at: datetime
    iterations: int = 0
    exit_code: int | None = None
    details: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class JobSnapshot:
    """A consistent, immutable view of a job at one moment."""

    job_id: str
    task: str
    mode: JobMode
    state: JobState
    project_dir: str
    container_name: str
    created_at: datetime
    limits: JobLimits
    deadline: datetime
    labels: Mapping[str, str]
    credential_names: tuple[str, ...]
    llm_provider: str
    wait_for_prompts: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: JobResult | None = None
    status_message: str = ""
    iteration: int = 0
    usage: LlmUsage = field(default_factory=LlmUsage)
    log_tail: str = ""
    last_sequence: int = 0
    mcp_servers: tuple[str, ...] = ()
    wasm_tools: tuple[str, ...] = ()
    egress_hosts: tuple[str, ...] | None = None
    git: GitSource | None = None
    # Agent mode: the catalogue entry as it was when the job was created.
    agent: AgentEntry | None = None


class UpdateKind(enum.Enum):
    """What one item of a job's update stream carries."""

    STATE = "state"
    STATUS = "status"
    EVENT = "event"
    RESULT = "result"
    USAGE = "usage"


@dataclass(frozen=True)
class JobUpdate:
    """One item of a job's ordered history (what ``WatchJob`` streams after the snapshot).

    ``payload`` by kind: STATE ``{"state": JobState, "reason": str}``; STATUS ``{"message",
    "iteration"}``; EVENT ``{"event_type", "data"}``; RESULT ``{"result": JobResult}``;
    USAGE ``{"usage": LlmUsage}``.
    """

    sequence: int
    time: datetime
    kind: UpdateKind
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class FollowUpPrompt:
    """A follow-up for the job's agent; ``done`` means no more will come."""

    content: str
    done: bool = False
