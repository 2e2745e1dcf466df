"""MCP server entries: the operator's catalogue shape, checked the same way on both sides.

The orchestrator validates ``<IRONCLAW_BASE_DIR>/mcp-servers.json`` (the common ``mcpServers``
shape) with :func:`parse_catalog` and hands a job only the entries it was granted, as
:meth:`McpServerEntry.to_wire` documents; the worker checks what it receives again with
:meth:`McpServerEntry.from_wire` before it starts anything. Standard library only: this module
runs in the worker image and in the orchestrator.

Secrets never sit in the catalogue in clear: an env value or header that carries one names a
credential grant instead, ``"${credential:github}"`` (also inside a longer value, as in
``"Bearer ${credential:api}"``), and the worker substitutes the value the job was granted.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from ironclaw_contract.env_names import GRANT_NAME_PATTERN, is_reserved_env_key
from ironclaw_contract.secret_patterns import (
    args_secret_problem,
    is_secret_name,
    value_secret_problem,
)

Transport = Literal["stdio", "http"]
T = TypeVar("T")

# Tools of a server reach the model as ``<server>__<tool>``: a server name never holds "__", so
# the split is unambiguous, and 32 characters leave room for the tool's part in a 64-character
# provider tool name.
SERVER_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
NAMESPACE_SEPARATOR = "__"
# A reference to a credential grant of the job, by the grant's name.
CREDENTIAL_REFERENCE = re.compile(r"\$\{credential:(" + GRANT_NAME_PATTERN.pattern + r")\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}")

# A header whose name says it carries a secret (the env names' rule is secret_patterns').
_SECRET_HEADER_NAME = re.compile(r"authorization|cookie|token|secret|api-?key|auth", re.IGNORECASE)

_ENTRY_KEYS = frozenset(
    {
        "type",
        "command",
        "args",
        "env",
        "url",
        "headers",
        "startup_timeout_s",
        "call_timeout_s",
        "description",
        "disabled",
    }
)
_TRANSPORT_NAMES: Mapping[str, Transport] = {
    "stdio": "stdio",
    "http": "http",
    "streamable-http": "http",
    "streamable_http": "http",
    "streamableHttp": "http",
}
MAX_ARGS = 64
MAX_ENV = 64
MAX_HEADERS = 32
MAX_VALUE_CHARS = 8192
DEFAULT_STARTUP_TIMEOUT_S = 30.0
DEFAULT_CALL_TIMEOUT_S = 120.0
MAX_STARTUP_TIMEOUT_S = 300.0
MAX_CALL_TIMEOUT_S = 3600.0


class McpConfigError(ValueError):
    """An entry or catalogue that breaks the rules; the message names where and what."""


@dataclass(frozen=True)
class McpServerEntry:
    """One MCP server a job may start (stdio) or connect to (streamable HTTP).

    ``env`` and ``headers`` values may hold ``${credential:<grant>}`` references, resolved by the
    worker with :func:`resolve_references`; nothing in an entry is a secret itself.
    """

    name: str
    transport: Transport
    command: str = ""
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    url: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S
    call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S
    description: str = ""
    disabled: bool = False

    def credential_references(self) -> frozenset[str]:
        """The grant names the entry's env values and headers refer to."""
        values = [*self.env.values(), *self.headers.values()]
        return frozenset(ref for value in values for ref in CREDENTIAL_REFERENCE.findall(value))

    def to_wire(self) -> dict[str, Any]:
        """The JSON form the worker API serves (the catalogue shape plus ``name``)."""
        wire: dict[str, Any] = {
            "name": self.name,
            "type": self.transport,
            "startup_timeout_s": self.startup_timeout_s,
            "call_timeout_s": self.call_timeout_s,
        }
        if self.transport == "stdio":
            wire.update(command=self.command, args=list(self.args), env=dict(self.env))
        else:
            wire.update(url=self.url, headers=dict(self.headers))
        if self.description:
            wire["description"] = self.description
        return wire

    @classmethod
    def from_wire(cls, document: object) -> McpServerEntry:
        """Validates one entry of the worker API's ``mcp_servers`` list."""
        if not isinstance(document, Mapping):
            raise McpConfigError("an MCP server entry must be a JSON object")
        name = document.get("name")
        if not isinstance(name, str):
            raise McpConfigError("an MCP server entry has no name")
        rest = {key: value for key, value in document.items() if key != "name"}
        return parse_entry(name, rest, f"MCP server {name[:40]!r}")


