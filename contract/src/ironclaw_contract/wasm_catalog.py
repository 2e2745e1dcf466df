"""WASM tool manifests: the operator's catalogue shape and the worker API form, checked the same
way on both sides.

The orchestrator keeps one manifest per tool, ``<IRONCLAW_BASE_DIR>/wasm-tools/<name>.json``
(the tool's name is the file's stem), validated with :func:`parse_wasm_manifest`::

    {
      "description": "What the tool does, for the model.",
      "parameters": {"type": "object", "properties": {...}},     (optional)
      "module": "word_count.wat",                                (next to the manifest)
      "workspace": "none" | "read-only" | "read-write",          (optional, default "none")
      "limits": {"fuel": 1000000000, "memory_mb": 64,            (optional, each key too)
                 "timeout_s": 10, "max_output_bytes": 1048576}
    }

A job receives its tools from the worker API as :meth:`WasmToolManifest.to_wire` documents with
the module's bytes in ``module_base64`` (WAT text or a binary module), which the worker checks
again with :meth:`WasmToolManifest.from_wire`. Standard library only: this module runs in the
worker image and in the orchestrator.
"""

from __future__ import annotations

import base64
import binascii
import copy
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

WorkspaceAccess = Literal["none", "read-only", "read-write"]

# Tool names share the MCP server names' rules: MCP tools reach the model as "<server>__<tool>",
# so a WASM tool name without "__" can never collide with one of them.
TOOL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
NAMESPACE_SEPARATOR = "__"
# A plain file name next to the manifest: no separators, no "..", no hidden files.
_MODULE_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}\.(?:wasm|wat)")
_WASM_MAGIC = b"\0asm"

# The worker's built-in tools (worker.tools.registry.default_tools; a test keeps the two equal):
# a WASM tool cannot take one of their names.
BUILTIN_TOOL_NAMES = frozenset(
    {"shell", "read_file", "write_file", "edit_file", "list_dir", "glob", "grep"}
)

MAX_DESCRIPTION_CHARS = 1024
MAX_MODULE_BYTES = 8 * 1024 * 1024
# The base64 text of a module at the limit; anything longer is refused before it is decoded.
_MAX_MODULE_BASE64_CHARS = 4 * math.ceil(MAX_MODULE_BYTES / 3)

WORKSPACE_ACCESS: tuple[WorkspaceAccess, ...] = ("none", "read-only", "read-write")

_MANIFEST_KEYS = frozenset({"description", "parameters", "module", "workspace", "limits"})
_WIRE_KEYS = frozenset(
    {"name", "description", "parameters", "workspace", "limits", "module_base64"}
)


class WasmManifestError(ValueError):
    """A manifest that breaks the rules; the message names where and which field."""


@dataclass(frozen=True)
class WasmLimits:
    """What one call of a WASM tool may use.

    ``fuel`` counts WebAssembly instructions (roughly one unit each), ``memory_mb`` bounds the
    module's linear memory, ``timeout_s`` is the wall-clock limit of a call and
    ``max_output_bytes`` how much of its stdout reaches the model.
    """

    fuel: int = 1_000_000_000
    memory_mb: int = 64
    timeout_s: float = 10.0
    max_output_bytes: int = 1_048_576

    def to_wire(self) -> dict[str, Any]:
        """The ``limits`` object of the manifest and wire forms."""
        return {
            "fuel": self.fuel,
            "memory_mb": self.memory_mb,
            "timeout_s": self.timeout_s,
            "max_output_bytes": self.max_output_bytes,
        }


# Bounds of each limit: (smallest, largest). Wide enough for real tools, narrow enough that a
# typo cannot hand a module the whole machine.
FUEL_BOUNDS = (1, 10**12)
MEMORY_MB_BOUNDS = (1, 4096)
MAX_TIMEOUT_S = 300.0
MAX_OUTPUT_BYTES_BOUNDS = (1, 16 * 1024 * 1024)


def _default_parameters() -> dict[str, Any]:
    return {"type": "object", "properties": {}}


