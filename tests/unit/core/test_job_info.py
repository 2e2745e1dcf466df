"""``GET /job``, the one channel of a job's configuration: its body for both modes (and the
opted-in key), and its pydantic models held equal to the contract's TypedDicts, which the
agents read."""

from __future__ import annotations

import json
import typing
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from ironclaw_contract import worker_api
from ironclaw_contract.agent_catalog import AgentEntry
from orchestrator.domain.jobs import GrantedTools, JobLimits, JobMode
from orchestrator.http_api import schemas
from orchestrator.http_api.job_info import build_job_info
from orchestrator.http_api.openapi import build_openapi
from orchestrator.settings import Settings
from tests.helpers import job_record

JOB_ID = "8c5c1f3e-0000-4000-8000-000000000001"
URL = "http://host.docker.internal:50052"
LIMITS = JobLimits(
    max_iterations=12,
    timeout_seconds=900,
    memory_mb=1024,
    llm_token_budget=3000,
    llm_call_budget=40,
    llm_max_tokens_per_call=2048,
    claude_max_turns=9,
    claude_model="opus",
)
CREATED = datetime(2026, 1, 1, tzinfo=UTC)


def _body(
    mode: JobMode,
    settings: Settings,
    *,
    llm_refusal: str | None = None,
    egress_url: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    job = job_record(
        JOB_ID,
        mode=mode,
        task="Fix the failing test",
        limits=LIMITS,
        created_at=CREATED,
        deadline=CREATED + timedelta(seconds=900),
        **fields,
    )
    info = build_job_info(
        job.snapshot(),
        settings,
        credential_env={"github": "GH_TOKEN"},
        orchestrator_url=URL,
        llm_refusal=llm_refusal,
        egress_url=egress_url,
    )
    # What the route sends: the JSON, read back as the agent reads it.
    body: dict[str, Any] = json.loads(json.dumps(info.model_dump(mode="json")))
    return body


def test_a_worker_job_gets_its_task_limits_deadline_credential_names_and_tools() -> None:
    tools = GrantedTools(
        mcp_servers=({"name": "github", "type": "stdio", "command": "gh-mcp"},),
        wasm_tools=({"name": "word-count"},),
    )
    body = _body(JobMode.WORKER, Settings.from_env({}), tools=tools, wait_for_prompts=True)
    assert body == {
        "job_id": JOB_ID,
        "task_description": "Fix the failing test",
        "project_dir": "/workspace",
        "mode": "worker",
        "max_iterations": 12,
        "deadline": "2026-01-01T00:15:00+00:00",
        "wait_for_prompts": True,
        "credential_env": {"github": "GH_TOKEN"},
        "limits": {
            "max_iterations": 12,
            "timeout_seconds": 900,
            "memory_mb": 1024,
            "llm_token_budget": 3000,
            "llm_call_budget": 40,
            "llm_max_tokens_per_call": 2048,
        },
        "claude": None,
        "mcp_servers": ["github"],
        "wasm_tools": ["word-count"],
        "llm_refusal": None,
        "egress": None,
        "git": None,
        "workspace_sync": None,
        "agent": None,
        "openai": None,
    }


def test_a_job_learns_its_openai_base_url_and_models_when_an_openai_provider_is_set() -> None:
    settings = Settings.from_env(
        {
            "LLM_BASE_URL": "http://vllm.internal:8000/v1",
            "OPENAI_API_KEY": "sk-real-openai-" + "k" * 20,
            "LLM_MODEL": "qwen-coder",
            "LLM_MODEL_ALLOWLIST": "qwen-large,qwen-coder",
        }
    )
    for mode in (JobMode.WORKER, JobMode.CLAUDE_CODE):
        body = _body(mode, settings)
        assert body["openai"] == {
            "base_url": f"{URL}/worker/{JOB_ID}/openai/v1",
            "models": ["qwen-coder", "qwen-large"],
        }
        assert "sk-real-openai-" not in json.dumps(body)


def test_a_claude_job_gets_the_cli_settings_and_its_route_but_no_key() -> None:
    settings = Settings.from_env(
        {
            "ANTHROPIC_API_KEY": "sk-ant-real-key-" + "r" * 20,
            "CLAUDE_CODE_ALLOWED_TOOLS": "bash,read,grep",
            "CLAUDE_CODE_MODEL_MAP": "haiku=claude-h-1,fable=x-1",
            "CLAUDE_CODE_IDLE_TIMEOUT_S": "90",
        }
    )
    body = _body(JobMode.CLAUDE_CODE, settings)
    assert body["mode"] == "claude-code"
    assert body["claude"] == {
        "model": "opus",
        "max_turns": 9,
        "allowed_tools": ["Bash", "Read", "Grep"],
        # The CLI's own aliases only: "fable" is the orchestrator's alone.
        "model_aliases": {
            "sonnet": "claude-sonnet-5-5",
            "opus": "claude-opus-5-5",
            "haiku": "claude-h-1",
        },
        "base_url": f"{URL}/worker/{JOB_ID}/anthropic",
        # The bridge derives the job's LLM key from its token: no key travels.
        "api_key": None,
        "oauth_token": None,
        "idle_timeout_s": 90.0,
    }
    assert "sk-ant-real-key" not in json.dumps(body)


def test_the_opt_in_serves_the_real_credential_through_the_same_channel() -> None:
    real = "sk-ant-real-key-" + "r" * 20
    settings = Settings.from_env(
        {
            "ANTHROPIC_API_KEY": real,
            "ANTHROPIC_BASE_URL": "https://proxy.example",
            "CLAUDE_CODE_KEY_IN_CONTAINER": "1",
        }
    )
    claude = _body(JobMode.CLAUDE_CODE, settings)["claude"]
    assert (claude["base_url"], claude["api_key"], claude["oauth_token"]) == (
        "https://proxy.example",
        real,
        None,
    )
    oauth = Settings.from_env(
        {"CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat-real", "CLAUDE_CODE_KEY_IN_CONTAINER": "true"}
    )
    claude = _body(JobMode.CLAUDE_CODE, oauth)["claude"]
    assert (claude["base_url"], claude["api_key"], claude["oauth_token"]) == (
        None,
        None,
        "sk-ant-oat-real",
    )


def test_an_agent_job_gets_its_entry_and_its_route_but_no_key_and_no_image() -> None:
    entry = AgentEntry(
        name="mini",
        image="ironclaw-agent-mini-swe-agent:latest",
        command=("mini", "-m", "anthropic/{model}", "-t", "{task}"),
        api="anthropic",
        key_env=("ANTHROPIC_API_KEY",),
        base_url_env=("ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL"),
        model="claude-sonnet-5-5",
        model_env=("MSWEA_MODEL_NAME",),
        env={"MSWEA_CONFIGURED": "true"},
    )
    real = "sk-ant-real-key-" + "r" * 20
    body = _body(JobMode.AGENT, Settings.from_env({"ANTHROPIC_API_KEY": real}), agent=entry)
    assert body["mode"] == "agent"
    assert body["claude"] is None
    assert body["agent"] == {
        "name": "mini",
        "command": ["mini", "-m", "anthropic/{model}", "-t", "{task}"],
        "api": "anthropic",
        "key_env": ["ANTHROPIC_API_KEY"],
        "base_url_env": ["ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL"],
        "base_url": f"{URL}/worker/{JOB_ID}/anthropic",
        # The job's model: its limits' (the entry's default unless CreateJob overrode it).
        "model": "opus",
        "model_env": ["MSWEA_MODEL_NAME"],
        "env": {"MSWEA_CONFIGURED": "true"},
    }
    assert real not in json.dumps(body)
    openai = _body(JobMode.AGENT, Settings.from_env({}), agent=replace(entry, api="openai"))
    assert openai["agent"]["base_url"] == f"{URL}/worker/{JOB_ID}/openai/v1"


def test_the_llm_refusal_is_served_as_its_code_only() -> None:
    settings = Settings.from_env({})
    refused = _body(JobMode.WORKER, settings, llm_refusal=worker_api.Refusal.TOKEN_BUDGET)
    assert refused["llm_refusal"] == "token_budget_exhausted"
    # A record from before the codes holds English: not served as if it were one.
    legacy = "LLM call budget exhausted: 5 of 5 calls used"
    assert _body(JobMode.WORKER, settings, llm_refusal=legacy)["llm_refusal"] is None


def test_a_job_behind_the_gateway_gets_its_proxy_and_its_own_list_or_the_operators() -> None:
    settings = Settings.from_env({"EGRESS_ALLOW_HOSTS": "pypi.org, *.github.com:443"})
    gateway = "http://host.docker.internal:50053"
    body = _body(JobMode.WORKER, settings, egress_url=gateway)
    assert body["egress"] == {
        "proxy_url": gateway,
        "no_proxy": "host.docker.internal",
        "allow_hosts": ["pypi.org", "*.github.com:443"],
        "ca_pem": None,
    }
    own = _body(JobMode.CLAUDE_CODE, settings, egress_url=gateway, egress_hosts=("pypi.org",))
    assert own["egress"]["allow_hosts"] == ["pypi.org"]
    assert _body(JobMode.WORKER, settings)["egress"] is None


def test_secrets_never_show_in_a_repr() -> None:
    real = "sk-ant-real-key-" + "r" * 20
    settings = Settings.from_env({"ANTHROPIC_API_KEY": real, "CLAUDE_CODE_KEY_IN_CONTAINER": "1"})
    info = build_job_info(
        job_record(JOB_ID, mode=JobMode.CLAUDE_CODE, limits=LIMITS).snapshot(),
        settings,
        credential_env={},
        orchestrator_url=URL,
        llm_refusal=None,
    )
    assert info.claude is not None
    assert info.claude.api_key == real
    assert real not in repr(info)
    assert real not in str(info)


# -- the pydantic models are the contract's shapes -------------------------------------------

SHAPES: list[tuple[type[BaseModel], Any]] = [
    (schemas.JobInfo, worker_api.JobInfo),
    (schemas.JobLimitsInfo, worker_api.JobLimitsInfo),
    (schemas.ClaudeInfo, worker_api.ClaudeInfo),
    (schemas.EgressInfo, worker_api.EgressInfo),
    (schemas.GitInfo, worker_api.GitInfo),
    (schemas.WorkspaceSyncInfo, worker_api.WorkspaceSyncInfo),
    (schemas.AgentInfo, worker_api.AgentInfo),
    (schemas.OpenAIInfo, worker_api.OpenAIInfo),
    (schemas.ErrorBody, worker_api.ErrorBody),
]


@pytest.mark.parametrize(("model", "shape"), SHAPES, ids=[m.__name__ for m, _ in SHAPES])
def test_the_pydantic_model_has_the_fields_of_the_contract(
    model: type[BaseModel], shape: Any
) -> None:
    hints = typing.get_type_hints(shape)
    assert set(model.model_fields) == set(hints)
    required = {name for name, field in model.model_fields.items() if field.is_required()}
    assert required == set(shape.__required_keys__)


def test_nested_shapes_are_the_nested_models() -> None:
    hints = typing.get_type_hints(worker_api.JobInfo)
    assert hints["limits"] is worker_api.JobLimitsInfo
    assert schemas.JobInfo.model_fields["limits"].annotation is schemas.JobLimitsInfo
    assert hints["claude"] == worker_api.ClaudeInfo | None
    assert schemas.JobInfo.model_fields["claude"].annotation == schemas.ClaudeInfo | None


def test_the_openapi_document_describes_the_body_and_the_refusal_codes() -> None:
    document = build_openapi()
    defs = document["components"]["schemas"]
    job = defs["JobInfo"]
    assert set(job["properties"]) == set(typing.get_type_hints(worker_api.JobInfo))
    assert set(job["required"]) == set(worker_api.JobInfo.__required_keys__)
    assert set(defs["ClaudeInfo"]["required"]) == set(worker_api.ClaudeInfo.__required_keys__)
    codes = {code.value for code in worker_api.Refusal}
    assert set(defs["Refusal"]["enum"]) == codes
    assert "refusal" not in defs["ErrorBody"].get("required", [])
    llm = document["paths"]["/worker/{job_id}/llm/complete"]["post"]["responses"]
    assert {"403", "429"} <= set(llm)
    anthropic = document["paths"]["/worker/{job_id}/anthropic/v1/messages"]["post"]
    refusal = anthropic["responses"]["429"]["content"]["application/json"]["schema"]
    assert set(refusal["properties"]["error"]["properties"]["refusal"]["enum"]) == codes
    assert {"llm_key": []} in anthropic["security"]
