"""The store's JSON encoding of a job record keeps the custom tools it was granted."""

from __future__ import annotations

import json

from orchestrator.domain.jobs import GrantedTools
from orchestrator.jobs.persistence import record_from_json, record_to_json
from orchestrator.jobs.record import JobRecord
from tests.helpers import job_record


def record(tools: GrantedTools | None = None) -> JobRecord:
    extra = {"tools": tools} if tools is not None else {}
    return job_record(credential_names=("github",), llm_provider="scripted", **extra)


def test_granted_tools_survive_the_store_round_trip() -> None:
    tools = GrantedTools(
        mcp_servers=({"name": "gh", "type": "stdio", "command": "gh-mcp", "args": [], "env": {}},),
        wasm_tools=({"name": "wc", "description": "d", "module_sha256": "ab" * 32},),
    )
    stored = json.loads(json.dumps(record_to_json(record(tools))))
    restored = record_from_json(stored, 2000)
    assert restored.tools == tools
    assert restored.snapshot().mcp_servers == ("gh",)
    assert restored.snapshot().wasm_tools == ("wc",)


def test_records_without_tools_store_none_and_read_back_empty() -> None:
    stored = record_to_json(record())
    assert stored["tools"] is None
    del stored["tools"]  # a record written before custom tools existed
    restored = record_from_json(stored, 2000)
    assert restored.tools == GrantedTools()
    assert restored.snapshot().mcp_servers == ()
