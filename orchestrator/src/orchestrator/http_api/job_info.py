"""The body of ``GET /worker/{job_id}/job``: everything an agent needs to run its job.

A job container starts with its identity only (``ironclaw_contract.container_env``); the task,
the limits, the deadline, the names of its credentials and custom tools, and for Claude Code the
CLI's settings all come from here (the CLI's key is derived by the bridge from its token:
``ironclaw_contract.job_keys``). A pure function of the job and the settings, tested without a
server.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

from ironclaw_contract import container_env
from ironclaw_contract.agent_catalog import API_ROUTES
from ironclaw_contract.claude import CLI_MODEL_ALIASES
from ironclaw_contract.worker_api import ANTHROPIC, OPENAI, Refusal, job_route
from orchestrator.domain.jobs import JobMode, JobSnapshot
from orchestrator.http_api import schemas
from orchestrator.settings import Settings

_REFUSALS = {code.value: code for code in Refusal}


def build_job_info(
    job: JobSnapshot,
    settings: Settings,
    *,
    credential_env: Mapping[str, str],
    orchestrator_url: str,
    llm_refusal: str | None,
    egress_url: str | None = None,
    egress_ca_pem: str | None = None,
    workspace_sync: schemas.WorkspaceSyncInfo | None = None,
) -> schemas.JobInfo:
    """What ``GET /job`` answers for ``job``. ``egress_url``: the egress gateway as the job's
    container reaches it, when its network leads out through the gateway only;
    ``egress_ca_pem``: the CA it terminates TLS with, when it injects a credential of the job;
    ``workspace_sync``: how its workspace moves, when its /workspace is no host directory."""
    limits = job.limits
    return schemas.JobInfo(
        job_id=job.job_id,
        task_description=job.task,
        project_dir=container_env.WORKSPACE_PATH,
        mode=job.mode.value,
        max_iterations=limits.max_iterations,
        deadline=job.deadline.isoformat(),
        wait_for_prompts=job.wait_for_prompts,
        credential_env=dict(credential_env),
        limits=schemas.JobLimitsInfo(
            max_iterations=limits.max_iterations,
            timeout_seconds=limits.timeout_seconds,
            memory_mb=limits.memory_mb,
            llm_token_budget=limits.llm_token_budget,
            llm_call_budget=limits.llm_call_budget,
            llm_max_tokens_per_call=limits.llm_max_tokens_per_call,
        ),
        claude=(
            _claude_info(job, settings, orchestrator_url)
            if job.mode is JobMode.CLAUDE_CODE
            else None
        ),
        mcp_servers=list(job.mcp_servers),
        wasm_tools=list(job.wasm_tools),
        # A record from before refusal codes holds English here: not a code, so not served.
        llm_refusal=_REFUSALS.get(llm_refusal or ""),
        egress=(
            _egress_info(job, settings, orchestrator_url, egress_url, egress_ca_pem)
            if egress_url
            else None
        ),
        git=schemas.GitInfo(url=job.git.url, ref=job.git.ref) if job.git is not None else None,
        workspace_sync=workspace_sync,
        agent=_agent_info(job, orchestrator_url) if job.agent is not None else None,
        openai=_openai_info(job, settings, orchestrator_url),
    )


def _agent_info(job: JobSnapshot, orchestrator_url: str) -> schemas.AgentInfo:
    # The agent talks its API to the job's own route with the job's LLM key, which the runner
    # derives from its token: the provider's key never reaches the container.
    entry = job.agent
    assert entry is not None
    return schemas.AgentInfo(
        name=entry.name,
        command=list(entry.command),
        api=entry.api,
        key_env=list(entry.key_env),
        base_url_env=list(entry.base_url_env),
        base_url=orchestrator_url.rstrip("/") + job_route(job.job_id, API_ROUTES[entry.api]),
        model=job.limits.claude_model,
        model_env=list(entry.model_env),
        env=dict(entry.env),
    )


def _openai_info(
    job: JobSnapshot, settings: Settings, orchestrator_url: str
) -> schemas.OpenAIInfo | None:
    if settings.llm_provider != "openai":
        return None
    models = [m for m in dict.fromkeys([settings.llm_model, *settings.llm_model_allowlist]) if m]
    return schemas.OpenAIInfo(
        base_url=orchestrator_url.rstrip("/") + job_route(job.job_id, OPENAI), models=models
    )


def _egress_info(
    job: JobSnapshot,
    settings: Settings,
    orchestrator_url: str,
    egress_url: str,
    ca_pem: str | None,
) -> schemas.EgressInfo:
    hosts = (
        list(job.egress_hosts)
        if job.egress_hosts is not None
        else [str(rule) for rule in settings.egress_allow_hosts.rules]
    )
    # The worker API is reached directly: through the gateway it would be refused (private).
    worker_api_host = urllib.parse.urlsplit(orchestrator_url).hostname or ""
    return schemas.EgressInfo(
        proxy_url=egress_url, no_proxy=worker_api_host, allow_hosts=hosts, ca_pem=ca_pem
    )


def _claude_info(job: JobSnapshot, settings: Settings, orchestrator_url: str) -> schemas.ClaudeInfo:
    # The CLI resolves --model sonnet|opus|haiku itself; ANTHROPIC_DEFAULT_<ALIAS>_MODEL makes it
    # send the ids the orchestrator's model map (and so its allowlist) names.
    aliases = {
        alias: model for alias, model in settings.claude_model_map if alias in CLI_MODEL_ALIASES
    }
    if settings.claude_key_in_container:
        # Opt-in (CLAUDE_CODE_KEY_IN_CONTAINER=1), and weaker: the CLI calls Anthropic directly
        # with the real credential, so anything the agent runs can read and exfiltrate it, and
        # the orchestrator sees none of the calls: no per-job metering, budget or model
        # allowlist. For sites whose containers must not route through the orchestrator.
        api_key = settings.anthropic_api_key.reveal() if settings.anthropic_api_key else None
        oauth = settings.claude_oauth_token
        base_url = settings.anthropic_base_url
        oauth_token = oauth.reveal() if oauth and not api_key else None
    else:
        # The default: the CLI talks Anthropic Messages to the job's own route with the job's
        # LLM key, which opens that route and nothing else and which the bridge derives from
        # its token; neither the real credential nor the worker token reaches the CLI.
        base_url = orchestrator_url.rstrip("/") + job_route(job.job_id, ANTHROPIC)
        api_key = None
        oauth_token = None
    return schemas.ClaudeInfo(
        model=job.limits.claude_model,
        max_turns=job.limits.claude_max_turns,
        allowed_tools=list(settings.claude_allowed_tools),
        model_aliases=aliases,
        base_url=base_url,
        api_key=api_key,
        oauth_token=oauth_token,
        idle_timeout_s=settings.claude_idle_timeout_s,
    )
