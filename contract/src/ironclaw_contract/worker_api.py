"""The worker HTTP API as both sides see it: paths, the JSON shapes, the bounds, the codes.

The orchestrator serves these routes (and validates their bodies with pydantic models that a
test holds equal to the shapes here); the worker and the bridge call them. Every refusal that
the caller must act on carries a machine-readable ``refusal`` code in the error body, so no side
ever matches the other's English.
"""

from __future__ import annotations

import enum
from typing import Final, Literal, TypedDict

# ---- paths --------------------------------------------------------------------------------

HEALTH: Final = "/health"
OPENAPI: Final = "/openapi.json"
JOB_PREFIX: Final = "/worker/{job_id}"

JOB: Final = "job"
CREDENTIALS: Final = "credentials"
TOOLS: Final = "tools"
STATUS: Final = "status"
EVENT: Final = "event"
PROMPT: Final = "prompt"
COMPLETE: Final = "complete"
LLM_COMPLETE: Final = "llm/complete"
LLM_COMPLETE_WITH_TOOLS: Final = "llm/complete_with_tools"
# The Anthropic Messages API of a Claude Code job (the CLI's ANTHROPIC_BASE_URL).
ANTHROPIC: Final = "anthropic"
ANTHROPIC_MESSAGES: Final = "anthropic/v1/messages"
ANTHROPIC_COUNT_TOKENS: Final = "anthropic/v1/messages/count_tokens"
# The OpenAI-compatible API of any job (an OpenAI client's base URL is the job's OPENAI route),
# opened by the job's worker token or its LLM key as the API key.
OPENAI: Final = "openai/v1"
OPENAI_CHAT_COMPLETIONS: Final = "openai/v1/chat/completions"
OPENAI_RESPONSES: Final = "openai/v1/responses"
OPENAI_MODELS: Final = "openai/v1/models"
# The job's workspace on a backend without shared host paths (``JobInfo.workspace_sync``):
# GET streams the tree the job starts with as a .tar.gz (gzip, ``WORKSPACE_MEDIA_TYPE``); PUT
# takes the job's ``/workspace`` back as a .tar.gz, before ``/complete`` (the token dies with the
# job), at most ``WorkspaceSyncInfo.max_bytes`` as sent; it is what DownloadWorkspace serves.
WORKSPACE: Final = "workspace"
WORKSPACE_MEDIA_TYPE: Final = "application/gzip"


# A warm-pool slot's claim channel (bearer: the slot's secret): a long poll answered with the
# claim ``{"job_id", "token"}`` once a job claims the slot, 204 when nothing came within
# ``WARM_CLAIM_POLL_S`` (poll again), 401 when the slot is unknown or retired (exit).
WARM_CLAIM: Final = "/warm/{slot_id}/claim"
WARM_CLAIM_POLL_S: Final = 20.0


def warm_claim_route(slot_id: str) -> str:
    """The claim channel of one warm-pool slot."""
    return f"/warm/{slot_id}/claim"


def job_route(job_id: str, route: str) -> str:
    """The path of one of a job's routes: ``job_route(id, STATUS)`` → ``/worker/<id>/status``."""
    return f"/worker/{job_id}/{route}"


# ---- bounds both sides apply (the client before sending, the server on receipt) -----------

MAX_STATUS_CHARS: Final = 10_000
MAX_EVENT_STRING_CHARS: Final = 16_000
# The whole event (its JSON), and the details of /complete: bytes, not only string lengths.
MAX_EVENT_JSON_BYTES: Final = 64_000
MAX_COMPLETE_DETAILS_BYTES: Final = 64_000
MAX_COMPLETE_MESSAGE_CHARS: Final = 64_000
MAX_JSON_DEPTH: Final = 64
# Status and event bodies, and complete bodies: what a client that keeps the bounds above sends
# is well under these; the server refuses a larger one (413) without reading it.
MAX_REPORT_BODY_BYTES: Final = 256 * 1024
MAX_COMPLETE_BODY_BYTES: Final = 1 << 20

EventType = Literal["message", "tool_use", "tool_result", "reasoning", "status"]
EVENT_TYPES: Final = ("message", "tool_use", "tool_result", "reasoning", "status")

