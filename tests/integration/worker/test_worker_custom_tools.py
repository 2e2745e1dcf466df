"""The agent with custom tools, against the fake worker API: what ``GET /tools`` grants is
offered to the model beside the built-in tools, called like them, reported in the event stream,
and the MCP servers are stopped when the job ends."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ironclaw_contract.mcp_catalog import parse_entry
from ironclaw_contract.wasm_catalog import parse_wasm_manifest
from tests.conftest import ROOT
from tests.fakes.fake_worker_api import FakeWorkerApi, text_answer, tool_answer, tool_call
from worker.tools.registry import default_tools

DEMO_SERVER = ROOT / "tests" / "fixtures" / "mcp" / "demo_server.py"
EXAMPLES = ROOT / "deploy" / "wasm-tools"
SECRET = "granted-value-0123456789"


def granted_tools() -> dict[str, Any]:
    demo = parse_entry(
        "demo",
        {
            "command": sys.executable,
            "args": [str(DEMO_SERVER)],
            "env": {"DEMO_TOKEN": "${credential:demo}"},
        },
        "test",
    )
    broken = parse_entry("broken", {"command": "/nonexistent/server"}, "test")
    manifest = parse_wasm_manifest(
        "word-count", json.loads((EXAMPLES / "word-count.json").read_text()), "test"
    )
    module = (EXAMPLES / manifest.module).read_bytes()
    return {
        "mcp_servers": [demo.to_wire(), broken.to_wire()],
        "wasm_tools": [manifest.to_wire(module)],
        "unavailable": ["WASM tool 'old': its module changed"],
    }


def _alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


async def test_granted_custom_tools_are_offered_called_and_stopped(
    fake_api: FakeWorkerApi, run_agent: Any
) -> None:
    fake_api.credentials = {"demo": SECRET}
    fake_api.tools = granted_tools()
    fake_api.script = [
        tool_answer(
            tool_call("demo__add", {"a": 2, "b": 3}),
            tool_call("demo__read_env", {"name": "DEMO_TOKEN"}),
            tool_call("demo__pid", {}),
            tool_call("word-count", {"text": "a b\nc"}),
            tool_call("broken__anything", {}),
        ),
        text_answer("done"),
    ]

    assert await run_agent() == 0

    notes = [data["message"] for kind, data in fake_api.events if kind == "status"]
    assert notes[0] == "WASM tool 'old': its module changed"
    assert any(n.startswith("MCP server 'broken' left out: FileNotFoundError") for n in notes)
    assert any(n.startswith("MCP server 'demo' started") for n in notes)
    first, second = fake_api.llm_requests
    offered = [tool["name"] for tool in first["tools"]]
    builtin = [tool.name for tool in default_tools()]
    assert offered[: len(builtin)] == builtin  # the built-in tools come first
    assert {"demo__add", "demo__pid", "word-count"} <= set(offered)
    assert "demo__add" in first["messages"][0]["content"]  # listed in the system prompt too
    results = [m["content"] for m in second["messages"] if m["role"] == "tool"]
    assert results[0] == "5"
    assert results[1] == "***"  # the server saw the credential; its value is masked
    assert json.loads(results[3]) == {"lines": 1, "words": 3, "chars": 5}
    assert "unknown tool 'broken__anything'" in results[4]
    tool_results = [data for kind, data in fake_api.events if kind == "tool_result"]
    assert [r["tool_name"] for r in tool_results][:4] == [
        "demo__add",
        "demo__read_env",
        "demo__pid",
        "word-count",
    ]
    assert SECRET not in json.dumps(fake_api.llm_requests)
    assert not _alive(int(results[2]))  # the server was stopped with the job


async def test_an_orchestrator_without_the_tools_route_leaves_the_built_in_tools(
    fake_api: FakeWorkerApi, run_agent: Any
) -> None:
    fake_api.tools = None
    fake_api.script = [text_answer("nothing to do")]
    assert await run_agent() == 0
    [request] = fake_api.llm_requests
    assert len(request["tools"]) == 7
    assert [r.status for r in fake_api.to("tools")] == [404]
