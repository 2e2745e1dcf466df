"""The operator's catalogues of custom tools a job may be granted.

- MCP servers: ``<IRONCLAW_BASE_DIR>/mcp-servers.json``, the common ``{"mcpServers": {...}}``
  shape (``ironclaw_contract.mcp_catalog`` says what an entry may hold).
- WASM tools: ``<IRONCLAW_BASE_DIR>/wasm-tools/<name>.json`` manifests, each naming its module
  (``.wasm`` or ``.wat``) in the same directory (``ironclaw_contract.wasm_catalog``).

Both are read when they change, so an operator edits them without a restart; a broken catalogue
stops the orchestrator's start, and later edits that break it make the ``CreateJob`` calls that
need it fail with the file's problem instead of silently using something else. A job keeps what
it was granted at creation: the MCP entries themselves and each module's SHA-256, checked again
when the module is handed to the job.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ironclaw_contract.mcp_catalog import (
    McpConfigError,
    McpServerEntry,
    check_distinct_names,
    check_server_name,
    find_by_name,
    name_key,
    parse_catalog,
)
from ironclaw_contract.wasm_catalog import MAX_MODULE_BYTES, WasmToolManifest, parse_wasm_manifest
from orchestrator.domain.jobs import GrantedTools
from orchestrator.errors import ConfigError, FailedPrecondition, InvalidArgument
from orchestrator.logging import get_logger

log = get_logger(__name__)

MCP_CATALOG_FILE = "mcp-servers.json"
WASM_TOOLS_DIR = "wasm-tools"
MAX_MCP_SERVERS_PER_JOB = 16
MAX_WASM_TOOLS_PER_JOB = 32
_MAX_CATALOG_BYTES = 1 << 20


@dataclass(frozen=True)
class FileStamp:
    """What identifies one version of a file without reading it."""

    mtime_ns: int
    size: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileStamp | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return cls(st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass(frozen=True)
class _WasmTool:
    manifest: WasmToolManifest
    module: bytes
    sha256: str


class ToolCatalog:
    """Reads, validates and grants the catalogue entries under ``base_dir``."""

    def __init__(self, base_dir: Path) -> None:
        self.mcp_path = base_dir / MCP_CATALOG_FILE
        self.wasm_dir = base_dir / WASM_TOOLS_DIR
        self._mcp: tuple[FileStamp | None, dict[str, McpServerEntry]] | None = None
        self._wasm: dict[str, tuple[tuple[FileStamp | None, FileStamp | None], _WasmTool]] = {}

    def check(self) -> tuple[int, int]:
        """Validates every entry (at start); raises ConfigError naming the file and the
        problem. Returns the number of MCP servers and WASM tools."""
        try:
            servers = self.mcp_servers()
            tools = [self._wasm_tool(name) for name in self.wasm_tool_names()]
        except FailedPrecondition as exc:
            raise ConfigError(exc.message) from None
        return len(servers), len(tools)

    # ------------------------------------------------------------ MCP servers

    def mcp_servers(self) -> dict[str, McpServerEntry]:
        """The catalogue's servers (empty when the file does not exist)."""
        stamp = FileStamp.of(self.mcp_path)
        if self._mcp is not None and self._mcp[0] == stamp:
            return self._mcp[1]
        servers: dict[str, McpServerEntry] = {}
        if stamp is not None:
            document = read_catalog_json(self.mcp_path)
            try:
                servers = parse_catalog(document, str(self.mcp_path))
            except McpConfigError as exc:
                raise FailedPrecondition(f"the MCP server catalogue is invalid: {exc}") from None
            log.info("MCP server catalogue loaded", path=str(self.mcp_path), servers=len(servers))
        self._mcp = (stamp, servers)
        return servers

    # ------------------------------------------------------------ WASM tools

    def wasm_tool_names(self) -> list[str]:
        """The names of the manifests in the WASM tools directory."""
        try:
            return sorted(p.stem for p in self.wasm_dir.glob("*.json") if p.is_file())
        except OSError:
            return []

    def _wasm_spelling(self, name: str) -> str:
        """The catalogue's spelling of the tool ``name`` (matched case-insensitively)."""
        names = self.wasm_tool_names()
        try:
            check_distinct_names(names, f"{self.wasm_dir}: WASM tools")
        except McpConfigError as exc:
            raise FailedPrecondition(f"the WASM tool catalogue is invalid: {exc}") from None
        found = find_by_name(dict.fromkeys(names), name)
        if found is None:
            raise InvalidArgument(
                f"WASM tool {name!r} is not in the catalogue {self.wasm_dir}; "
                f"known: {', '.join(names) or 'none'}"
            )
        return found[0]

    def _wasm_tool(self, requested: str) -> _WasmTool:
        name = self._wasm_spelling(requested)
        manifest_path = self.wasm_dir / f"{name}.json"
        manifest_stamp = FileStamp.of(manifest_path)
        if manifest_stamp is None:
            raise InvalidArgument(f"WASM tool {name!r} vanished from the catalogue {self.wasm_dir}")
        cached = self._wasm.get(name)
        if cached is not None and cached[0][0] == manifest_stamp:
            module_path = self.wasm_dir / cached[1].manifest.module
            if cached[0][1] == FileStamp.of(module_path):
                return cached[1]
        where = str(manifest_path)
        try:
            manifest = parse_wasm_manifest(name, read_catalog_json(manifest_path), where)
        except ValueError as exc:
            raise FailedPrecondition(f"the WASM tool manifest is invalid: {exc}") from None
        module_path = self.wasm_dir / manifest.module
        module_stamp = FileStamp.of(module_path)
        if module_stamp is None:
            raise FailedPrecondition(f"{where}: its module {module_path} does not exist")
        if module_stamp.size > MAX_MODULE_BYTES:
            raise FailedPrecondition(
                f"{where}: its module is {module_stamp.size} bytes; the limit is {MAX_MODULE_BYTES}"
            )
        try:
            module = module_path.read_bytes()
        except OSError as exc:
            raise FailedPrecondition(f"{where}: cannot read its module: {exc}") from None
        tool = _WasmTool(manifest, module, hashlib.sha256(module).hexdigest())
        self._wasm[name] = ((manifest_stamp, module_stamp), tool)
        return tool

    def wasm_module(self, name: str, sha256: str) -> bytes | None:
        """The module granted to a job, if the catalogue still holds exactly that module."""
        try:
            tool = self._wasm_tool(name)
        except (InvalidArgument, FailedPrecondition) as exc:
            log.warning("granted WASM tool unavailable", tool=name, error=exc.message)
            return None
        return tool.module if tool.sha256 == sha256 else None

    # ------------------------------------------------------------ grants

    def grant(
        self,
        mcp_names: Iterable[str],
        wasm_names: Iterable[str],
        credential_names: Iterable[str],
    ) -> GrantedTools:
        """What a new job gets for the names it asked for; InvalidArgument for unknown,
        disabled or repeated names and for MCP entries that need a credential the job lacks."""
        mcp_requested = _unique(mcp_names, "MCP server", MAX_MCP_SERVERS_PER_JOB)
        wasm_requested = _unique(wasm_names, "WASM tool", MAX_WASM_TOOLS_PER_JOB)
        if not mcp_requested and not wasm_requested:
            return GrantedTools()
        granted_credentials = set(credential_names)
        catalogue = self.mcp_servers() if mcp_requested else {}
        servers: list[dict[str, Any]] = []
        for requested in mcp_requested:
            found = find_by_name(catalogue, requested)
            if found is None:
                raise InvalidArgument(
                    f"MCP server {requested!r} is not in the catalogue {self.mcp_path}; "
                    f"known: {', '.join(sorted(catalogue)) or 'none'}"
                )
            name, entry = found
            if entry.disabled:
                raise InvalidArgument(f"MCP server {name!r} is disabled in {self.mcp_path}")
            missing = sorted(entry.credential_references() - granted_credentials)
            if missing:
                raise InvalidArgument(
                    f"MCP server {name!r} needs the credential grant(s) {', '.join(missing)}: "
                    "add them to the job's credentials"
                )
            servers.append(entry.to_wire())
        tools: list[dict[str, Any]] = []
        for name in wasm_requested:
            tool = self._wasm_tool(name)
            tools.append({**tool.manifest.to_wire(None), "module_sha256": tool.sha256})
        return GrantedTools(mcp_servers=tuple(servers), wasm_tools=tuple(tools))

    def served_tools(self, granted: GrantedTools) -> dict[str, Any]:
        """The body of ``GET /worker/{id}/tools``: the job's MCP entries and WASM tools with
        their modules; a module that changed or vanished since the grant is listed under
        ``unavailable`` instead of being swapped for another."""
        wasm: list[dict[str, Any]] = []
        unavailable: list[str] = []
        for stored in granted.wasm_tools:
            name = str(stored["name"])
            module = self.wasm_module(name, str(stored["module_sha256"]))
            if module is None:
                unavailable.append(
                    f"WASM tool {name!r}: its module changed or vanished from the catalogue "
                    "after the job was created"
                )
                continue
            manifest = {key: value for key, value in stored.items() if key != "module_sha256"}
            wasm.append(_with_module(manifest, module))
        return {
            "mcp_servers": [dict(entry) for entry in granted.mcp_servers],
            "wasm_tools": wasm,
            "unavailable": unavailable,
        }


def _with_module(manifest: Mapping[str, Any], module: bytes) -> dict[str, Any]:
    return {**manifest, "module_base64": base64.b64encode(module).decode("ascii")}


def _unique(names: Iterable[str], kind: str, limit: int) -> list[str]:
    seen: list[str] = []
    for raw in names:
        name = raw.strip()
        try:
            check_server_name(name, f"{kind} {name[:40]!r}")
        except McpConfigError as exc:
            raise InvalidArgument(str(exc)) from None
        if name_key(name) in map(name_key, seen):
            raise InvalidArgument(f"{kind} {name!r} is named twice (names ignore case)")
        seen.append(name)
    if len(seen) > limit:
        raise InvalidArgument(f"at most {limit} {kind}s per job, {len(seen)} asked for")
    return seen


def read_catalog_json(path: Path) -> object:
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_CATALOG_BYTES + 1)
    except OSError as exc:
        raise FailedPrecondition(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > _MAX_CATALOG_BYTES:
        raise FailedPrecondition(f"{path} is larger than {_MAX_CATALOG_BYTES} bytes")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise FailedPrecondition(f"{path} is not valid JSON: {exc}") from None