# ---- errors -------------------------------------------------------------------------------


class Refusal(enum.StrEnum):
    """Why the orchestrator refused a call it understood: the ``refusal`` field of an error
    body (and, for LLM calls, of ``GET /job``'s ``llm_refusal`` once one happened)."""

    CALL_BUDGET = "call_budget_exhausted"
    TOKEN_BUDGET = "token_budget_exhausted"  # noqa: S105 - a code, not a secret
    MODEL_NOT_ALLOWED = "model_not_allowed"
    # Too many status lines or events in a short time: wait (Retry-After) and send again.
    RATE_LIMITED = "rate_limited"


# Refusals that end an agent's work: it cannot make another model call.
LLM_REFUSALS: Final = frozenset(
    {Refusal.CALL_BUDGET, Refusal.TOKEN_BUDGET, Refusal.MODEL_NOT_ALLOWED}
)


class _ErrorBodyFields(TypedDict):
    error: str
    message: str


# total=False rather than NotRequired: under postponed annotations Python 3.11 counts a
# NotRequired key as required.
class ErrorBody(_ErrorBodyFields, total=False):
    """Every error answer: ``{"error": <code>, "message": <for a person>, "refusal"?}``;
    ``refusal`` (a :class:`Refusal` value) only when the error is a refusal."""

    refusal: str


class FailureReason(enum.StrEnum):
    """``details.reason`` of a failed ``/complete``: how the agent says why it gave up. The
    orchestrator types the job's end from it (``budget_exceeded`` → BUDGET_EXCEEDED,
    ``deadline`` → TIMED_OUT, anything else → FAILED)."""

    BUDGET_EXCEEDED = "budget_exceeded"
    DEADLINE = "deadline"
    MAX_ITERATIONS = "max_iterations"
    MAX_TURNS = "max_turns"
    TOKEN_REJECTED = "token_rejected"  # noqa: S105 - a code, not a secret
    ORCHESTRATOR_UNREACHABLE = "orchestrator_unreachable"
    CLAUDE_ERROR = "claude_error"
    CLAUDE_EXIT = "claude_exit"
    INVALID_CONFIG = "invalid_config"
    CRASH = "crash"


# ---- GET /job: everything about the job but its identity ---------------------------------
# A job container is started with its identity only (``container_env``); everything else about
# the job comes from here, read once when the agent starts.


class JobLimitsInfo(TypedDict):
    """The job's effective limits (the settings' defaults, overridden by ``CreateJob.limits``)."""

    max_iterations: int
    timeout_seconds: int
    memory_mb: int
    llm_token_budget: int  # 0: unlimited
    llm_call_budget: int  # 0: unlimited
    llm_max_tokens_per_call: int


class ClaudeInfo(TypedDict):
    """How a Claude Code job's CLI runs: its flags, and the Anthropic endpoint it talks to.

    The bridge builds the CLI's environment from it (``ANTHROPIC_BASE_URL``,
    ``ANTHROPIC_API_KEY`` or ``CLAUDE_CODE_OAUTH_TOKEN``, ``ANTHROPIC_DEFAULT_<ALIAS>_MODEL``);
    the worker token never enters that environment.
    """

    model: str  # --model: an alias (sonnet) or a model id
    max_turns: int  # --max-turns, per session
    allowed_tools: list[str]  # --tools / --allowedTools, the CLI's names (Bash, Read, ...)
    # The CLI's own aliases (sonnet, opus, haiku) → the model id each stands for, exported as
    # ANTHROPIC_DEFAULT_<ALIAS>_MODEL so the CLI sends the ids the orchestrator allows.
    model_aliases: dict[str, str]
    # ANTHROPIC_BASE_URL of the CLI: the job's own Anthropic route on the worker API; when the
    # operator opted into the key in the container, the upstream's (None: Anthropic's).
    base_url: str | None
    # ANTHROPIC_API_KEY of the CLI when the operator opted into the key in the container: its
    # API key. Otherwise None: the CLI gets the job's LLM key, which the bridge derives from
    # its worker token (ironclaw_contract.job_keys) and which opens only the job's route.
    api_key: str | None
    # CLAUDE_CODE_OAUTH_TOKEN of the CLI: only when opted in and no API key is configured.
    oauth_token: str | None
    # A job that waits for prompts ends after this long without one.
    idle_timeout_s: float


