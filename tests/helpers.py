"""Small helpers shared by tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from orchestrator.domain.jobs import JobLimits, JobMode
from orchestrator.jobs.record import JobRecord, utcnow


async def wait_for(
    predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Polls ``predicate`` (sync or async) until it returns a truthy value or time runs out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(interval)


TEST_LIMITS = JobLimits(
    max_iterations=5,
    timeout_seconds=600,
    memory_mb=256,
    llm_token_budget=0,
    llm_call_budget=0,
    llm_max_tokens_per_call=1024,
    claude_max_turns=5,
    claude_model="",
)


def job_record(
    job_id: str | None = None,
    *,
    order: int = 1,
    created_at: datetime | None = None,
    history_limit: int = 2000,
    **fields: Any,
) -> JobRecord:
    """A job record as the manager holds one, for tests that need no orchestrator; any other
    field of :class:`JobRecord` can be given."""
    job_id = job_id or str(uuid.uuid4())
    created = created_at or utcnow()
    values: dict[str, Any] = {
        "job_id": job_id,
        "order": order,
        "task": f"job {order}",
        "mode": JobMode.WORKER,
        "project_dir": f"/nowhere/{job_id}",
        "container_name": f"ironclaw-worker-{job_id[:8]}",
        "created_at": created,
        "limits": TEST_LIMITS,
        "deadline": created + timedelta(seconds=TEST_LIMITS.timeout_seconds),
        "labels": {},
        "credential_names": (),
        "llm_provider": "none",
        "wait_for_prompts": False,
        "history_limit": history_limit,
    }
    return JobRecord(**(values | fields))
