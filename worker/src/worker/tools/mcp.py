"""The job's MCP servers, run with the official ``mcp`` SDK and offered to the model as tools.

Stdio servers are started inside this container (as the job's user, in the workspace);
streamable-HTTP servers are connected to. Every server lives in one background event loop (the
SDK is asynchronous, the agent loop is not); the agent calls a tool through a blocking facade with
a timeout. A server that fails to start, or does not answer within its startup timeout, is
reported and left out: it never ends the job. Its tools reach the model as ``<server>__<tool>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import re
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ironclaw_contract.mcp_catalog import (
    NAMESPACE_SEPARATOR,
    McpConfigError,
    McpServerEntry,
    resolve_references,
)
from worker.tools.base import SecretMask, Tool, ToolContext, ToolResult

log = logging.getLogger(__name__)

# Provider tool names are at most 64 of [A-Za-z0-9_-].
MAX_TOOL_NAME_CHARS = 64
MAX_TOOLS_PER_SERVER = 128
MAX_DESCRIPTION_CHARS = 2_000
_STDERR_TAIL_CHARS = 2_000
_INVALID_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")
# Closing a stdio server is bounded by the SDK (stdin closed, then SIGTERM, then SIGKILL, about
# 2 s each); this bounds the whole shutdown on top of it.
_CLOSE_TIMEOUT_S = 8.0
_EMPTY_SCHEMA: Mapping[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ServerReport:
    """How starting one server went; ``message`` is for the job's event stream."""

    name: str
    started: bool
    message: str


@dataclass
class _Server:
    entry: McpServerEntry
    ready: asyncio.Future[list[Any]]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    client: Any = None
    task: asyncio.Task[None] | None = None
    errlog: IO[str] | None = None
    failure: str | None = None  # set once the connection broke after a successful start
    http_error: str | None = None  # the last HTTP error status, which the SDK does not report


