"""Admission: from a ``CreateJob`` request and the settings to a validated job, or one error.

A pure function of its inputs (the tool catalogue is passed in as the one function that reads
it), so every rule is unit-tested without a manager, an engine or a store. Every string a caller
sends is bounded in length and characters here, with an ``INVALID_ARGUMENT`` that names the
field; the project directory, which needs the file system, is checked by the manager next.
"""

from __future__ import annotations

import re
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ironclaw_contract.agent_catalog import AgentEntry
from orchestrator.domain.jobs import (
    NO_TOOLS,
    CreateJobRequest,
    CredentialGrant,
    GitSource,
    GrantedTools,
    JobLimitOverrides,
    JobLimits,
    JobMode,
)
from orchestrator.egress.policy import (
    EgressPolicy,
    HostRule,
    PolicyError,
    check_job_hosts,
    job_policy,
    normalize_host,
    parse_rules,
)
from orchestrator.errors import FailedPrecondition, InvalidArgument
from orchestrator.model_names import model_name_problem
from orchestrator.settings import Settings
from orchestrator.tokens import validate_grants

MAX_TASK_CHARS = 100_000
MAX_PROJECT_DIR_CHARS = 4096
MAX_LABELS = 32
MAX_LABEL_VALUE_CHARS = 256
LABEL_KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}")
TOOL_NAME_MAX_CHARS = 64
MAX_TOOLS_NAMED = 64
MAX_EGRESS_HOSTS = 256
MAX_EGRESS_HOST_CHARS = 262  # a 253-character name, a port
MAX_GIT_URL_CHARS = 2048
# A branch, tag or commit as `git checkout` takes it; never an option ("-..."), never "..".
GIT_REF_PATTERN = re.compile(r"(?!-)(?!.*\.\.)(?!.*\.lock$)(?!.*/$)[A-Za-z0-9._/+\-]{1,255}")
# Control characters other than tab and newline have no business in a task or a label: they
# hide text in terminals and logs, and a NUL ends strings in the engine's C code.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

# Reads the catalogue: (MCP names, WASM names, granted credential names) -> the granted tools.
GrantTools = Callable[[Iterable[str], Iterable[str], Iterable[str]], GrantedTools]
# Reads the agent catalogue: a name -> its entry (InvalidArgument listing the known names).
FindAgent = Callable[[str], AgentEntry]


@dataclass(frozen=True)
class AdmittedJob:
    """Everything about a new job that its request decides, validated."""

    job_id: str
    task: str
    mode: JobMode
    limits: JobLimits
    labels: dict[str, str]
    grants: tuple[CredentialGrant, ...]
    tools: GrantedTools
    project_dir: str | None
    wait_for_prompts: bool
    # Canonical entries of the job's own egress list; None: the operator's.
    egress_hosts: tuple[str, ...] | None = None
    git: GitSource | None = None
    # Placement constraints from the job's node labels (``node.labels.zone==a``).
    placement: tuple[str, ...] = ()
    agent: AgentEntry | None = None


def parse_job_id(raw: str) -> str:
    """Normalizes a job id; anything but a UUID is InvalidArgument."""
    try:
        return str(uuid.UUID(raw.strip()))
    except (ValueError, AttributeError):
        raise InvalidArgument(f"job id {raw[:64]!r} is not a UUID") from None


def admit(
    request: CreateJobRequest,
    settings: Settings,
    grant_tools: GrantTools,
    find_agent: FindAgent | None = None,
) -> AdmittedJob:
    """Validates ``request`` against ``settings``; raises InvalidArgument or
    FailedPrecondition naming what is wrong and, where there is one, the fix."""
    job_id = parse_job_id(request.job_id) if request.job_id else str(uuid.uuid4())
    task = check_text(request.task, "task", MAX_TASK_CHARS).strip()
    if not task:
        raise InvalidArgument("task is empty: say what the job should do")
    if request.mode is JobMode.CLAUDE_CODE and not settings.claude_auth_configured:
        raise FailedPrecondition(
            "Claude Code mode is not enabled: set ANTHROPIC_API_KEY or "
            "CLAUDE_CODE_OAUTH_TOKEN on the orchestrator"
        )
    agent = _agent(request, settings, find_agent)
    project_dir = None
    if request.project_dir:
        project_dir = check_text(request.project_dir, "project_dir", MAX_PROJECT_DIR_CHARS)
        if "\n" in project_dir or "\t" in project_dir:
            raise InvalidArgument("project_dir holds a line break or a tab")
    labels = validate_labels(request.labels)
    grants = validate_grants(request.credentials)
    egress_hosts = _egress_hosts(request.egress_hosts, settings)
    _check_inject_hosts(grants, egress_hosts, settings)
    git = _git_source(request, grants, egress_hosts, settings)
    placement = placement_constraints(request.placement_node_labels, settings)
    limits = effective_limits(settings, request.mode, request.limits, agent)
    if agent is not None and agent.api == "openai":
        _check_openai_model(agent, limits.claude_model, settings)
    return AdmittedJob(
        job_id=job_id,
        task=task,
        mode=request.mode,
        limits=limits,
        labels=labels,
        grants=grants,
        tools=_tools(request, grants, grant_tools),
        project_dir=project_dir,
        wait_for_prompts=request.wait_for_prompts,
        egress_hosts=egress_hosts,
        git=git,
        placement=placement,
        agent=agent,
    )


