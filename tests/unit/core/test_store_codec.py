"""The store's JSON encoding of a job record keeps the custom tools it was granted."""

from __future__ import annotations

import json
from datetime import timedelta

from orchestrator.jobs.models import GrantedTools, JobLimits, JobMode
from orchestrator.jobs.record import JobRecord, utcnow
from orchestrator.store.codec import record_from_json, record_to_json

LIMITS = JobLimits(50, 3600, 2048, 0, 0, 8192, 50, "sonnet")


def record(tools: GrantedTools | None = None) -> JobRecord:
    now = utcnow()
    extra = {"tools": tools} if tools is not None else {}
    return JobRecord(
        job_id="6f1c2a1e-8f7c-4a43-9d59-3c1f1b0f2d11",
        order=1,
        task="t",
        mode=JobMode.WORKER,
        project_dir="/p",
        container_name="worker-x",
        created_at=now,
        limits=LIMITS,
        deadline=now + timedelta(hours=1),
        labels={},
        credential_names=("github",),
        llm_provider="scripted",
        wait_for_prompts=False,
        history_limit=10,
        **extra,
    )


def test_granted_tools_survive_the_store_round_trip() -> None:
    tools = GrantedTools(
        mcp_servers=({"name": "gh", "type": "stdio", "command": "gh-mcp", "args": [], "env": {}},),
        wasm_tools=({"name": "wc", "description": "d", "module_sha256": "ab" * 32},),
    )
    stored = json.loads(json.dumps(record_to_json(record(tools))))
    restored = record_from_json(stored, 10)
    assert restored.tools == tools
    assert restored.snapshot().mcp_servers == ("gh",)
    assert restored.snapshot().wasm_tools == ("wc",)


def test_records_without_tools_store_none_and_read_back_empty() -> None:
    stored = record_to_json(record())
    assert stored["tools"] is None
    del stored["tools"]  # a record written before custom tools existed
    restored = record_from_json(stored, 10)
    assert restored.tools == GrantedTools()
    assert restored.snapshot().mcp_servers == ()
