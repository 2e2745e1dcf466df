"""Request and response models of the worker HTTP API. The same models validate requests and
produce the OpenAPI document, so the document says what the server really accepts; a test holds
them equal to the shapes of ``ironclaw_contract.worker_api``, which the agents read."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ironclaw_contract.worker_api import MAX_STATUS_CHARS, Refusal

MAX_TEXT = 1_000_000
EventType = Literal["message", "tool_use", "tool_result", "reasoning", "status"]


def _integral(value: Any) -> Any:
    # JSON Schema calls 212.0 an integer; strict pydantic would not. Booleans and strings stay
    # refused by the strict check that follows.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


NonNegativeInt = Annotated[int, Field(ge=0), BeforeValidator(_integral)]
TokenCount = Annotated[int, Field(ge=1, le=1_000_000), BeforeValidator(_integral)]


class _Strict(BaseModel):
    # Strict types: "7" is not an integer and "off" is not a boolean, as the document says.
    model_config = ConfigDict(extra="forbid", strict=True)


class ErrorBody(_Strict):
    error: str
    message: str
    # Left out when the error is not a refusal; never null.
    refusal: Refusal | None = Field(
        default=None,
        description="why a call the orchestrator understood was refused: act on this code, "
        "never on the message",
    )


class OkBody(_Strict):
    status: Literal["ok"] = "ok"


class WorkspacePushed(_Strict):
    """The answer to a pushed workspace (PUT workspace): kept, with its size and entries."""

    status: Literal["ok"] = "ok"
    bytes: int = Field(description="the archive's size as sent")
    entries: int = Field(description="files, directories and links in it")


class JobLimitsInfo(_Strict):
    """The job's effective limits (settings' defaults, overridden by ``CreateJob.limits``)."""

    max_iterations: int
    timeout_seconds: int
    memory_mb: int
    llm_token_budget: int = Field(description="0: unlimited")
    llm_call_budget: int = Field(description="0: unlimited")
    llm_max_tokens_per_call: int


class ClaudeInfo(_Strict):
    """How a Claude Code job's CLI runs; the bridge builds the CLI's environment from it."""

    model: str = Field(description="--model: an alias (sonnet) or a model id")
    max_turns: int = Field(description="--max-turns, per session")
    allowed_tools: list[str] = Field(description="--tools / --allowedTools (Bash, Read, ...)")
    model_aliases: dict[str, str] = Field(
        description="the CLI's aliases → model ids, as ANTHROPIC_DEFAULT_<ALIAS>_MODEL"
    )
    base_url: str | None = Field(
        description="ANTHROPIC_BASE_URL: the job's Anthropic route (or, opted in, the upstream; "
        "null: Anthropic's)"
    )
    # Secrets: never in a repr.
    api_key: str | None = Field(
        repr=False,
        description="ANTHROPIC_API_KEY when opted in: the operator's key; null otherwise, "
        "when the bridge derives the job's LLM key from its token",
    )
    oauth_token: str | None = Field(
        repr=False, description="CLAUDE_CODE_OAUTH_TOKEN: only when opted in, without an API key"
    )
    idle_timeout_s: float = Field(description="a job that waits for prompts ends this idle")


class EgressInfo(_Strict):
    """How the job's commands reach the internet: the egress gateway, only."""

    proxy_url: str = Field(description="http://host:port; credentials: job id and egress key")
    no_proxy: str = Field(description="NO_PROXY: the worker API, reached directly")
    allow_hosts: list[str] = Field(description="the hosts the gateway lets this job reach")
    ca_pem: str | None = Field(description="the gateway's CA, when it terminates TLS for the job")


class GitInfo(_Strict):
    """Where the job's workspace is cloned from, before its agent starts."""

    url: str
    ref: str = Field(description="branch, tag or commit; empty: the remote's default branch")


class WorkspaceSyncInfo(_Strict):
    """How a job whose /workspace is a volume of its own gets its tree and gives it back."""

    fetch: bool = Field(description="GET workspace into /workspace before the agent starts")
    max_bytes: int = Field(description="files' bytes fetched / bytes pushed, at most")


class AgentInfo(_Strict):
    """How an agent job's command runs (``ironclaw_contract.agent_catalog``)."""

    name: str = Field(description="the catalogue entry the job was created with")
    command: list[str] = Field(description="argv; {task} and {model} are replaced")
    api: Literal["anthropic", "openai"]
    key_env: list[str] = Field(description="variables that receive the job's LLM key")
    base_url_env: list[str] = Field(description="variables that receive base_url")
    base_url: str = Field(description="the job's route for the API the agent speaks")
    model: str
    model_env: list[str] = Field(description="variables that receive the model")
    env: dict[str, str] = Field(description="the entry's settings (never secrets)")


class OpenAIInfo(_Strict):
    """The job's OpenAI-compatible endpoint (``/worker/{id}/openai/v1``)."""

    base_url: str = Field(description="OPENAI_BASE_URL; the key: the job's token or LLM key")
    models: list[str] = Field(description="the models the job may name")