@dataclass(frozen=True)
class WasmToolManifest:
    """One WASM tool: what the model sees (name, description, parameters), the module it runs
    and what that module may touch (the workspace access and its limits).

    ``module`` is the module's file name next to the manifest in the catalogue; a manifest
    received by the worker names a file derived from the tool's name instead, since the module's
    bytes travel with it.
    """

    name: str
    description: str
    module: str
    parameters: Mapping[str, Any] = field(default_factory=_default_parameters)
    workspace: WorkspaceAccess = "none"
    limits: WasmLimits = field(default_factory=WasmLimits)

    def to_wire(self, module: bytes | None = None) -> dict[str, Any]:
        """The worker API form: ``{"name", "description", "parameters", "workspace", "limits",
        "module_base64"}``; ``module_base64`` is left out when ``module`` is None (the
        orchestrator stores grants without the module and adds it when it serves them)."""
        wire: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "parameters": copy.deepcopy(dict(self.parameters)),
            "workspace": self.workspace,
            "limits": self.limits.to_wire(),
        }
        if module is not None:
            _check_module_bytes(module, f"WASM tool {self.name!r}")
            wire["module_base64"] = base64.b64encode(module).decode("ascii")
        return wire

    @classmethod
    def from_wire(cls, document: object) -> tuple[WasmToolManifest, bytes]:
        """Validates one entry of the worker API's ``wasm_tools`` list; returns the manifest and
        the module's bytes (WAT text or a binary module)."""
        if not isinstance(document, Mapping):
            raise WasmManifestError("a WASM tool entry must be a JSON object")
        raw_name = document.get("name")
        if not isinstance(raw_name, str):
            raise WasmManifestError("a WASM tool entry has no 'name' string")
        where = f"WASM tool {raw_name[:40]!r}"
        name = check_tool_name(raw_name, where)
        _refuse_unknown_keys(document, _WIRE_KEYS, where)
        module = _module_bytes(document.get("module_base64"), where)
        suffix = ".wasm" if module.startswith(_WASM_MAGIC) else ".wat"
        manifest = cls(
            name=name,
            description=_description(document.get("description"), where),
            module=f"{name}{suffix}",
            parameters=_parameters(document.get("parameters", _default_parameters()), where),
            workspace=_workspace(document.get("workspace", "none"), where),
            limits=_limits(document.get("limits", {}), where),
        )
        return manifest, module


def parse_wasm_manifest(name: str, document: object, where: str) -> WasmToolManifest:
    """Validates a catalogue manifest of the tool ``name`` (the file's stem).

    Raises :class:`WasmManifestError` (a ValueError) whose message starts with ``where`` and
    names the offending field.
    """
    check_tool_name(name, where)
    if not isinstance(document, Mapping):
        raise WasmManifestError(
            f"{where}: a manifest must be a JSON object with 'description' and 'module'"
        )
    _refuse_unknown_keys(document, _MANIFEST_KEYS, where)
    return WasmToolManifest(
        name=name,
        description=_description(document.get("description"), where),
        module=_module_name(document.get("module"), where),
        parameters=_parameters(document.get("parameters", _default_parameters()), where),
        workspace=_workspace(document.get("workspace", "none"), where),
        limits=_limits(document.get("limits", {}), where),
    )


def check_tool_name(name: object, where: str) -> str:
    """A tool name is a short identifier: 1-32 letters, digits, '-' or '_', without '__'."""
    if (
        not isinstance(name, str)
        or not TOOL_NAME_PATTERN.fullmatch(name)
        or NAMESPACE_SEPARATOR in name
    ):
        raise WasmManifestError(
            f"{where}: name {str(name)[:40]!r} must be 1-32 letters, digits, '-' or '_' "
            "(no '__'), starting with a letter or digit"
        )
    # Compared as catalogue names are (case-insensitively): "Shell" would read as "shell".
    if name.casefold() in BUILTIN_TOOL_NAMES:
        raise WasmManifestError(f"{where}: name {name!r} is a built-in tool's: choose another")
    return name


def _refuse_unknown_keys(document: Mapping[Any, Any], known: frozenset[str], where: str) -> None:
    unknown = set(document) - known
    if unknown:
        raise WasmManifestError(
            f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
            f"(known: {', '.join(sorted(known))})"
        )


