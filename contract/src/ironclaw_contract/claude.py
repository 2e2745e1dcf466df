"""The Claude Code CLI as both sides know it: its tool names and its model aliases.

The orchestrator validates ``CLAUDE_CODE_ALLOWED_TOOLS`` at start with this table and serves
the mapped names in ``GET /job``; the bridge passes them to ``--tools``/``--allowedTools``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

# Lowercase name → the CLI's name.
CLAUDE_TOOL_NAMES: Final[dict[str, str]] = {
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
DEFAULT_ALLOWED_TOOLS: Final = ("Bash", "Read", "Write")
# The aliases the CLI resolves itself (``--model sonnet``); ANTHROPIC_DEFAULT_<ALIAS>_MODEL
# makes it send the model id the orchestrator's map names instead.
CLI_MODEL_ALIASES: Final = ("sonnet", "opus", "haiku")


class UnknownToolError(ValueError):
    """A tool name the CLI does not know; the message names it and lists the known ones."""


def map_tool_names(names: Iterable[str]) -> tuple[str, ...]:
    """Maps tool names case-insensitively (``bash``, ``Bash``, ``BASH`` → ``Bash``), keeping
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
