"""What every tool shares: its description, its result, its context and argument checking."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ToolError(Exception):
    """A tool could not do what was asked; the message is shown to the model as the result."""


@dataclass(frozen=True)
class ToolResult:
    """What a tool call produced; ``is_error`` marks failures the model should react to."""

    output: str
    is_error: bool = False


@dataclass(frozen=True)
class ToolContext:
    """Where tools work and what their commands see.

    ``workspace`` is resolved once here (symlinks included), so confinement checks compare
    resolved paths with a resolved root. ``env`` is the complete environment of commands started
    by tools. ``secrets`` are values masked in every tool output.
    """

    workspace: Path
    env: Mapping[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "workspace", Path(self.workspace).resolve())

    def resolve_path(self, raw: str) -> Path:
        """Resolves a tool's path argument inside the workspace, or raises :class:`ToolError`.

        Relative paths start at the workspace; absolute paths must already lie in it. The check
        runs on the resolved path, so ``..`` and symlinks that lead outside are refused.
        """
        if not raw:
            raise ToolError("path must not be empty")
        candidate = Path(raw)
        if not candidate.is_absolute():
            candidate = self.workspace / candidate
        try:
            resolved = candidate.resolve()
        except (OSError, ValueError, RuntimeError) as exc:
            raise ToolError(f"invalid path {raw!r}: {exc}") from None
        if not resolved.is_relative_to(self.workspace):
            raise ToolError(f"path {raw!r} is outside the workspace {self.workspace}")
        return resolved

    def display(self, path: Path) -> str:
        """A path as shown to the model: relative to the workspace when inside it."""
        try:
            relative = path.relative_to(self.workspace)
        except ValueError:
            return str(path)
        return str(relative) if relative.parts else "."


# Shorter values are too likely to occur by chance to be masked in outputs.
MIN_SECRET_CHARS = 6


class SecretMask:
    """Replaces granted values with ``***`` in text shown to the model or reported as an
    event; the longest first, so a value that contains another is masked whole."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted(
            {s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True
        )

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


ToolHandler = Callable[[ToolContext, Mapping[str, Any]], str | ToolResult]


@dataclass(frozen=True)
class Tool:
    """One tool: the spec the model sees and the function that runs it.

    The handler returns its output (or a full :class:`ToolResult`) and raises :class:`ToolError`
    for failures the model should read about.
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    handler: ToolHandler

    def spec(self) -> dict[str, Any]:
        """The ``{"name", "description", "parameters"}`` object sent to the LLM API."""
        return {
            "name": self.name,
            "description": self.description,
            "parameters": dict(self.parameters),
        }


def object_schema(properties: Mapping[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON schema for a tool's arguments object."""
    return {
        "type": "object",
        "properties": dict(properties),
        "required": list(required),
        "additionalProperties": False,
    }


def str_arg(args: Mapping[str, Any], name: str, default: str | None = None) -> str:
    """A string argument; required when ``default`` is ``None``."""
    value = args.get(name, default)
    if value is None:
        raise ToolError(f"missing required argument {name!r}")
    if not isinstance(value, str):
        raise ToolError(f"argument {name!r} must be a string")
    return value


def int_arg(
    args: Mapping[str, Any],
    name: str,
    default: int,
    *,
    minimum: int,
    maximum: int | None = None,
) -> int:
    """An integer argument within ``[minimum, maximum]``; values above ``maximum`` are clamped."""
    value = args.get(name, default)
    if value is None:
        value = default
    # JSON numbers may arrive as 30.0; bool is an int subclass and never meant here.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ToolError(f"argument {name!r} must be an integer")
    if value < minimum:
        raise ToolError(f"argument {name!r} must be at least {minimum}")
    if maximum is not None and value > maximum:
        return maximum
    return value


def bool_arg(args: Mapping[str, Any], name: str, default: bool = False) -> bool:
    """A boolean argument."""
    value = args.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ToolError(f"argument {name!r} must be true or false")
    return value


def head_tail(text: str, limit: int, unit: str = "chars") -> str:
    """Keeps the start and the end of ``text`` within about ``limit`` characters."""
    if len(text) <= limit:
        return text
    half = limit // 2
    dropped = len(text) - 2 * half
    return f"{text[:half]}\n…[truncated {dropped} {unit}]…\n{text[len(text) - half :]}"


def is_binary(path: Path) -> bool:
    """Whether the file looks binary (a NUL byte in its first 8 KiB)."""
    with path.open("rb") as handle:
        return b"\0" in handle.read(8192)


def walk_files(root: Path, skip_dirs: frozenset[str] = frozenset()) -> Iterator[Path]:
    """Files under ``root`` (or ``root`` itself), lazily and in a stable order.

    Directory symlinks are not followed; directories named in ``skip_dirs`` are not entered.
    """
    if not root.is_dir():
        yield root
        return
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in skip_dirs)
        for name in sorted(files):
            yield Path(current, name)