class JobInfo(_Strict):
    """Everything about the job but its identity: the one channel of its configuration."""

    job_id: str
    task_description: str
    project_dir: str
    mode: Literal["worker", "claude-code", "agent"]
    max_iterations: int
    deadline: str | None = Field(description="ISO 8601, UTC")
    wait_for_prompts: bool
    credential_env: dict[str, str] = Field(
        description="grant name → env var name the tools should see"
    )
    limits: JobLimitsInfo
    claude: ClaudeInfo | None = Field(description="null for worker jobs")
    mcp_servers: list[str] = Field(description="granted MCP servers (GET /tools has them)")
    wasm_tools: list[str] = Field(description="granted WASM tools (GET /tools has them)")
    llm_refusal: Refusal | None = Field(
        description="the code of the job's last LLM refusal (it stays once set), or null"
    )
    egress: EgressInfo | None = Field(
        description="null when the job's network goes out directly (bridge)"
    )
    git: GitInfo | None = Field(
        description="clone this into project_dir (empty) before the agent starts; null: the "
        "workspace is there already",
    )
    workspace_sync: WorkspaceSyncInfo | None = Field(
        description="null: /workspace is the orchestrator's project directory, mounted; "
        "otherwise fetch it at start and push it (PUT workspace) before /complete",
    )
    agent: AgentInfo | None = Field(description="null but for agent jobs")
    openai: OpenAIInfo | None = Field(
        description="null when no OpenAI-compatible provider is configured"
    )


class McpServerInfo(_Strict):
    """An MCP server granted to the job (the catalogue entry, no secrets in it)."""

    name: str
    type: Literal["stdio", "http"]
    command: str | None = None
    args: list[str] | None = None
    env: dict[str, str] | None = Field(
        default=None, description="values may hold ${credential:<grant>} references"
    )
    url: str | None = None
    headers: dict[str, str] | None = Field(
        default=None, description="values may hold ${credential:<grant>} references"
    )
    startup_timeout_s: float
    call_timeout_s: float
    description: str | None = None


class WasmLimitsInfo(_Strict):
    fuel: int
    memory_mb: int
    timeout_s: float
    max_output_bytes: int


class WasmToolInfo(_Strict):
    """A WASM tool granted to the job, with its module (binary or WAT text), base64."""

    name: str
    description: str
    parameters: dict[str, Any]
    workspace: Literal["none", "read-only", "read-write"]
    limits: WasmLimitsInfo
    module_base64: str


class ToolsInfo(_Strict):
    mcp_servers: list[McpServerInfo]
    wasm_tools: list[WasmToolInfo]
    unavailable: list[str] = Field(
        default_factory=list, description="granted tools that cannot be served, and why"
    )


class ToolCallModel(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=256)
    arguments: dict[str, Any] = Field(default_factory=dict)


class _MessageBase(BaseModel):
    # Provider-specific extras (e.g. "reasoning") are allowed and passed through untouched.
    model_config = ConfigDict(extra="allow", strict=True)
    content: str | None = Field(default=None, max_length=MAX_TEXT)


class ChatMessageModel(_MessageBase):
    role: Literal["system", "user", "assistant"]
    tool_calls: list[ToolCallModel] | None = None
    tool_call_id: str | None = Field(default=None, max_length=256)


class ToolMessageModel(_MessageBase):
    """A tool result; it must name the call it answers."""

    role: Literal["tool"]
    tool_call_id: str = Field(min_length=1, max_length=256)


LlmMessage = Annotated[ChatMessageModel | ToolMessageModel, Field(discriminator="role")]


class ToolModel(_Strict):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_\-]+$")
    description: str = Field(default="", max_length=10_000)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})


class CompleteRequest(_Strict):
    messages: list[LlmMessage] = Field(min_length=1, max_length=10_000)
    max_tokens: TokenCount | None = None
    model: str | None = Field(default=None, min_length=1, max_length=128)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    stop_sequences: list[str] | None = Field(default=None, max_length=16)


class NamedToolChoice(_Strict):
    name: str = Field(min_length=1, max_length=128)
    type: Literal["tool"] | None = None


class CompleteWithToolsRequest(CompleteRequest):
    tools: list[ToolModel] = Field(default_factory=list, max_length=256)
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None


class CompletionBody(_Strict):
    content: str | None
    finish_reason: Literal["stop", "length", "tool_use", "content_filter"]
    input_tokens: int
    output_tokens: int


class ToolCompletionBody(CompletionBody):
    # Provider extras that must round-trip (e.g. "reasoning") come back beside the fields.
    model_config = ConfigDict(extra="allow", strict=True)
    tool_calls: list[ToolCallModel]


class StatusRequest(_Strict):
    message: str = Field(max_length=MAX_STATUS_CHARS)
    iteration: NonNegativeInt | None = None
    state: str | None = Field(default=None, max_length=64)


class EventRequest(_Strict):
    event_type: EventType
    data: dict[str, Any]


class PromptBody(_Strict):
    content: str
    done: bool


class JobCompleteRequest(_Strict):
    success: bool
    message: str = Field(default="", max_length=MAX_TEXT)
    iterations: NonNegativeInt | None = None
    details: dict[str, Any] | None = None


class HealthBody(_Strict):
    status: Literal["ok"] = "ok"


class WarmClaimBody(_Strict):
    """A warm-pool slot's claim: the job it now runs and that job's token."""

    job_id: str
    token: str