class McpHost:
    """Starts the job's MCP servers and turns their tools into worker tools.

    Use as a context manager (or call :meth:`close`): closing stops every stdio server.
    ``credentials`` maps grant names to values for ``${credential:<grant>}`` references;
    ``secrets`` are masked in every message this host produces.
    """

    def __init__(
        self, workspace: Path, credentials: Mapping[str, str], secrets: Iterable[str] = ()
    ) -> None:
        self._workspace = workspace
        self._credentials = dict(credentials)
        self._mask = SecretMask(secrets)
        self._servers: dict[str, _Server] = {}
        self._tools: list[Tool] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="mcp-servers", daemon=True
        )
        self._thread.start()
        self._closed = False

    def __enter__(self) -> McpHost:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def tools(self) -> list[Tool]:
        """The tools of every server that started, namespaced ``<server>__<tool>``."""
        return list(self._tools)

    def start(self, entries: Sequence[McpServerEntry]) -> list[ServerReport]:
        """Starts (or connects to) every server at once; returns one report per server."""
        if not entries:
            return []
        deadline = max(entry.startup_timeout_s for entry in entries) + _CLOSE_TIMEOUT_S + 5
        future = asyncio.run_coroutine_threadsafe(self._start_all(entries), self._loop)
        try:
            reports = future.result(timeout=deadline)
        except FutureTimeout:
            future.cancel()
            return [
                ServerReport(e.name, False, self._failed(e.name, "start hung")) for e in entries
            ]
        taken: set[str] = set()
        for report in reports:
            if report.started:
                self._tools.extend(self._server_tools(self._servers[report.name], taken))
        return [self._with_tool_names(report) for report in reports]

    def close(self) -> None:
        """Stops every server (bounded in time) and the background loop."""
        if self._closed:
            return
        self._closed = True
        future = asyncio.run_coroutine_threadsafe(self._stop_all(), self._loop)
        with contextlib.suppress(Exception):
            future.result(timeout=_CLOSE_TIMEOUT_S + 2)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=2)
        for server in self._servers.values():
            if server.errlog is not None:
                server.errlog.close()

    # ------------------------------------------------------------ start and stop (on the loop)

    async def _start_all(self, entries: Sequence[McpServerEntry]) -> list[ServerReport]:
        loop = asyncio.get_running_loop()
        for entry in entries:
            server = _Server(entry=entry, ready=loop.create_future())
            self._servers[entry.name] = server
            server.task = loop.create_task(self._run(server), name=f"mcp:{entry.name}")
        return list(await asyncio.gather(*(self._await_ready(s) for s in self._servers.values())))

    async def _run(self, server: _Server) -> None:
        """Holds the server's client open until :meth:`close`; the SDK's task groups must be
        entered and left by the same task, so one task owns each connection."""
        from mcp import Client  # the SDK is only needed once a job asks for a server

        try:
            async with contextlib.AsyncExitStack() as stack:
                transport = await self._transport(server, stack)
                client = await stack.enter_async_context(
                    Client(transport, client_info=_client_info(), raise_exceptions=False)
                )
                listed = await _list_tools(client)
                server.client = client
                server.ready.set_result(listed)
                await server.stop.wait()
        except asyncio.CancelledError:
            if not server.ready.done():
                server.ready.cancel()
            raise
        except BaseException as exc:
            if not server.ready.done():
                server.ready.set_exception(exc)
            else:
                server.failure = describe_exception(exc)
                log.warning(
                    "MCP server %s failed: %s", server.entry.name, self._mask(server.failure)
                )
        finally:
            if server.client is not None and server.failure is None and not server.stop.is_set():
                server.failure = "the server closed the connection"

    async def _transport(self, server: _Server, stack: contextlib.AsyncExitStack) -> Any:
        entry = server.entry
        if entry.transport == "stdio":
            from mcp.client.stdio import StdioServerParameters, stdio_client

            env = {k: resolve_references(v, self._credentials) for k, v in entry.env.items()}
            params = StdioServerParameters(
                command=entry.command, args=list(entry.args), env=env, cwd=self._workspace
            )
            # The server's stderr is kept (in the container's /tmp) for the failure report
            # rather than mixed into the worker's log.
            server.errlog = tempfile.TemporaryFile(  # noqa: SIM115 - closed by close()
                mode="w+", encoding="utf-8", errors="replace"
            )
            return stdio_client(params, errlog=server.errlog)
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        headers = {k: resolve_references(v, self._credentials) for k, v in entry.headers.items()}

        async def note_errors(response: httpx2.Response) -> None:
            if response.status_code >= 400:
                server.http_error = f"HTTP {response.status_code} from {entry.url}"

        http = await stack.enter_async_context(
            httpx2.AsyncClient(
                headers=headers,
                timeout=httpx2.Timeout(30.0, read=entry.call_timeout_s + 30),
                event_hooks={"response": [note_errors]},
            )
        )
        return streamable_http_client(entry.url, http_client=http)

    async def _await_ready(self, server: _Server) -> ServerReport:
        name = server.entry.name
        timeout = server.entry.startup_timeout_s
        try:
            listed = await asyncio.wait_for(asyncio.shield(server.ready), timeout)
        except TimeoutError:
            await self._abandon(server)
            return ServerReport(name, False, self._failed(name, f"no answer within {timeout:g} s"))
        except McpConfigError as exc:
            await self._abandon(server)
            return ServerReport(name, False, self._failed(name, str(exc)))
        except BaseException as exc:
            await self._abandon(server)
            return ServerReport(name, False, self._failed(name, describe_exception(exc), server))
        return ServerReport(name, True, f"MCP server {name!r} started: {len(listed)} tool(s)")

    async def _abandon(self, server: _Server) -> None:
        task = server.task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, _CLOSE_TIMEOUT_S)

    async def _stop_all(self) -> None:
        for server in self._servers.values():
            server.stop.set()
        tasks = [s.task for s in self._servers.values() if s.task is not None and not s.task.done()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=_CLOSE_TIMEOUT_S)
        for task in pending:
            task.cancel()

    # ------------------------------------------------------------ tools

    def _server_tools(self, server: _Server, taken: set[str]) -> list[Tool]:
        tools: list[Tool] = []
        for listed in server.ready.result()[:MAX_TOOLS_PER_SERVER]:
            name = namespaced_tool_name(server.entry.name, listed.name)
            if name in taken:
                log.warning("MCP tool %s of %s skipped: name taken", listed.name, server.entry.name)
                continue
            taken.add(name)
            description = (listed.description or listed.title or listed.name).strip()
            schema = listed.input_schema if isinstance(listed.input_schema, dict) else {}
            tools.append(
                Tool(
                    name=name,
                    description=f"[MCP {server.entry.name}] {description}"[:MAX_DESCRIPTION_CHARS],
                    parameters=schema if schema.get("type") == "object" else dict(_EMPTY_SCHEMA),
                    handler=self._handler(server, listed.name),
                )
            )
        return tools

    def _handler(self, server: _Server, tool: str) -> Any:
        def call(context: ToolContext, args: Mapping[str, Any]) -> ToolResult:
            return self.call(server.entry.name, tool, args)

        return call

    def call(self, server_name: str, tool: str, args: Mapping[str, Any]) -> ToolResult:
        """Calls ``tool`` of a started server; failures come back as an error result."""
        if self._closed:
            return ToolResult("the MCP servers are closed: the job is ending", is_error=True)
        server = self._servers.get(server_name)
        if server is None or server.client is None:
            return ToolResult(f"MCP server {server_name!r} is not running", is_error=True)
        if server.failure is not None:
            return ToolResult(
                f"MCP server {server_name!r} is gone: {self._mask(server.failure)}", is_error=True
            )
        timeout = server.entry.call_timeout_s
        future = asyncio.run_coroutine_threadsafe(self._call(server, tool, dict(args)), self._loop)
        try:
            return future.result(timeout=timeout + 5)
        except FutureTimeout:
            future.cancel()
            return ToolResult(f"{tool} timed out after {timeout:g} s", is_error=True)

    async def _call(self, server: _Server, tool: str, args: dict[str, Any]) -> ToolResult:
        timeout = server.entry.call_timeout_s
        try:
            result = await asyncio.wait_for(
                server.client.call_tool(tool, args, read_timeout_seconds=timeout), timeout + 1
            )
        except TimeoutError:
            return ToolResult(f"{tool} timed out after {timeout:g} s", is_error=True)
        except Exception as exc:
            if _is_request_timeout(exc):
                # The SDK's own timeout: it has already asked the server to cancel the call.
                return ToolResult(f"{tool} timed out after {timeout:g} s", is_error=True)
            message = f"MCP server {server.entry.name!r} failed: {describe_exception(exc)}"
            return ToolResult(self._mask(message), is_error=True)
        return render_result(result)

    # ------------------------------------------------------------ messages

    def _with_tool_names(self, report: ServerReport) -> ServerReport:
        if not report.started:
            return report
        prefix = f"{report.name}{NAMESPACE_SEPARATOR}"
        names = [t.name for t in self._tools if t.name.startswith(prefix)]
        return ServerReport(report.name, True, f"{report.message}: {', '.join(names) or 'none'}")

    def _failed(self, name: str, reason: str, server: _Server | None = None) -> str:
        message = f"MCP server {name!r} left out: {reason}"
        if server is not None and server.http_error:
            message += f" ({server.http_error})"
        tail = _read_tail(server.errlog) if server is not None else ""
        if tail:
            message += f"\nits stderr ends with:\n{tail}"
        return self._mask(message)


