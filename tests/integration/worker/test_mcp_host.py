"""The worker's MCP host against real MCP servers written with the official SDK: stdio servers
it starts itself, and a streamable-HTTP server that requires a bearer header."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ironclaw_contract.mcp_catalog import McpServerEntry, parse_entry
from tests.conftest import ROOT
from worker.tools.mcp import McpHost, namespaced_tool_name

DEMO_SERVER = ROOT / "tests" / "fixtures" / "mcp" / "demo_server.py"
SECRET = "s3cr3t-granted-value"


def stdio_entry(name: str = "demo", **overrides: Any) -> McpServerEntry:
    raw: dict[str, Any] = {"command": sys.executable, "args": [str(DEMO_SERVER)], **overrides}
    return parse_entry(name, raw, "test")


@pytest.fixture
def host(tmp_path: Path) -> Iterator[McpHost]:
    with McpHost(tmp_path, {"github": SECRET}, secrets=[SECRET]) as started:
        yield started


def test_a_stdio_servers_tools_are_offered_namespaced_and_called(
    host: McpHost, tmp_path: Path
) -> None:
    entry = stdio_entry(env={"GH_TOKEN": "${credential:github}"})
    [report] = host.start([entry])
    assert report.started, report.message
    names = {tool.name for tool in host.tools}
    assert {"demo__add", "demo__read_env", "demo__where", "demo__fail"} <= names
    assert "demo__add" in report.message
    add = next(tool for tool in host.tools if tool.name == "demo__add")
    assert add.description.startswith("[MCP demo] Adds two integers")
    assert add.parameters["type"] == "object"
    assert set(add.parameters["properties"]) == {"a", "b"}

    assert host.call("demo", "add", {"a": 2, "b": 40}).output == "42"
    # The credential reference was resolved for the server, and only where the entry says.
    assert host.call("demo", "read_env", {"name": "GH_TOKEN"}).output == SECRET
    assert host.call("demo", "read_env", {"name": "GITHUB_TOKEN"}).output == "<unset>"
    assert f"cwd={tmp_path}" in host.call("demo", "where", {}).output


def test_tool_errors_come_back_as_error_results(host: McpHost) -> None:
    [report] = host.start([stdio_entry()])
    assert report.started
    failed = host.call("demo", "fail", {"message": "the disk is on fire"})
    assert failed.is_error
    assert "the disk is on fire" in failed.output
    bad_args = host.call("demo", "add", {"a": "two"})
    assert bad_args.is_error
    unknown = host.call("demo", "no_such_tool", {})
    assert unknown.is_error


def test_servers_that_do_not_start_are_reported_and_left_out(host: McpHost) -> None:
    entries = [
        stdio_entry("good"),
        parse_entry("missing", {"command": "/nonexistent/mcp-server"}, "test"),
        stdio_entry(
            "crashes",
            args=[str(DEMO_SERVER), "--exit-at-start", "3"],
            env={"DEMO_SECRET": "${credential:github}"},
        ),
        parse_entry("silent", {"command": "sleep", "args": ["60"], "startup_timeout_s": 1}, "t"),
        stdio_entry("ungranted", env={"X_TOKEN": "${credential:not-granted}"}),
    ]
    started = time.monotonic()
    reports = {report.name: report for report in host.start(entries)}
    # Servers start concurrently: the silent one's timeout bounds the whole start.
    assert time.monotonic() - started < 20
    assert reports["good"].started
    assert not reports["missing"].started
    assert "FileNotFoundError" in reports["missing"].message
    assert not reports["crashes"].started
    # Its stderr is in the report, with the granted secret masked.
    assert "demo server refusing to start: ***" in reports["crashes"].message
    assert SECRET not in reports["crashes"].message
    assert not reports["silent"].started
    assert "no answer within 1 s" in reports["silent"].message
    assert not reports["ungranted"].started
    assert "credential 'not-granted' is not granted" in reports["ungranted"].message
    assert {tool.name.split("__")[0] for tool in host.tools} == {"good"}


def test_a_slow_call_times_out_and_a_dead_server_is_reported(host: McpHost) -> None:
    [report] = host.start([stdio_entry(call_timeout_s=1)])
    assert report.started
    started = time.monotonic()
    slow = host.call("demo", "sleep", {"seconds": 30})
    assert slow.is_error
    assert "timed out after 1 s" in slow.output
    assert time.monotonic() - started < 10
    died = host.call("demo", "die", {})
    assert died.is_error
    after = host.call("demo", "add", {"a": 1, "b": 1})
    assert after.is_error
    assert "demo" in after.output


def test_close_stops_the_stdio_servers(tmp_path: Path) -> None:
    host = McpHost(tmp_path, {})
    [report] = host.start([stdio_entry()])
    assert report.started
    pid = int(host.call("demo", "pid", {}).output)
    assert _alive(pid)
    host.close()
    assert not _alive(pid)
    after = host.call("demo", "add", {"a": 1, "b": 2})
    assert after.is_error
    assert "closed" in after.output


def _alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_tool_names_are_reduced_to_what_providers_accept() -> None:
    assert namespaced_tool_name("srv", "read.file/v2") == "srv__read_file_v2"
    assert len(namespaced_tool_name("s" * 32, "t" * 80)) == 64


# ------------------------------------------------------------ streamable HTTP


@pytest.fixture
def http_server() -> Iterator[str]:
    """The demo server's tools over streamable HTTP on a free loopback port, behind a bearer
    check, run by uvicorn in a thread."""
    import uvicorn

    sys.path.insert(0, str(DEMO_SERVER.parent))
    try:
        import demo_server
    finally:
        sys.path.remove(str(DEMO_SERVER.parent))
    inner = demo_server.server.streamable_http_app()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            if headers.get(b"authorization") != f"Bearer {SECRET}".encode():
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"unauthorized"})
                return
        await inner(scope, receive, send)

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not (server.started and server.servers):
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn stopped"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/mcp"
    server.should_exit = True
    thread.join(timeout=10)


def test_an_http_server_gets_the_referenced_bearer_header(host: McpHost, http_server: str) -> None:
    allowed = parse_entry(
        "remote",
        {"url": http_server, "headers": {"Authorization": "Bearer ${credential:github}"}},
        "test",
    )
    refused = parse_entry("anonymous", {"url": http_server, "startup_timeout_s": 10}, "test")
    reports = {report.name: report for report in host.start([allowed, refused])}
    assert reports["remote"].started, reports["remote"].message
    assert host.call("remote", "add", {"a": 20, "b": 22}).output == "42"
    assert not reports["anonymous"].started
    assert f"HTTP 401 from {http_server}" in reports["anonymous"].message
    assert SECRET not in reports["remote"].message
