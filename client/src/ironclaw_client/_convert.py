"""protobuf ⇄ the client's types; the generated messages stop here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from ironclaw_client.api.v1 import jobs_pb2 as pb
from ironclaw_client.types import (
    CredentialGrant,
    Event,
    GitWorkspace,
    Job,
    JobLimits,
    JobMode,
    JobResult,
    JobState,
    JobUpdate,
    LlmUsage,
    ResultUpdate,
    Snapshot,
    StateChanged,
    StatusUpdate,
    TerminalReason,
    UsageUpdate,
)

_STATE_PREFIX = "JOB_STATE_"
_REASON_PREFIX = "TERMINAL_REASON_"


def _time(message: Any, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    stamp: Timestamp = getattr(message, name)
    return stamp.ToDatetime(tzinfo=UTC)


def state_from_pb(value: int) -> JobState:
    name = pb.JobState.Name(value).removeprefix(_STATE_PREFIX)  # type: ignore[arg-type]
    return JobState[name]


def state_to_pb(state: JobState) -> int:
    return int(pb.JobState.Value(_STATE_PREFIX + state.name))


_MODES_PB = {
    JobMode.WORKER: pb.JOB_MODE_WORKER,
    JobMode.CLAUDE_CODE: pb.JOB_MODE_CLAUDE_CODE,
    JobMode.AGENT: pb.JOB_MODE_AGENT,
}
_MODES_FROM_PB = {int(value): mode for mode, value in _MODES_PB.items()}


def mode_from_pb(value: int) -> JobMode:
    return _MODES_FROM_PB.get(int(value), JobMode.WORKER)


def mode_to_pb(mode: JobMode) -> int:
    return int(_MODES_PB[mode])


def reason_from_pb(value: int) -> TerminalReason:
    name = pb.TerminalReason.Name(value).removeprefix(_REASON_PREFIX)  # type: ignore[arg-type]
    return TerminalReason[name]


def usage_from_pb(usage: pb.LlmUsage) -> LlmUsage:
    return LlmUsage(
        calls=usage.calls, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens
    )


def limits_from_pb(limits: pb.JobLimits) -> JobLimits:
    return JobLimits(
        max_iterations=limits.max_iterations,
        timeout_seconds=limits.timeout_seconds,
        memory_mb=limits.memory_mb,
        llm_token_budget=limits.llm_token_budget,
        llm_call_budget=limits.llm_call_budget,
        llm_max_tokens_per_call=limits.llm_max_tokens_per_call,
        claude_max_turns=limits.claude_max_turns,
        claude_model=limits.claude_model,
    )


def limits_to_pb(limits: JobLimits) -> pb.JobLimits:
    return pb.JobLimits(
        max_iterations=limits.max_iterations,
        timeout_seconds=limits.timeout_seconds,
        memory_mb=limits.memory_mb,
        llm_token_budget=limits.llm_token_budget,
        llm_call_budget=limits.llm_call_budget,
        llm_max_tokens_per_call=limits.llm_max_tokens_per_call,
        claude_max_turns=limits.claude_max_turns,
        claude_model=limits.claude_model,
    )


def result_from_pb(result: pb.JobResult) -> JobResult:
    return JobResult(
        success=result.success,
        reason=reason_from_pb(result.reason),
        message=result.message,
        iterations=result.iterations,
        exit_code=result.exit_code,
        details=json_format.MessageToDict(result.details) if result.HasField("details") else {},
        finished_at=_time(result, "finished_at"),
        proto=result,
    )


def job_from_pb(job: pb.Job) -> Job:
    return Job(
        job_id=job.job_id,
        task=job.task,
        mode=mode_from_pb(job.mode),
        state=state_from_pb(job.state),
        project_dir=job.project_dir,
        container_name=job.container_name,
        created_at=_time(job, "created_at"),
        started_at=_time(job, "started_at"),
        finished_at=_time(job, "finished_at"),
        deadline=_time(job, "deadline"),
        result=result_from_pb(job.result) if job.HasField("result") else None,
        status_message=job.status_message,
        iteration=job.iteration,
        usage=usage_from_pb(job.usage),
        labels=dict(job.labels),
        credential_names=tuple(job.credential_names),
        llm_provider=job.llm_provider,
        log_tail=job.log_tail,
        limits=limits_from_pb(job.limits),
        last_sequence=job.last_sequence,
        mcp_servers=tuple(job.mcp_servers),
        wasm_tools=tuple(job.wasm_tools),
        agent=job.agent,
        proto=job,
    )


def update_from_pb(update: pb.JobUpdate) -> JobUpdate | None:
    """One WatchJob item; None for a kind this client does not know (a newer server)."""
    seq = update.sequence
    when = _time(update, "time")
    kind = update.WhichOneof("update")
    if kind == "snapshot":
        return Snapshot(seq, when, job_from_pb(update.snapshot), proto=update)
    if kind == "state_change":
        change = update.state_change
        return StateChanged(seq, when, state_from_pb(change.state), change.reason, proto=update)
    if kind == "status":
        status = update.status
        return StatusUpdate(seq, when, status.message, status.iteration, proto=update)
    if kind == "event":
        data = json_format.MessageToDict(update.event.data)
        return Event(seq, when, update.event.event_type, data, proto=update)
    if kind == "usage":
        return UsageUpdate(seq, when, usage_from_pb(update.usage), proto=update)
    if kind == "result":
        return ResultUpdate(seq, when, result_from_pb(update.result), proto=update)
    return None


_INJECT_FORMATS = {
    "": pb.CREDENTIAL_INJECT_FORMAT_UNSPECIFIED,
    "bearer": pb.CREDENTIAL_INJECT_FORMAT_BEARER,
    "token": pb.CREDENTIAL_INJECT_FORMAT_TOKEN,
    "basic": pb.CREDENTIAL_INJECT_FORMAT_BASIC,
    "raw": pb.CREDENTIAL_INJECT_FORMAT_RAW,
}


def inject_format_to_pb(name: str) -> int:
    """``bearer``, ``token``, ``basic`` or ``raw`` (any case); ValueError for anything else."""
    try:
        return _INJECT_FORMATS[name.strip().lower()]
    except KeyError:
        raise ValueError(
            f"inject_format {name[:32]!r} is unknown: use bearer, token, basic or raw"
        ) from None


def create_request(
    *,
    task: str,
    job_id: str,
    project_dir: str,
    mode: JobMode,
    credentials: Iterable[CredentialGrant],
    limits: JobLimits | None,
    labels: Mapping[str, str] | None,
    wait_for_prompts: bool,
    mcp_servers: Iterable[str],
    wasm_tools: Iterable[str],
    git: GitWorkspace | None = None,
    node_labels: Mapping[str, str] | None = None,
    agent: str = "",
) -> pb.CreateJobRequest:
    return pb.CreateJobRequest(
        task=task,
        job_id=job_id,
        project_dir=project_dir,
        # Naming an agent selects agent mode (the default mode is the worker's).
        mode=mode_to_pb(JobMode.AGENT if agent else mode),  # type: ignore[arg-type]
        credentials=[
            pb.CredentialGrant(
                name=grant.name,
                credential_type=grant.credential_type,
                value=grant.value,
                env_name=grant.env_name,
                inject_hosts=list(grant.inject_hosts),
                inject_header=grant.inject_header,
                inject_format=inject_format_to_pb(grant.inject_format),  # type: ignore[arg-type]
            )
            for grant in credentials
        ],
        limits=limits_to_pb(limits or JobLimits()),
        labels=dict(labels or {}),
        wait_for_prompts=wait_for_prompts,
        mcp_servers=list(mcp_servers),
        wasm_tools=list(wasm_tools),
        git=(
            pb.GitWorkspace(url=git.url, ref=git.ref, credential=git.credential)
            if git is not None
            else None
        ),
        placement=pb.JobPlacement(node_labels=dict(node_labels or {})) if node_labels else None,
        agent=agent,
    )


def list_request(states: Iterable[JobState], page_size: int, page_token: str) -> pb.ListJobsRequest:
    return pb.ListJobsRequest(
        states=[state_to_pb(s) for s in states],  # type: ignore[misc]
        page_size=page_size,
        page_token=page_token,
    )