def _description(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise WasmManifestError(f"{where}: 'description' must be a non-empty string")
    if len(value) > MAX_DESCRIPTION_CHARS:
        raise WasmManifestError(
            f"{where}: 'description' is {len(value)} characters; at most "
            f"{MAX_DESCRIPTION_CHARS} are allowed"
        )
    return value


def _module_name(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise WasmManifestError(f"{where}: 'module' must be the file name of a .wasm or .wat file")
    if ".." in value or not _MODULE_NAME_PATTERN.fullmatch(value):
        raise WasmManifestError(
            f"{where}: 'module' {value[:80]!r} must be a plain file name next to the manifest "
            "ending in .wasm or .wat (letters, digits, '.', '_', '+', '-'; no path separators, "
            "no '..')"
        )
    return value


def _parameters(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or value.get("type") != "object":
        raise WasmManifestError(
            f'{where}: \'parameters\' must be a JSON schema object whose "type" is "object"'
        )
    properties = value.get("properties", {})
    if not isinstance(properties, Mapping):
        raise WasmManifestError(f"{where}: 'parameters.properties' must be an object")
    required = value.get("required", [])
    if not isinstance(required, list) or not all(isinstance(item, str) for item in required):
        raise WasmManifestError(f"{where}: 'parameters.required' must be a list of strings")
    # A copy: the manifest is frozen, and the caller's document must not change it later.
    return copy.deepcopy(dict(value))


def _workspace(value: object, where: str) -> WorkspaceAccess:
    for access in WORKSPACE_ACCESS:
        if value == access:
            return access
    raise WasmManifestError(
        f"{where}: 'workspace' must be one of {', '.join(WORKSPACE_ACCESS)}, got {value!r}"
    )


def _limits(value: object, where: str) -> WasmLimits:
    if not isinstance(value, Mapping):
        raise WasmManifestError(f"{where}: 'limits' must be an object")
    defaults = WasmLimits()
    known = frozenset(defaults.to_wire())
    unknown = set(value) - known
    if unknown:
        raise WasmManifestError(
            f"{where}: unknown key(s) in 'limits': {', '.join(sorted(map(str, unknown)))} "
            f"(known: {', '.join(sorted(known))})"
        )
    return WasmLimits(
        fuel=_integer(value, "fuel", defaults.fuel, FUEL_BOUNDS, where),
        memory_mb=_integer(value, "memory_mb", defaults.memory_mb, MEMORY_MB_BOUNDS, where),
        timeout_s=_timeout(value, defaults.timeout_s, where),
        max_output_bytes=_integer(
            value, "max_output_bytes", defaults.max_output_bytes, MAX_OUTPUT_BYTES_BOUNDS, where
        ),
    )


def _integer(
    limits: Mapping[Any, Any], key: str, default: int, bounds: tuple[int, int], where: str
) -> int:
    value = limits.get(key, default)
    # JSON may spell an integer as 64.0; a bool is an int subclass and never meant here.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise WasmManifestError(
            f"{where}: 'limits.{key}' must be an integer from {low} to {high}, got {value!r}"
        )
    return value


def _timeout(limits: Mapping[Any, Any], default: float, where: str) -> float:
    value = limits.get("timeout_s", default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= MAX_TIMEOUT_S
    ):
        raise WasmManifestError(
            f"{where}: 'limits.timeout_s' must be a number of seconds above 0 and at most "
            f"{MAX_TIMEOUT_S:g}, got {value!r}"
        )
    return float(value)


def _module_bytes(value: object, where: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise WasmManifestError(f"{where}: 'module_base64' must be a non-empty base64 string")
    if len(value) > _MAX_MODULE_BASE64_CHARS:
        raise WasmManifestError(
            f"{where}: 'module_base64' holds more than {MAX_MODULE_BYTES} bytes"
        )
    try:
        module = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WasmManifestError(f"{where}: 'module_base64' is not valid base64: {exc}") from None
    _check_module_bytes(module, where)
    return module


def _check_module_bytes(module: bytes, where: str) -> None:
    if not module:
        raise WasmManifestError(f"{where}: the module is empty")
    if len(module) > MAX_MODULE_BYTES:
        raise WasmManifestError(
            f"{where}: the module is {len(module)} bytes; the limit is {MAX_MODULE_BYTES}"
        )
