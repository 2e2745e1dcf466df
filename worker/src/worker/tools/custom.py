"""The job's custom tools, from ``GET /tools``: its MCP servers' tools and its WASM tools.

What cannot be offered (an entry that fails validation, a server that does not start, a module
that does not compile, a name already taken) is left out with a note for the job's event
stream; the job goes on with the tools that work.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ironclaw_contract.mcp_catalog import McpConfigError, McpServerEntry
from ironclaw_contract.wasm_catalog import WasmToolManifest
from worker.tools.base import Tool

if TYPE_CHECKING:
    from worker.tools.mcp import McpHost

log = logging.getLogger(__name__)

# The worker API takes at most 256 tools per call; the built-in ones come first.
MAX_CUSTOM_TOOLS = 240


@dataclass
class CustomTools:
    """Tools to offer beside the built-in ones, and what happened while preparing them.

    :meth:`close` stops the MCP servers; call it when the job's agent is done.
    """

    tools: list[Tool] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    host: McpHost | None = None

    def close(self) -> None:
        if self.host is not None:
            self.host.close()
            self.host = None


def load_custom_tools(
    document: Mapping[str, Any],
    workspace: Path,
    credentials: Mapping[str, str],
    reserved_names: Iterable[str],
) -> CustomTools:
    """Prepares the tools of a ``GET /tools`` body; never raises for a tool's problem.

    ``credentials`` maps grant names to values (for MCP ``${credential:<grant>}`` references);
    ``reserved_names`` are the built-in tools', which a custom tool cannot replace.
    """
    custom = CustomTools(notes=[str(note) for note in document.get("unavailable") or []])
    wasm_items: list[tuple[WasmToolManifest, bytes]] = []
    for raw in document.get("wasm_tools") or []:
        try:
            wasm_items.append(WasmToolManifest.from_wire(raw))
        except ValueError as exc:
            custom.notes.append(f"WASM tool left out: {exc}")
    tools: list[Tool] = []
    if wasm_items:
        # Imported only when a job has WASM tools: loading wasmtime costs start-up time.
        from worker.tools.wasm import build_wasm_tools

        built, errors = build_wasm_tools(wasm_items, workspace)
        tools.extend(built)
        custom.notes.extend(errors)
    entries: list[McpServerEntry] = []
    for raw in document.get("mcp_servers") or []:
        try:
            entries.append(McpServerEntry.from_wire(raw))
        except McpConfigError as exc:
            custom.notes.append(f"MCP server left out: {exc}")
    if entries and importlib.util.find_spec("mcp") is None:
        custom.notes.extend(
            f"MCP server {entry.name!r} left out: this image lacks the mcp package "
            "(install ironclaw-orchestrator[worker])"
            for entry in entries
        )
    elif entries:
        # Imported only when a job has MCP servers: asyncio and the rest cost start-up time
        # before the worker's first call.
        from worker.tools.mcp import McpHost

        custom.host = McpHost(workspace, credentials, secrets=credentials.values())
        custom.notes.extend(report.message for report in custom.host.start(entries))
        tools.extend(custom.host.tools)
    taken = set(reserved_names)
    for tool in tools:
        if tool.name in taken:
            custom.notes.append(f"tool {tool.name!r} left out: the name is already taken")
        elif len(custom.tools) >= MAX_CUSTOM_TOOLS:
            custom.notes.append(f"tool {tool.name!r} left out: more than {MAX_CUSTOM_TOOLS} tools")
        else:
            taken.add(tool.name)
            custom.tools.append(tool)
    for note in custom.notes:
        log.info("%s", note)
    return custom