MAX_PLACEMENT_LABELS = 16
_NODE_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_NODE_LABEL_VALUE = re.compile(r"[A-Za-z0-9._:/@+-]{1,256}")
_K8S_NODE_LABEL_KEY = re.compile(
    r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)
_K8S_NODE_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")


def placement_constraints(node_labels: Mapping[str, str], settings: Settings) -> tuple[str, ...]:
    """A job's ``placement.node_labels`` as Swarm constraints; InvalidArgument for a label a
    constraint cannot carry, FailedPrecondition on a backend without nodes to choose."""
    if not node_labels:
        return ()
    if settings.container_backend not in ("swarm", "kubernetes"):
        raise FailedPrecondition(
            "placement.node_labels needs CONTAINER_BACKEND=swarm or kubernetes: this "
            "orchestrator runs jobs on one Docker host"
        )
    if len(node_labels) > MAX_PLACEMENT_LABELS:
        raise InvalidArgument(f"placement.node_labels: at most {MAX_PLACEMENT_LABELS} labels")
    for key, value in node_labels.items():
        kubernetes = settings.container_backend == "kubernetes"
        if kubernetes and _K8S_NODE_LABEL_KEY.fullmatch(key):
            pass  # a prefixed key (topology.kubernetes.io/zone) is a nodeSelector's
        elif not _NODE_LABEL_KEY.fullmatch(key):
            raise InvalidArgument(
                f"placement.node_labels: key {key[:64]!r} must be letters, digits, '.', '_' or "
                "'-' (max 128)"
            )
        if not _NODE_LABEL_VALUE.fullmatch(value):
            raise InvalidArgument(
                f"placement.node_labels[{key}]: value {value[:64]!r} must be 1-256 letters, "
                "digits or ._:/@+- (no spaces, no '=' or ',')"
            )
        if kubernetes and not _K8S_NODE_LABEL_VALUE.fullmatch(value):
            # A nodeSelector value is a Kubernetes label value: stricter than a constraint.
            raise InvalidArgument(
                f"placement.node_labels[{key}]: value {value[:64]!r} is not a Kubernetes label "
                "value (at most 63 letters, digits or '-_.', starting and ending alphanumeric)"
            )
    return tuple(f"node.labels.{key}=={value}" for key, value in sorted(node_labels.items()))


def _git_source(
    request: CreateJobRequest,
    grants: tuple[CredentialGrant, ...],
    egress_hosts: tuple[str, ...] | None,
    settings: Settings,
) -> GitSource | None:
    """The job's git workspace, checked: an https URL without user info (a token belongs in a
    grant, injected at egress), a ref that cannot pass for an option, a host the job may
    reach, and the named grant injected for that host."""
    git = request.git
    if git is None:
        return None
    if request.project_dir:
        raise InvalidArgument(
            "git and project_dir are exclusive: a git workspace is cloned into a new project"
        )
    url = check_text(git.url.strip(), "git.url", MAX_GIT_URL_CHARS)
    host, port = _git_host(url)
    ref = git.ref.strip()
    if ref and not GIT_REF_PATTERN.fullmatch(ref):
        raise InvalidArgument(
            f"git.ref {ref[:64]!r} is not a branch, tag or commit name (letters, digits, "
            "'.', '_', '/', '+', '-'; not starting with '-', no '..')"
        )
    if settings.job_network == "isolated":
        policy = job_policy(
            settings.egress_allow_hosts, egress_hosts, settings.egress_job_may_widen
        )
        if not policy.allows(host, port):
            where = "egress.allow_hosts" if egress_hosts is not None else "EGRESS_ALLOW_HOSTS"
            raise InvalidArgument(
                f"git.url: {host}:{port} is not reachable under this job's egress policy "
                f"({where}); the clone goes out through the egress gateway"
            )
    credential = git.credential.strip()
    if credential:
        grant = next((g for g in grants if g.name == credential), None)
        if grant is None:
            raise InvalidArgument(f"git.credential {credential[:64]!r} is not a granted credential")
        if not any(rule.matches(host, port) for rule in parse_rules(grant.inject_hosts)):
            raise InvalidArgument(
                f"git.credential {credential!r} is not injected for {host}:{port}: add the host "
                "to its inject_hosts (CREDENTIAL_INJECT_FORMAT_BASIC for git over HTTPS)"
            )
    return GitSource(url=url, ref=ref, credential=credential)


