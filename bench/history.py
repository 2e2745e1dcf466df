"""A job history written straight into the orchestrator's SQLite store, for the control-plane
and footprint benchmarks: N ended jobs, each as the product would have persisted it (the row
from ``record_to_json``, plus its updates), so the orchestrator restores them at start without
any container ever being run.

Each job gets the updates a short real job leaves behind: Creating → Running, two status lines,
one event, Running → Stopped and its result (7 rows).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

from orchestrator.domain.jobs import (
    JobLimits,
    JobMode,
    JobResult,
    JobState,
    JobUpdate,
    LlmUsage,
    TerminalReason,
    UpdateKind,
)
from orchestrator.jobs.persistence import record_to_json
from orchestrator.jobs.record import JobRecord, utcnow
from orchestrator.store.sqlite_store import SqliteJobStore

LIMITS = JobLimits(
    max_iterations=50,
    timeout_seconds=3600,
    memory_mb=2048,
    llm_token_budget=0,
    llm_call_budget=0,
    llm_max_tokens_per_call=4096,
    claude_max_turns=50,
    claude_model="",
)


def ended_job(order: int, projects_dir: Path) -> tuple[JobRecord, list[JobUpdate]]:
    """One ended job (succeeded, container torn down) and its update history."""
    job_id = str(uuid.uuid4())
    created = utcnow() - timedelta(hours=1, seconds=order)
    finished = created + timedelta(seconds=42)
    result = JobResult(
        success=True,
        reason=TerminalReason.COMPLETED,
        message="done: fixed the failing test and pushed the branch",
        finished_at=finished,
        iterations=7,
        exit_code=0,
    )
    job = JobRecord(
        job_id=job_id,
        order=order,
        task=f"bench history job {order}: fix the flaky test in module_{order % 97}.py",
        mode=JobMode.WORKER,
        project_dir=str(projects_dir / job_id),
        container_name=f"ironclaw-worker-{job_id[:8]}",
        created_at=created,
        limits=LIMITS,
        deadline=created + timedelta(seconds=LIMITS.timeout_seconds),
        labels={"team": "bench", "repo": f"repo-{order % 13}"},
        credential_names=(),
        llm_provider="openai",
        wait_for_prompts=False,
        history_limit=2000,
        state=JobState.STOPPED,
        started_at=created + timedelta(seconds=1),
        finished_at=finished,
        result=result,
        status_message="done",
        iteration=7,
        usage=LlmUsage(calls=7, input_tokens=12_000, output_tokens=1_800),
        log_tail="",
        container_id=None,
        sequence=7,
    )
    t = created
    payloads: list[tuple[UpdateKind, dict[str, object]]] = [
        (UpdateKind.STATE, {"state": JobState.RUNNING, "reason": "container started"}),
        (UpdateKind.STATUS, {"message": "reading the repository", "iteration": 1}),
        (UpdateKind.EVENT, {"event_type": "tool_use", "data": {"tool": "shell", "cmd": "pytest"}}),
        (UpdateKind.STATUS, {"message": "done", "iteration": 7}),
        (UpdateKind.USAGE, {"usage": job.usage}),
        (UpdateKind.STATE, {"state": JobState.STOPPED, "reason": "completed"}),
        (UpdateKind.RESULT, {"result": result}),
    ]
    updates = []
    for seq, (kind, payload) in enumerate(payloads, start=1):
        t += timedelta(seconds=5)
        updates.append(JobUpdate(sequence=seq, time=t, kind=kind, payload=dict(payload)))
    return job, updates


def populate_store(store_path: Path, jobs: int, projects_dir: Path) -> None:
    """Writes ``jobs`` ended jobs through the product's own store and codec."""
    store = SqliteJobStore(store_path)
    for order in range(1, jobs + 1):
        job, updates = ended_job(order, projects_dir)
        store.save_job(record_to_json(job))
        for update in updates:
            store.append_update(job.job_id, update)
    asyncio.run(store.close())
