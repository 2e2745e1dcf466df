"""The tools a Claude Code job may use: the seed's lowercase names mapped to the CLI's.

``CLAUDE_CODE_ALLOWED_TOOLS=bash,read,write`` becomes ``--tools Bash,Read,Write --allowedTools
Bash,Read,Write``: the CLI offers the model exactly these tools and runs them without asking.
An unknown name stops the job at its start with an error that names it: a tool the operator
meant to grant must never turn into one the CLI silently denies.
"""

from __future__ import annotations

from collections.abc import Iterable

# Lowercase name → the CLI's name. The orchestrator's settings validate against this table.
CLAUDE_TOOL_NAMES: dict[str, str] = {
    "bash": "Bash",
    "read": "Read",
    "write": "Write",
    "edit": "Edit",
    "multiedit": "MultiEdit",
    "glob": "Glob",
    "grep": "Grep",
    "ls": "LS",
    "webfetch": "WebFetch",
    "websearch": "WebSearch",
    "notebookedit": "NotebookEdit",
    "todowrite": "TodoWrite",
    "task": "Task",
}
DEFAULT_ALLOWED_TOOLS = ("Bash", "Read", "Write")


class UnknownToolError(ValueError):
    """A tool name the CLI does not know; the message names it and lists the known ones."""


def map_tool_names(names: Iterable[str]) -> tuple[str, ...]:
    """Maps tool names, case-insensitively (``bash``, ``Bash``, ``BASH`` → ``Bash``), keeping
    their order and dropping repeats. Raises :class:`UnknownToolError` for an unknown name and
    for an empty list."""
    mapped: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        cli_name = CLAUDE_TOOL_NAMES.get(name.lower())
        if cli_name is None:
            known = ", ".join(sorted(CLAUDE_TOOL_NAMES))
            raise UnknownToolError(f"unknown Claude Code tool {name!r} (known: {known})")
        mapped.append(cli_name)
    if not mapped:
        raise UnknownToolError("no Claude Code tool is allowed: name at least one")
    return tuple(dict.fromkeys(mapped))


def parse_tool_list(raw: str) -> tuple[str, ...]:
    """Maps a comma- (or space-) separated list such as ``bash, read,Write``."""
    return map_tool_names(raw.replace(",", " ").split())