def _git_host(url: str) -> tuple[str, int]:
    """The canonical host and port of an acceptable git URL; InvalidArgument otherwise."""
    if any(ch.isspace() for ch in url):
        raise InvalidArgument("git.url holds whitespace")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or 443
    except ValueError as exc:
        raise InvalidArgument(f"git.url is not a URL ({exc})") from None
    if parts.scheme != "https":
        raise InvalidArgument("git.url must be an https:// URL")
    if "@" in parts.netloc:
        raise InvalidArgument(
            "git.url must not carry user info: grant the token as a credential injected for "
            "the host (inject_hosts) and name it in git.credential"
        )
    if not parts.hostname or parts.query or parts.fragment or parts.path in ("", "/"):
        raise InvalidArgument("git.url must be https://host[:port]/path/to/repository")
    try:
        return normalize_host(parts.hostname), port
    except PolicyError as exc:
        raise InvalidArgument(f"git.url: {exc}") from None


def _agent(
    request: CreateJobRequest, settings: Settings, find_agent: FindAgent | None
) -> AgentEntry | None:
    """The catalogue entry an agent-mode job runs; the request names it, never its image or
    command."""
    if request.mode is not JobMode.AGENT:
        if request.agent:
            raise InvalidArgument(
                f"agent {request.agent[:64]!r} is named, but mode is {request.mode.value}: "
                "agents run in agent mode (JOB_MODE_AGENT)"
            )
        return None
    if not request.agent:
        raise InvalidArgument("agent mode needs the name of an agent from the catalogue")
    if request.wait_for_prompts:
        raise InvalidArgument(
            "wait_for_prompts is for Claude Code mode: an agent runs its command once"
        )
    name = check_text(request.agent, "agent", TOOL_NAME_MAX_CHARS)
    if find_agent is None:
        raise FailedPrecondition("this orchestrator has no agent catalogue")
    entry = find_agent(name)
    if entry.api == "anthropic" and not settings.claude_auth_configured:
        raise FailedPrecondition(
            f"agent {entry.name!r} speaks the Anthropic API, which needs ANTHROPIC_API_KEY or "
            "CLAUDE_CODE_OAUTH_TOKEN on the orchestrator"
        )
    if entry.api == "openai" and settings.llm_provider != "openai":
        raise FailedPrecondition(
            f"agent {entry.name!r} speaks the OpenAI API, which the job's route serves with "
            "LLM_PROVIDER=openai (and OPENAI_API_KEY and/or LLM_BASE_URL) on the orchestrator"
        )
    return entry


def _check_openai_model(agent: AgentEntry, model: str, settings: Settings) -> None:
    # The OpenAI-compatible route allows the operator's LLM_MODEL and LLM_MODEL_ALLOWLIST: a
    # job whose agent would ask for another could only fail at its first call.
    allowed = [name for name in (settings.llm_model, *settings.llm_model_allowlist) if name]
    if model not in allowed:
        raise FailedPrecondition(
            f"agent {agent.name!r} would use model {model!r}, which the OpenAI-compatible route "
            f"does not allow (allowed: {', '.join(allowed) or 'none'}): add it to "
            "LLM_MODEL_ALLOWLIST or pick an allowed one with limits.claude_model"
        )


def _check_inject_hosts(
    grants: tuple[CredentialGrant, ...], egress_hosts: tuple[str, ...] | None, settings: Settings
) -> None:
    """Every host a grant is injected into must be one the job may reach (on at least one of
    the entry's ports), and only the egress gateway injects: a job whose commands go out
    directly (JOB_NETWORK=bridge) would hold a placeholder nothing ever swaps."""
    injected = [grant for grant in grants if grant.injected]
    if not injected:
        return
    if settings.job_network != "isolated":
        raise FailedPrecondition(
            f"credential {injected[0].name!r} has inject_hosts, which need JOB_NETWORK=isolated "
            "(only there do a job's requests go out through the egress gateway, which injects)"
        )
    operator = settings.egress_allow_hosts
    job = EgressPolicy(parse_rules(egress_hosts)) if egress_hosts is not None else None

    def reachable(rule: HostRule) -> bool:
        if job is not None and job.uncovered([rule]):
            return False
        if job is not None and settings.egress_job_may_widen:
            return True
        return not operator.uncovered([rule])

    for grant in injected:
        for rule in parse_rules(grant.inject_hosts):
            if not any(reachable(HostRule(rule.host, rule.wildcard, port)) for port in rule.ports):
                where = "egress.allow_hosts" if job is not None else "EGRESS_ALLOW_HOSTS"
                raise InvalidArgument(
                    f"credential {grant.name!r}: inject host {str(rule)!r} is not reachable "
                    f"under this job's egress policy ({where})"
                )


