"""JSON encoding of the domain values the store keeps (results, usage, updates). No secrets:
tokens are stored as digests by the store itself, credential grants only encrypted."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from orchestrator.domain.jobs import (
    JobResult,
    JobState,
    JobUpdate,
    LlmUsage,
    TerminalReason,
    UpdateKind,
)


def dt_to_json(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def dt_from_json(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def result_to_json(result: JobResult) -> dict[str, Any]:
    return {
        "success": result.success,
        "reason": result.reason.value,
        "message": result.message,
        "finished_at": dt_to_json(result.finished_at),
        "iterations": result.iterations,
        "exit_code": result.exit_code,
        "details": dict(result.details) if result.details else None,
    }


def result_from_json(data: dict[str, Any]) -> JobResult:
    finished = dt_from_json(data["finished_at"])
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


def usage_to_json(usage: LlmUsage) -> dict[str, int]:
    return {
        "calls": usage.calls,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
    }


def payload_to_json(kind: UpdateKind, payload: Any) -> dict[str, Any]:
    if kind is UpdateKind.STATE:
        return {"state": payload["state"].value, "reason": payload["reason"]}
    if kind is UpdateKind.RESULT:
        return {"result": result_to_json(payload["result"])}
    if kind is UpdateKind.USAGE:
        return {"usage": usage_to_json(payload["usage"])}
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
