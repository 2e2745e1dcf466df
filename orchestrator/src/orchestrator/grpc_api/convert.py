"""Protobuf ⇄ domain conversions. Protobuf types stop here and in the servicer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from ironclaw_client.api.v1 import jobs_pb2 as pb
from orchestrator.domain.jobs import (
    CreateJobRequest,
    CredentialGrant,
    GitSource,
    InjectFormat,
    JobLimitOverrides,
    JobLimits,
    JobMode,
    JobResult,
    JobSnapshot,
    JobState,
    JobUpdate,
    LlmUsage,
    TerminalReason,
    UpdateKind,
)
from orchestrator.errors import InvalidArgument
from orchestrator.secrets import Secret

STATE_TO_PB = {
    JobState.CREATING: pb.JOB_STATE_CREATING,
    JobState.RUNNING: pb.JOB_STATE_RUNNING,
    JobState.STOPPED: pb.JOB_STATE_STOPPED,
    JobState.FAILED: pb.JOB_STATE_FAILED,
}
STATE_FROM_PB = {v: k for k, v in STATE_TO_PB.items()}
MODE_TO_PB = {
    JobMode.WORKER: pb.JOB_MODE_WORKER,
    JobMode.CLAUDE_CODE: pb.JOB_MODE_CLAUDE_CODE,
    JobMode.AGENT: pb.JOB_MODE_AGENT,
}
MODE_FROM_PB = {v: k for k, v in MODE_TO_PB.items()}
REASON_TO_PB = {
    reason: pb.TerminalReason.Value(f"TERMINAL_REASON_{reason.value}") for reason in TerminalReason
}


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    # Timestamp.FromDatetime was a quarter of a ListJobs call; the arithmetic is the same.
    micros = round(value.timestamp() * 1_000_000)
    return timestamp_pb2.Timestamp(seconds=micros // 1_000_000, nanos=(micros % 1_000_000) * 1000)


def to_struct(data: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    if not data:
        return None
    struct = struct_pb2.Struct()
    # Round-trip through JSON so non-JSON values (numbers as ints, nested tuples) are normalized.
    json_format.Parse(json.dumps(data, default=str), struct)
    return struct


def create_request_from_pb(request: pb.CreateJobRequest) -> CreateJobRequest:
    if request.mode == pb.JOB_MODE_UNSPECIFIED:
        # Naming an agent is asking for agent mode.
        mode = JobMode.AGENT if request.agent else JobMode.WORKER
    elif request.mode in MODE_FROM_PB:
        mode = MODE_FROM_PB[request.mode]
    else:
        raise InvalidArgument(
            f"mode {request.mode} is unknown: use JOB_MODE_WORKER, JOB_MODE_CLAUDE_CODE or "
            "JOB_MODE_AGENT"
        )
    limits = request.limits
    return CreateJobRequest(
        task=request.task,
        mode=mode,
        project_dir=request.project_dir or None,
        credentials=tuple(
            CredentialGrant(
                name=grant.name,
                credential_type=grant.credential_type,
                value=Secret(grant.value),
                env_name=grant.env_name,
                inject_hosts=tuple(grant.inject_hosts),
                inject_header=grant.inject_header,
                inject_format=_inject_format(grant.inject_format),
            )
            for grant in request.credentials
        ),
        limits=JobLimitOverrides(
            max_iterations=limits.max_iterations or None,
            timeout_seconds=limits.timeout_seconds or None,
            memory_mb=limits.memory_mb or None,
            llm_token_budget=limits.llm_token_budget or None,
            llm_call_budget=limits.llm_call_budget or None,
            llm_max_tokens_per_call=limits.llm_max_tokens_per_call or None,
            claude_max_turns=limits.claude_max_turns or None,
            claude_model=limits.claude_model or None,
        ),
        labels=dict(request.labels),
        job_id=request.job_id or None,
        wait_for_prompts=request.wait_for_prompts,
        mcp_servers=tuple(request.mcp_servers),
        wasm_tools=tuple(request.wasm_tools),
        egress_hosts=tuple(request.egress.allow_hosts) if request.HasField("egress") else None,
        git=(
            GitSource(url=request.git.url, ref=request.git.ref, credential=request.git.credential)
            if request.HasField("git")
            else None
        ),
        placement_node_labels=dict(request.placement.node_labels),
        agent=request.agent,
    )


def states_from_pb(states: Any) -> frozenset[JobState]:
    result = set()
    for value in states:
        if value not in STATE_FROM_PB:
            raise InvalidArgument(f"state filter {value} is unknown")
        result.add(STATE_FROM_PB[value])
    return frozenset(result)


def usage_to_pb(usage: LlmUsage) -> pb.LlmUsage:
    return pb.LlmUsage(
        calls=usage.calls, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens
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


def result_to_pb(result: JobResult) -> pb.JobResult:
    return pb.JobResult(
        success=result.success,
        reason=REASON_TO_PB[result.reason],
        message=result.message,
        iterations=result.iterations,
        exit_code=result.exit_code if result.exit_code is not None else 0,
        details=to_struct(result.details),
        finished_at=timestamp(result.finished_at),
    )


def job_to_pb(job: JobSnapshot) -> pb.Job:
    return pb.Job(
        job_id=job.job_id,
        task=job.task,
        mode=MODE_TO_PB[job.mode],
        state=STATE_TO_PB[job.state],
        project_dir=job.project_dir,
        container_name=job.container_name,
        created_at=timestamp(job.created_at),
        started_at=timestamp(job.started_at),
        finished_at=timestamp(job.finished_at),
        result=result_to_pb(job.result) if job.result else None,
        status_message=job.status_message,
        iteration=job.iteration,
        usage=usage_to_pb(job.usage),
        labels=dict(job.labels),
        credential_names=list(job.credential_names),
        llm_provider=job.llm_provider,
        log_tail=job.log_tail,
        deadline=timestamp(job.deadline),
        limits=limits_to_pb(job.limits),
        last_sequence=job.last_sequence,
        mcp_servers=list(job.mcp_servers),
        wasm_tools=list(job.wasm_tools),
        egress=(
            pb.JobEgress(allow_hosts=list(job.egress_hosts))
            if job.egress_hosts is not None
            else None
        ),
        git=(
            pb.GitWorkspace(url=job.git.url, ref=job.git.ref, credential=job.git.credential)
            if job.git is not None
            else None
        ),
        agent=job.agent.name if job.agent is not None else "",
    )


def update_to_pb(item: JobSnapshot | JobUpdate) -> pb.JobUpdate:
    if isinstance(item, JobSnapshot):
        return pb.JobUpdate(
            sequence=item.last_sequence, time=timestamp(item.created_at), snapshot=job_to_pb(item)
        )
    message = pb.JobUpdate(sequence=item.sequence, time=timestamp(item.time))
    payload = item.payload
    if item.kind is UpdateKind.STATE:
        message.state_change.CopyFrom(
            pb.StateChange(state=STATE_TO_PB[payload["state"]], reason=payload["reason"])
        )
    elif item.kind is UpdateKind.STATUS:
        message.status.CopyFrom(
            pb.StatusUpdate(message=payload["message"], iteration=payload["iteration"])
        )
    elif item.kind is UpdateKind.EVENT:
        message.event.CopyFrom(
            pb.JobEvent(event_type=payload["event_type"], data=to_struct(payload["data"]))
        )
    elif item.kind is UpdateKind.RESULT:
        message.result.CopyFrom(result_to_pb(payload["result"]))
    elif item.kind is UpdateKind.USAGE:
        message.usage.CopyFrom(usage_to_pb(payload["usage"]))
    return message


_INJECT_FORMATS = {
    pb.CREDENTIAL_INJECT_FORMAT_UNSPECIFIED: InjectFormat.BEARER,
    pb.CREDENTIAL_INJECT_FORMAT_BEARER: InjectFormat.BEARER,
    pb.CREDENTIAL_INJECT_FORMAT_TOKEN: InjectFormat.TOKEN,
    pb.CREDENTIAL_INJECT_FORMAT_BASIC: InjectFormat.BASIC,
    pb.CREDENTIAL_INJECT_FORMAT_RAW: InjectFormat.RAW,
}


def _inject_format(value: int) -> InjectFormat:
    try:
        return _INJECT_FORMATS[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument(
            f"inject_format {value} is unknown: use CREDENTIAL_INJECT_FORMAT_BEARER, _TOKEN, "
            "_BASIC or _RAW"
        ) from None


UPLOAD_FORMATS: dict[str, bool | None] = {"": None, "tar": False, "tar.gz": True, "tgz": True}


def upload_format(name: str) -> bool | None:
    """UploadWorkspaceMetadata.format → compressed (None: recognised from the bytes)."""
    try:
        return UPLOAD_FORMATS[name.strip().lower()]
    except KeyError:
        raise InvalidArgument(
            f"UploadWorkspace: format {name[:40]!r} is not one of tar, tar.gz (or empty)"
        ) from None