def _egress_hosts(entries: tuple[str, ...] | None, settings: Settings) -> tuple[str, ...] | None:
    """The job's own egress list in canonical form; InvalidArgument for an entry that does not
    parse or that widens the operator's list when jobs may not."""
    if entries is None:
        return None
    if len(entries) > MAX_EGRESS_HOSTS:
        raise InvalidArgument(
            f"egress.allow_hosts has {len(entries)} entries; at most {MAX_EGRESS_HOSTS}"
        )
    for entry in entries:
        check_text(entry, "an egress.allow_hosts entry", MAX_EGRESS_HOST_CHARS)
    try:
        rules = check_job_hosts(settings.egress_allow_hosts, entries, settings.egress_job_may_widen)
    except PolicyError as exc:
        raise InvalidArgument(f"egress.allow_hosts: {exc}") from None
    return tuple(str(rule) for rule in rules)


def check_text(value: str, field: str, max_chars: int) -> str:
    """``value`` if it is at most ``max_chars`` characters without control characters (tabs
    and newlines allowed); InvalidArgument naming ``field`` otherwise, never echoing it."""
    if len(value) > max_chars:
        raise InvalidArgument(f"{field} is {len(value)} characters; the limit is {max_chars}")
    bad = _CONTROL.search(value)
    if bad:
        raise InvalidArgument(
            f"{field} holds the control character U+{ord(bad.group()):04X} at {bad.start()}"
        )
    return value


def validate_labels(labels: Mapping[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"at most {MAX_LABELS} labels are allowed")
    checked: dict[str, str] = {}
    for key, value in labels.items():
        if not LABEL_KEY_PATTERN.fullmatch(key):
            raise InvalidArgument(
                f"label key {key[:64]!r} is invalid: 1-63 letters, digits, '_', '.', '-' or '/',"
                " starting with a letter or digit"
            )
        check_text(value, f"label {key!r}", MAX_LABEL_VALUE_CHARS)
        if "\n" in value or "\t" in value:
            raise InvalidArgument(f"label {key!r} holds a line break or a tab")
        checked[key] = value
    return checked


def validate_model_name(model: str) -> str:
    # The rule the settings apply to CLAUDE_CODE_MODEL at start (model_names): a default that
    # passed start-up never fails a job.
    problem = model_name_problem(model)
    if problem:
        raise InvalidArgument(problem)
    return model


def effective_limits(
    settings: Settings, mode: JobMode, o: JobLimitOverrides, agent: AgentEntry | None = None
) -> JobLimits:
    """The job's limits: the settings' defaults for its mode, overridden where asked, each
    override within its range. An agent job's model (``claude_model``, the model its route
    allows) defaults to its catalogue entry's."""
    s = settings
    claude = mode is JobMode.CLAUDE_CODE

    def pick(value: int | None, default: int, name: str, low: int, high: int) -> int:
        if value is None:
            return default
        if not low <= value <= high:
            raise InvalidArgument(f"limits.{name}={value} is out of range [{low}, {high}]")
        return value

    return JobLimits(
        max_iterations=pick(o.max_iterations, s.worker_max_iterations, "max_iterations", 1, 10_000),
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
        claude_model=validate_model_name(
            o.claude_model or (agent.model if agent is not None else s.claude_model)
        ),
    )


def _tools(
    request: CreateJobRequest, grants: tuple[CredentialGrant, ...], grant_tools: GrantTools
) -> GrantedTools:
    if not request.mcp_servers and not request.wasm_tools:
        return NO_TOOLS
    if request.mode is not JobMode.WORKER:
        raise InvalidArgument(
            "MCP servers and WASM tools are offered to worker-mode jobs only; Claude Code "
            "and agent jobs use their agent's own tools"
        )
    named = (*request.mcp_servers, *request.wasm_tools)
    if len(named) > MAX_TOOLS_NAMED:
        raise InvalidArgument(f"at most {MAX_TOOLS_NAMED} custom tools may be named")
    for name in named:
        check_text(name, "tool name", TOOL_NAME_MAX_CHARS)
    return grant_tools(request.mcp_servers, request.wasm_tools, (grant.name for grant in grants))