def namespaced_tool_name(server: str, tool: str) -> str:
    """``<server>__<tool>``, reduced to the characters and length providers accept."""
    cleaned = _INVALID_NAME_CHARS.sub("_", tool) or "tool"
    return f"{server}{NAMESPACE_SEPARATOR}{cleaned}"[:MAX_TOOL_NAME_CHARS]


def render_result(result: Any) -> ToolResult:
    """An MCP ``CallToolResult`` as the text the model reads."""
    parts: list[str] = []
    for block in getattr(result, "content", None) or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(str(block.text))
        elif kind in ("image", "audio"):
            parts.append(f"[{kind} {block.mime_type}, {len(block.data)} base64 characters]")
        elif kind == "resource_link":
            parts.append(f"[resource link {block.uri}]")
        elif kind == "resource":
            resource = block.resource
            text = getattr(resource, "text", None)
            parts.append(text if isinstance(text, str) else f"[binary resource {resource.uri}]")
        else:
            parts.append(f"[{kind or 'unknown'} content]")
    structured = getattr(result, "structured_content", None)
    if not parts and structured is not None:
        parts.append(json.dumps(structured, ensure_ascii=False, default=str))
    is_error = bool(getattr(result, "is_error", False))
    output = "\n".join(parts)
    if not output:
        output = "(the tool reported an error without a message)" if is_error else "(no output)"
    return ToolResult(output, is_error=is_error)


def describe_exception(exc: BaseException) -> str:
    """One line for an exception, unwrapping the SDK's single-member exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe_exception(inner) for inner in exc.exceptions[:3])
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _is_request_timeout(exc: Exception) -> bool:
    from mcp import MCPError
    from mcp_types import REQUEST_TIMEOUT

    return isinstance(exc, MCPError) and exc.code == REQUEST_TIMEOUT


async def _list_tools(client: Any) -> list[Any]:
    tools: list[Any] = []
    cursor: str | None = None
    while len(tools) < MAX_TOOLS_PER_SERVER:
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


def _client_info() -> Any:
    from mcp import Implementation

    try:
        version = importlib.metadata.version("ironclaw-worker")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return Implementation(name="ironclaw-worker", version=version)


def _read_tail(errlog: IO[str] | None) -> str:
    if errlog is None:
        return ""
    with contextlib.suppress(OSError, ValueError):
        errlog.flush()
        errlog.seek(0)
        return errlog.read()[-_STDERR_TAIL_CHARS:].strip()
    return ""