def parse_catalog(document: object, where: str) -> dict[str, McpServerEntry]:
    """Validates a catalogue document ``{"mcpServers": {name: entry, ...}}``."""
    if not isinstance(document, Mapping):
        raise McpConfigError(f"{where}: must be a JSON object with an 'mcpServers' object")
    unknown = set(document) - {"mcpServers"}
    if unknown:
        raise McpConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    servers = document.get("mcpServers", {})
    if not isinstance(servers, Mapping):
        raise McpConfigError(f"{where}: 'mcpServers' must be an object of name → entry")
    parsed = {
        str(name): parse_entry(str(name), raw, f"{where}: server {str(name)[:40]!r}")
        for name, raw in servers.items()
    }
    check_distinct_names(parsed, f"{where}: servers")
    return parsed


def parse_entry(name: str, raw: object, where: str) -> McpServerEntry:
    """Validates one catalogue entry named ``name``; raises McpConfigError naming ``where``."""
    check_server_name(name, where)
    if not isinstance(raw, Mapping):
        raise McpConfigError(f"{where}: must be an object with a command or a url")
    unknown = set(raw) - _ENTRY_KEYS
    if unknown:
        raise McpConfigError(
            f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
            f"(known: {', '.join(sorted(_ENTRY_KEYS))})"
        )
    transport = _transport(raw, where)
    description = _string(raw.get("description", ""), f"{where}: description", allow_empty=True)
    disabled = raw.get("disabled", False)
    if not isinstance(disabled, bool):
        raise McpConfigError(f"{where}: disabled must be true or false")
    startup_timeout_s = _seconds(
        raw, "startup_timeout_s", DEFAULT_STARTUP_TIMEOUT_S, MAX_STARTUP_TIMEOUT_S, where
    )
    call_timeout_s = _seconds(
        raw, "call_timeout_s", DEFAULT_CALL_TIMEOUT_S, MAX_CALL_TIMEOUT_S, where
    )
    if transport == "stdio":
        if "url" in raw or "headers" in raw:
            raise McpConfigError(f"{where}: a stdio server takes command/args/env, not url/headers")
        entry = McpServerEntry(
            name=name,
            transport="stdio",
            command=_string(raw.get("command"), f"{where}: command"),
            args=_args(raw.get("args", []), where),
            env=_env(raw.get("env", {}), where),
            startup_timeout_s=startup_timeout_s,
            call_timeout_s=call_timeout_s,
            description=description,
            disabled=disabled,
        )
    else:
        if "command" in raw or "args" in raw or "env" in raw:
            raise McpConfigError(f"{where}: an http server takes url/headers, not command/args/env")
        entry = McpServerEntry(
            name=name,
            transport="http",
            url=_url(raw.get("url"), where),
            headers=_headers(raw.get("headers", {}), where),
            startup_timeout_s=startup_timeout_s,
            call_timeout_s=call_timeout_s,
            description=description,
            disabled=disabled,
        )
    _refuse_secrets_in_clear(entry, where)
    return entry


def check_server_name(name: str, where: str) -> None:
    """Server names are short identifiers: no path separators, no "__" (the namespace mark)."""
    if not SERVER_NAME_PATTERN.fullmatch(name) or NAMESPACE_SEPARATOR in name:
        raise McpConfigError(
            f"{where}: the name must be 1-32 letters, digits, '-' or '_' (no '__', no '/'), "
            f"starting with a letter or digit"
        )


def name_key(name: str) -> str:
    """What catalogue names are compared by: ``GitHub`` and ``github`` are one name, as MCP
    clients (Claude Code among them) treat server names. The name a job sees is the
    catalogue's own spelling."""
    return name.casefold()


def check_distinct_names(names: Iterable[str], where: str) -> None:
    """Refuses a catalogue with two names equal but for case: a lookup could not tell them
    apart."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(name_key(name), name)
        if other != name:
            raise McpConfigError(
                f"{where} {other!r} and {name!r} differ only in case; names are matched "
                "case-insensitively: rename one"
            )


def find_by_name(entries: Mapping[str, T], name: str) -> tuple[str, T] | None:
    """The catalogue's spelling of ``name`` and its entry, matched case-insensitively."""
    if name in entries:
        return name, entries[name]
    key = name_key(name)
    for spelled, entry in entries.items():
        if name_key(spelled) == key:
            return spelled, entry
    return None


def resolve_references(value: str, credentials: Mapping[str, str]) -> str:
    """``value`` with each ``${credential:<grant>}`` replaced by the granted value.

    Raises McpConfigError naming the grant (never a value) when the job lacks it.
    """

    def substitute(match: re.Match[str]) -> str:
        grant = match.group(1)
        if grant not in credentials:
            raise McpConfigError(f"credential {grant!r} is not granted to this job")
        return credentials[grant]

    return CREDENTIAL_REFERENCE.sub(substitute, value)