class EgressInfo(TypedDict):
    """How a job's commands reach the internet (``ironclaw_contract.egress``): only through the
    orchestrator's egress gateway, which allows the hosts of the job's policy and nothing else."""

    # http://host:port of the gateway as the container reaches it; the credentials (job id and
    # the egress key, ironclaw_contract.job_keys) are added by the worker or bridge.
    proxy_url: str
    # NO_PROXY: the worker API is reached directly, never through the gateway.
    no_proxy: str
    # The hosts (with ports) the gateway lets this job reach, for the agent's own information.
    allow_hosts: list[str]
    # PEM of the CA the gateway signs with for hosts it injects credentials into; None when it
    # injects into none of this job's hosts.
    ca_pem: str | None


class GitInfo(TypedDict):
    """Where a job's workspace is cloned from (``JobInfo.git``)."""

    url: str
    ref: str  # a branch, tag or commit; "": the remote's default branch


class AgentInfo(TypedDict):
    """How an agent job's command runs (``ironclaw_contract.agent_catalog``): the catalogue
    entry the job was created with, and the URL of the job's route for the API it speaks.

    ``ironclaw-agent-run`` renders ``command`` with the task and ``model``, and gives it
    ``key_env`` = the job's LLM key (derived from its worker token, ``job_keys``),
    ``base_url_env`` = ``base_url``, ``model_env`` = ``model`` and ``env``.
    """

    name: str
    command: list[str]
    api: str  # "anthropic" | "openai"
    key_env: list[str]
    base_url_env: list[str]
    base_url: str
    model: str
    model_env: list[str]
    env: dict[str, str]


class OpenAIInfo(TypedDict):
    """The job's OpenAI-compatible endpoint, for an agent that speaks OpenAI's API: its base
    URL (``OPENAI_BASE_URL``) and the models it may name. The API key is the job's worker token
    or, for a process that must not hold the token, the job's LLM key
    (``ironclaw_contract.job_keys.llm_key_for``)."""

    base_url: str
    models: list[str]


class WorkspaceSyncInfo(TypedDict):
    """How a job whose ``/workspace`` is a volume of its own (a cluster node's, not the
    orchestrator's directory) gets its tree and gives it back (``JobInfo.workspace_sync``)."""

    # GET WORKSPACE into the empty /workspace before the agent starts (False: a git clone
    # fills it instead).
    fetch: bool
    # The bound of both archives: the files' bytes of the fetched one, the bytes sent of the
    # pushed one (larger: 413).
    max_bytes: int


class JobInfo(TypedDict):
    """``GET /worker/{job_id}/job``: the one channel of a job's configuration."""

    job_id: str
    task_description: str
    project_dir: str
    mode: Literal["worker", "claude-code", "agent"]
    max_iterations: int
    deadline: str | None  # ISO 8601, UTC
    wait_for_prompts: bool
    # grant name → the env name the tools see it under (the values: GET /credentials).
    credential_env: dict[str, str]
    limits: JobLimitsInfo
    claude: ClaudeInfo | None  # None for worker jobs
    # The custom tools granted to the job, by name (their definitions: GET /tools).
    mcp_servers: list[str]
    wasm_tools: list[str]
    # The code of the job's last LLM refusal (one of LLM_REFUSALS), or None. It stays once
    # set: an agent whose model calls stopped working learns here why.
    llm_refusal: str | None
    # None when the job's network is the host's bridge (its commands go out directly).
    egress: EgressInfo | None
    # Clone this into the (empty) workspace before the agent starts; None: it is there already.
    git: GitInfo | None
    # None: /workspace is the orchestrator's project directory, mounted; nothing to move.
    workspace_sync: WorkspaceSyncInfo | None
    agent: AgentInfo | None  # None but for agent jobs
    # None when no OpenAI-compatible provider is configured on the orchestrator.
    openai: OpenAIInfo | None
