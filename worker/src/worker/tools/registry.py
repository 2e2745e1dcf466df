"""The tool registry: the specs offered to the model and the dispatch of its calls."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from worker.tools.base import SecretMask, Tool, ToolContext, ToolError, ToolResult, head_tail
from worker.tools.files import EDIT_FILE, LIST_DIR, READ_FILE, WRITE_FILE
from worker.tools.search import GLOB, GREP
from worker.tools.shell import SHELL

log = logging.getLogger(__name__)

# A last bound on what any tool hands back to the model; each tool has its own, smaller caps.
MAX_RESULT_CHARS = 60_000


def default_tools() -> list[Tool]:
    """Every tool the worker offers, in the order the model sees them."""
    return [SHELL, READ_FILE, WRITE_FILE, EDIT_FILE, LIST_DIR, GLOB, GREP]


class ToolRegistry:
    """Gives the tool specs for the LLM call and runs the calls the model makes.

    :meth:`call` never raises for a tool's failure (bad arguments, missing file, path outside the
    workspace, timeout): the failure comes back as a :class:`ToolResult` with ``is_error=True``,
    for the model to read. Granted credential values are masked in every output.
    """

    def __init__(self, context: ToolContext, tools: Iterable[Tool] | None = None) -> None:
        self._context = context
        self._tools: dict[str, Tool] = {}
        for tool in default_tools() if tools is None else tools:
            if tool.name in self._tools:
                raise ValueError(f"duplicate tool name {tool.name!r}")
            self._tools[tool.name] = tool
        self._mask = SecretMask(context.secrets)

    @property
    def context(self) -> ToolContext:
        """Where the tools work."""
        return self._context

    @property
    def names(self) -> list[str]:
        """The tool names, in registration order."""
        return list(self._tools)

    def specs(self) -> list[dict[str, Any]]:
        """The ``{"name", "description", "parameters"}`` objects for ``complete_with_tools``."""
        return [tool.spec() for tool in self._tools.values()]

    def call(self, name: str, arguments: Mapping[str, Any] | str | None) -> ToolResult:
        """Runs tool ``name``; ``arguments`` is the decoded object or its JSON text."""
        tool = self._tools.get(name)
        if tool is None:
            known = ", ".join(self._tools)
            return ToolResult(f"unknown tool {name!r}; available tools: {known}", is_error=True)
        try:
            args = _decode_arguments(arguments)
            outcome = tool.handler(self._context, args)
            result = outcome if isinstance(outcome, ToolResult) else ToolResult(outcome)
        except ToolError as exc:
            result = ToolResult(f"{name}: {exc}", is_error=True)
        except Exception as exc:
            # A tool bug or an OS error must not end the job: the model reads it and moves on.
            log.warning("tool %s failed: %s: %s", name, type(exc).__name__, exc)
            result = ToolResult(f"{name} failed: {type(exc).__name__}: {exc}", is_error=True)
        return ToolResult(self._sanitise(result.output), result.is_error)

    def _sanitise(self, output: str) -> str:
        return head_tail(self._mask(output), MAX_RESULT_CHARS)


def _decode_arguments(arguments: Mapping[str, Any] | str | None) -> Mapping[str, Any]:
    if arguments is None:
        return {}
    if isinstance(arguments, str):
        if not arguments.strip():
            return {}
        try:
            decoded = json.loads(arguments)
        except ValueError as exc:
            raise ToolError(f"arguments are not valid JSON: {exc}") from None
    else:
        decoded = arguments
    if not isinstance(decoded, Mapping):
        raise ToolError("arguments must be a JSON object")
    return decoded
