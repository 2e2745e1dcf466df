"""JSON encoding of job records and updates for the store (no secrets: tokens are stored as
digests by the store itself, credential grants only encrypted)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from orchestrator.jobs.models import (
    NO_TOOLS,
    GrantedTools,
    JobLimits,
    JobMode,
    JobResult,
    JobState,
    JobUpdate,
    LlmUsage,
    TerminalReason,
    UpdateKind,
)
from orchestrator.jobs.record import JobRecord
from orchestrator.jobs.update_history import DEFAULT_MAX_BYTES


def _dt(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def result_to_json(result: JobResult) -> dict[str, Any]:
    return {
        "success": result.success,
        "reason": result.reason.value,
        "message": result.message,
        "finished_at": _dt(result.finished_at),
        "iterations": result.iterations,
        "exit_code": result.exit_code,
        "details": dict(result.details) if result.details else None,
    }


def result_from_json(data: dict[str, Any]) -> JobResult:
    finished = _parse_dt(data["finished_at"])
    assert finished is not None
    return JobResult(
        success=data["success"],
        reason=TerminalReason(data["reason"]),
        message=data["message"],
        finished_at=finished,
        iterations=data.get("iterations", 0),
        exit_code=data.get("exit_code"),
        details=data.get("details"),
    )


def _usage_json(usage: LlmUsage) -> dict[str, int]:
    return {
        "calls": usage.calls,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
    }


def record_to_json(job: JobRecord) -> dict[str, Any]:
    """The durable fields of a job record."""
    limits = job.limits
    return {
        "job_id": job.job_id,
        "order": job.order,
        "task": job.task,
        "mode": job.mode.value,
        "project_dir": job.project_dir,
        "container_name": job.container_name,
        "created_at": _dt(job.created_at),
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
        "deadline": _dt(job.deadline),
        "labels": job.labels,
        "credential_names": list(job.credential_names),
        "llm_provider": job.llm_provider,
        "wait_for_prompts": job.wait_for_prompts,
        "state": job.state.value,
        "started_at": _dt(job.started_at),
        "finished_at": _dt(job.finished_at),
        "result": result_to_json(job.result) if job.result else None,
        "status_message": job.status_message,
        "iteration": job.iteration,
        "usage": _usage_json(job.usage),
        "log_tail": job.log_tail,
        "container_id": job.container_id,
        "budget_refused": job.budget_refused,
        "sequence": job.sequence,
        "tools": _tools_json(job.tools),
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


def record_from_json(
    data: dict[str, Any], history_limit: int, history_max_bytes: int = DEFAULT_MAX_BYTES
) -> JobRecord:
    created = _parse_dt(data["created_at"])
    deadline = _parse_dt(data["deadline"])
    assert created is not None
    assert deadline is not None
    job = JobRecord(
        job_id=data["job_id"],
        order=data["order"],
        task=data["task"],
        mode=JobMode(data["mode"]),
        project_dir=data["project_dir"],
        container_name=data["container_name"],
        created_at=created,
        limits=JobLimits(**data["limits"]),
        deadline=deadline,
        labels=dict(data["labels"]),
        credential_names=tuple(data["credential_names"]),
        llm_provider=data["llm_provider"],
        wait_for_prompts=data["wait_for_prompts"],
        history_limit=history_limit,
        history_max_bytes=history_max_bytes,
        state=JobState(data["state"]),
        started_at=_parse_dt(data["started_at"]),
        finished_at=_parse_dt(data["finished_at"]),
        result=result_from_json(data["result"]) if data["result"] else None,
        status_message=data["status_message"],
        iteration=data["iteration"],
        usage=LlmUsage(**data["usage"]),
        log_tail=data["log_tail"],
        container_id=data["container_id"],
        budget_refused=data["budget_refused"],
        sequence=data["sequence"],
        tools=_tools_from_json(data.get("tools")),
    )
    return job


def payload_to_json(kind: UpdateKind, payload: Any) -> dict[str, Any]:
    if kind is UpdateKind.STATE:
        return {"state": payload["state"].value, "reason": payload["reason"]}
    if kind is UpdateKind.RESULT:
        return {"result": result_to_json(payload["result"])}
    if kind is UpdateKind.USAGE:
        return {"usage": _usage_json(payload["usage"])}
    return dict(payload)


def update_from_row(seq: int, time: str, kind: str, payload: dict[str, Any]) -> JobUpdate:
    update_kind = UpdateKind(kind)
    decoded: dict[str, Any] = payload
    if update_kind is UpdateKind.STATE:
        decoded = {"state": JobState(payload["state"]), "reason": payload["reason"]}
    elif update_kind is UpdateKind.RESULT:
        decoded = {"result": result_from_json(payload["result"])}
    elif update_kind is UpdateKind.USAGE:
        decoded = {"usage": LlmUsage(**payload["usage"])}
    parsed = datetime.fromisoformat(time)
    return JobUpdate(sequence=seq, time=parsed, kind=update_kind, payload=decoded)