def _transport(raw: Mapping[str, Any], where: str) -> Transport:
    declared = raw.get("type")
    if declared is None:
        if "command" in raw:
            return "stdio"
        if "url" in raw:
            return "http"
        raise McpConfigError(f"{where}: needs a command (stdio) or a url (streamable HTTP)")
    if not isinstance(declared, str) or declared not in _TRANSPORT_NAMES:
        hint = (
            " (the SSE transport is deprecated: use streamable HTTP)" if declared == "sse" else ""
        )
        raise McpConfigError(
            f"{where}: type must be stdio or http (streamable HTTP), got {declared!r}{hint}"
        )
    return _TRANSPORT_NAMES[declared]


def _string(value: object, where: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise McpConfigError(f"{where}: must be a non-empty string")
    if len(value) > MAX_VALUE_CHARS or "\0" in value:
        raise McpConfigError(f"{where}: longer than {MAX_VALUE_CHARS} characters or holds NUL")
    return value


def _seconds(raw: Mapping[str, Any], key: str, default: float, maximum: float, where: str) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= maximum:
        raise McpConfigError(f"{where}: {key} must be a number of seconds in (0, {maximum:g}]")
    return float(value)


def _args(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_ARGS:
        raise McpConfigError(f"{where}: args must be a list of at most {MAX_ARGS} strings")
    return tuple(
        _string(arg, f"{where}: args[{index}]", allow_empty=True) for index, arg in enumerate(value)
    )


def _env(value: object, where: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or len(value) > MAX_ENV:
        raise McpConfigError(f"{where}: env must be an object of at most {MAX_ENV} variables")
    env: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            raise McpConfigError(f"{where}: env name {str(key)[:64]!r} is not a valid name")
        if is_reserved_env_key(key):
            raise McpConfigError(f"{where}: env {key} is reserved and cannot be set")
        env[key] = _string(item, f"{where}: env {key}", allow_empty=True)
    return env


def _headers(value: object, where: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or len(value) > MAX_HEADERS:
        raise McpConfigError(f"{where}: headers must be an object of at most {MAX_HEADERS} headers")
    headers: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _HEADER_NAME.fullmatch(key):
            raise McpConfigError(f"{where}: header name {str(key)[:64]!r} is not valid")
        text = _string(item, f"{where}: header {key}", allow_empty=True)
        if "\r" in text or "\n" in text:
            raise McpConfigError(f"{where}: header {key} holds a line break")
        headers[key] = text
    return headers


def _url(value: object, where: str) -> str:
    text = _string(value, f"{where}: url")
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise McpConfigError(f"{where}: url must be an http:// or https:// URL with a host")
    if parsed.password or parsed.username:
        raise McpConfigError(
            f"{where}: url must not carry credentials; send them in a header that references "
            "a credential grant"
        )
    return text


def _refuse_secrets_in_clear(entry: McpServerEntry, where: str) -> None:
    """Secret-looking names need a credential reference; known secret formats, URLs with a
    password or a secret query parameter, and secrets passed as command-line options are
    refused anywhere in the entry."""
    for key, value in entry.env.items():
        if value and is_secret_name(key) and not CREDENTIAL_REFERENCE.search(value):
            raise McpConfigError(
                f"{where}: env {key} holds a value in clear; reference a credential grant "
                'instead, e.g. "${credential:<grant>}"'
            )
    for key, value in entry.headers.items():
        if value and _SECRET_HEADER_NAME.search(key) and not CREDENTIAL_REFERENCE.search(value):
            raise McpConfigError(
                f"{where}: header {key} holds a value in clear; reference a credential grant "
                'instead, e.g. "Bearer ${credential:<grant>}"'
            )
    problem = args_secret_problem([CREDENTIAL_REFERENCE.sub("", arg) for arg in entry.args])
    if problem:
        raise McpConfigError(
            f"{where}: {problem}; grant the secret to the job and pass it in env as "
            '"${credential:<grant>}"'
        )
    places = {
        "command": entry.command,
        "url": entry.url,
        **{f"env {key}": value for key, value in entry.env.items()},
        **{f"header {key}": value for key, value in entry.headers.items()},
    }
    for place, value in places.items():
        problem = value_secret_problem(CREDENTIAL_REFERENCE.sub("", value))
        if problem:
            raise McpConfigError(
                f"{where}: {place} {problem}; grant the secret to the job and reference it as "
                '"${credential:<grant>}" in env or headers'
            )
