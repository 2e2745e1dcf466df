"""Custom tools in the real worker container: a stdio MCP server written with the official SDK,
started by the worker from the job's catalogue entry, and the example WASM tool; a server that
fails to start is reported and the job goes on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from ironclaw_client.api.v1 import jobs_pb2 as pb
from tests.conftest import ROOT
from tests.e2e.support import (
    SCRIPTS,
    RecordingScriptedProvider,
    create,
    events,
    history,
    tool_events,
    tool_results,
    wait_terminal,
)

pytestmark = pytest.mark.docker

DEMO_SERVER = ROOT / "tests" / "fixtures" / "mcp" / "demo_server.py"
EXAMPLE_TOOLS = ROOT / "deploy" / "wasm-tools"
WASM_FIXTURES = ROOT / "tests" / "fixtures" / "wasm"
DEMO_VALUE = "demo-credential-e2e-0123456789"
PYTHON = "/opt/ironclaw/bin/python"  # the worker image's venv, which carries the mcp SDK


def install_catalogues(base: Path) -> None:
    server = ["/workspace/.mcp/demo_server.py"]
    catalogue = {
        "mcpServers": {
            "demo": {
                "command": PYTHON,
                "args": server,
                "env": {"DEMO_TOKEN": "${credential:demo}"},
            },
            "broken": {"command": PYTHON, "args": [*server, "--exit-at-start", "3"]},
        }
    }
    (base / "mcp-servers.json").write_text(json.dumps(catalogue))
    shutil.copytree(EXAMPLE_TOOLS, base / "wasm-tools")
    for name, workspace in (("spin", "none"), ("escape", "read-only")):
        shutil.copy(WASM_FIXTURES / f"{name}.wat", base / "wasm-tools" / f"{name}.wat")
        manifest = {
            "description": f"the {name} test module",
            "module": f"{name}.wat",
            "workspace": workspace,
            "limits": {"timeout_s": 1, "fuel": 10**12},
        }
        (base / "wasm-tools" / f"{name}.json").write_text(json.dumps(manifest))


async def test_mcp_and_wasm_tools_run_in_the_container_and_reach_the_model(
    e2e: Any, sandbox_project: Any, base_dir: Path
) -> None:
    install_catalogues(base_dir)
    project = sandbox_project("tools")
    (project / ".mcp").mkdir()
    shutil.copy(DEMO_SERVER, project / ".mcp" / "demo_server.py")
    provider = RecordingScriptedProvider(SCRIPTS / "custom_tools.yaml")
    run = await e2e("custom_tools.yaml", provider=provider)

    job = await create(
        run.stub,
        "Use the custom tools",
        project_dir=str(project),
        credentials=[
            pb.CredentialGrant(name="demo", credential_type="api_token", value=DEMO_VALUE)
        ],
        mcp_servers=["demo", "broken"],
        wasm_tools=["word-count", "spin", "escape"],
    )
    assert list(job.mcp_servers) == ["demo", "broken"]
    assert list(job.wasm_tools) == ["word-count", "spin", "escape"]
    final = await wait_terminal(run.stub, job.job_id, timeout=120)

    assert final.state == pb.JOB_STATE_STOPPED, (final.result.message, final.log_tail)
    assert final.result.reason == pb.TERMINAL_REASON_COMPLETED
    updates = await history(run.stub, job.job_id)
    notes = [e.data["message"] for e in events(updates) if e.event_type == "status"]
    broken = [n for n in notes if "MCP server 'broken' left out" in n]
    assert broken, notes
    assert "demo server refusing to start" in broken[0]
    assert any("MCP server 'demo' started" in n and "demo__add" in n for n in notes), notes

    # Custom tools show up in the event stream like the built-in ones.
    assert tool_events(updates) == [
        (kind, name)
        for name in ("demo__add", "demo__where", "demo__read_env", "word-count", "spin", "escape")
        for kind in ("tool_use", "tool_result")
    ]
    results = {r["tool_name"]: r for r in tool_results(updates)}
    assert results["demo__add"]["output"] == "42"
    assert results["demo__where"]["output"] == "cwd=/workspace uid=1000"
    # The server got the granted credential; like every tool output, its value is masked.
    assert results["demo__read_env"]["output"] == "***"
    assert json.loads(results["word-count"]["output"]) == {"lines": 2, "words": 5, "chars": 24}
    # The endless loop is stopped by its time limit, and the job goes on.
    assert results["spin"]["is_error"]
    assert "[timed out after 1 s]" in results["spin"]["output"]
    # Nothing outside the preopened /workspace opens, whatever the path.
    assert results["escape"]["is_error"]  # exit 1: every escape failed, as it should
    assert "escapes=0" in results["escape"]["output"]
    assert "root:x:" not in results["escape"]["output"]
    assert not any(results[name]["is_error"] for name in results if name not in ("spin", "escape"))

    first, second = provider.requests
    offered = {tool.name for tool in first.tools}
    assert {"shell", "demo__add", "demo__read_env", "word-count"} <= offered
    assert not any(name.startswith("broken__") for name in offered)
    tool_messages = [m.content for m in second.messages if m.role == "tool"]
    assert tool_messages[0] == "42"  # the MCP result reached the next turn
    assert json.loads(tool_messages[3] or "") == {"lines": 2, "words": 5, "chars": 24}
    assert DEMO_VALUE not in json.dumps([m.content for m in second.messages])
