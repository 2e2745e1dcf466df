"""A job record's durable form: what the store keeps of a job, and the snapshots of ended jobs,
which are read from the store rather than kept in memory."""

from __future__ import annotations

import dataclasses
from typing import Any

from ironclaw_contract.agent_catalog import AgentEntry
from orchestrator.domain.jobs import (
    HISTORY_MAX_BYTES,
    NO_TOOLS,
    GitSource,
    GrantedTools,
    JobLimits,
    JobMode,
    JobSnapshot,
    JobState,
    LlmUsage,
)
from orchestrator.jobs.record import JobRecord
from orchestrator.store.codec import (
    dt_from_json,
    dt_to_json,
    result_from_json,
    result_to_json,
    usage_to_json,
)


def record_to_json(job: JobRecord) -> dict[str, Any]:
    """The durable fields of a job record: everything a snapshot shows, and what a restart
    needs to run the job on."""
    limits = job.limits
    return {
        "job_id": job.job_id,
        "order": job.order,
        "task": job.task,
        "mode": job.mode.value,
        "project_dir": job.project_dir,
        "container_name": job.container_name,
        "created_at": dt_to_json(job.created_at),
        "limits": {
            "max_iterations": limits.max_iterations,
            "timeout_seconds": limits.timeout_seconds,
            "memory_mb": limits.memory_mb,
            "llm_token_budget": limits.llm_token_budget,
            "llm_call_budget": limits.llm_call_budget,
            "llm_max_tokens_per_call": limits.llm_max_tokens_per_call,
            "claude_max_turns": limits.claude_max_turns,
            "claude_model": limits.claude_model,
        },
        "deadline": dt_to_json(job.deadline),
        "labels": job.labels,
        "credential_names": list(job.credential_names),
        "llm_provider": job.llm_provider,
        "wait_for_prompts": job.wait_for_prompts,
        "state": job.state.value,
        "started_at": dt_to_json(job.started_at),
        "finished_at": dt_to_json(job.finished_at),
        "result": result_to_json(job.result) if job.result else None,
        "status_message": job.status_message,
        "iteration": job.iteration,
        "usage": usage_to_json(job.usage),
        "log_tail": job.log_tail,
        "container_id": job.container_id,
        "warm_slot": job.warm_slot,
        "budget_refused": job.budget_refused,
        "sequence": job.sequence,
        "tools": _tools_json(job.tools),
        "egress_hosts": list(job.egress_hosts) if job.egress_hosts is not None else None,
        "git": dataclasses.asdict(job.git) if job.git is not None else None,
        "agent": job.agent.to_wire() if job.agent is not None else None,
    }


def _tools_json(tools: GrantedTools) -> dict[str, Any] | None:
    if not tools.mcp_servers and not tools.wasm_tools:
        return None
    return {
        "mcp_servers": [dict(entry) for entry in tools.mcp_servers],
        "wasm_tools": [dict(tool) for tool in tools.wasm_tools],
    }


def _tools_from_json(data: dict[str, Any] | None) -> GrantedTools:
    # Records written before custom tools existed have no "tools" key.
    if not data:
        return NO_TOOLS
    return GrantedTools(
        mcp_servers=tuple(data.get("mcp_servers", ())),
        wasm_tools=tuple(data.get("wasm_tools", ())),
    )


def _shown_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The fields a record and a snapshot share, decoded."""
    created = dt_from_json(data["created_at"])
    deadline = dt_from_json(data["deadline"])
    assert created is not None
    assert deadline is not None
    return {
        "job_id": data["job_id"],
        "task": data["task"],
        "mode": JobMode(data["mode"]),
        "state": JobState(data["state"]),
        "project_dir": data["project_dir"],
        "container_name": data["container_name"],
        "created_at": created,
        "limits": JobLimits(**data["limits"]),
        "deadline": deadline,
        "labels": dict(data["labels"]),
        "credential_names": tuple(data["credential_names"]),
        "llm_provider": data["llm_provider"],
        "wait_for_prompts": data["wait_for_prompts"],
        "started_at": dt_from_json(data["started_at"]),
        "finished_at": dt_from_json(data["finished_at"]),
        "result": result_from_json(data["result"]) if data["result"] else None,
        "status_message": data["status_message"],
        "iteration": data["iteration"],
        "usage": LlmUsage(**data["usage"]),
        "log_tail": data["log_tail"],
        # Records written before the egress gateway have no list: the operator's.
        "egress_hosts": _egress_hosts_from_json(data.get("egress_hosts")),
        # Records written before git workspaces have none.
        "git": GitSource(**data["git"]) if data.get("git") else None,
        # Records written before agent mode have no entry.
        "agent": AgentEntry.from_wire(data["agent"]) if data.get("agent") else None,
    }


def _egress_hosts_from_json(entries: list[str] | None) -> tuple[str, ...] | None:
    return None if entries is None else tuple(entries)


def record_from_json(
    data: dict[str, Any], history_limit: int, history_max_bytes: int = HISTORY_MAX_BYTES
) -> JobRecord:
    """A record as it was saved (its history is loaded separately)."""
    return JobRecord(
        **_shown_fields(data),
        order=data["order"],
        history_limit=history_limit,
        history_max_bytes=history_max_bytes,
        container_id=data["container_id"],
        # Records written before the warm pool have none.
        warm_slot=data.get("warm_slot"),
        budget_refused=data["budget_refused"],
        sequence=data["sequence"],
        tools=_tools_from_json(data.get("tools")),
    )


def snapshot_from_json(data: dict[str, Any]) -> JobSnapshot:
    """The snapshot of a stored job, without building its record (ended jobs are read this way
    on every GetJob, ListJobs page and WatchJob of them)."""
    tools = _tools_from_json(data.get("tools"))
    return JobSnapshot(
        **_shown_fields(data),
        last_sequence=data["sequence"],
        mcp_servers=tools.mcp_server_names,
        wasm_tools=tools.wasm_tool_names,
    )
