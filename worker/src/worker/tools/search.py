"""Search tools: ``glob`` (find files by name pattern) and ``grep`` (regex over file contents),
pure Python, confined to the workspace and bounded in results."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

from worker.tools.base import (
    Tool,
    ToolContext,
    ToolError,
    bool_arg,
    int_arg,
    is_binary,
    object_schema,
    str_arg,
    walk_files,
)

MAX_GLOB_RESULTS = 500
DEFAULT_GREP_RESULTS = 200
MAX_GREP_RESULTS = 1000
MAX_GREP_FILE_BYTES = 5 * 1024 * 1024
MAX_GREP_FILES = 20_000
MAX_MATCH_LINE_CHARS = 300

# Directories grep does not enter on its own: version control, dependencies, build output and
# caches hold many files and rarely the answer. Pointing `path` inside one still searches it.
GREP_SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "node_modules",
        "__pycache__",
        ".venv",
        "venv",
        "target",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
    }
)


def _directory(ctx: ToolContext, raw: str) -> Path:
    path = ctx.resolve_path(raw)
    if not path.exists():
        raise ToolError(f"not found: {ctx.display(path)}")
    return path


def _glob(ctx: ToolContext, args: Mapping[str, Any]) -> str:
    pattern = str_arg(args, "pattern")
    base = _directory(ctx, str_arg(args, "path", "."))
    if not base.is_dir():
        raise ToolError(f"{ctx.display(base)} is not a directory")
    if PurePath(pattern).is_absolute() or ".." in PurePath(pattern).parts:
        raise ToolError("pattern must be relative to `path` and must not contain '..'")
    matches: list[str] = []
    truncated = False
    try:
        for found in base.glob(pattern):
            # A symlink may point outside the workspace; such matches are not shown.
            if not found.resolve().is_relative_to(ctx.workspace):
                continue
            if len(matches) >= MAX_GLOB_RESULTS:
                truncated = True
                break
            matches.append(ctx.display(found) + ("/" if found.is_dir() else ""))
    except (ValueError, NotImplementedError) as exc:
        raise ToolError(f"invalid pattern {pattern!r}: {exc}") from None
    if not matches:
        return "(no matches)"
    matches.sort()
    if truncated:
        matches.append(f"[stopped after {MAX_GLOB_RESULTS} matches; narrow the pattern]")
    return "\n".join(matches)


def _grep(ctx: ToolContext, args: Mapping[str, Any]) -> str:
    pattern = str_arg(args, "pattern")
    root = _directory(ctx, str_arg(args, "path", "."))
    include = args.get("include")
    if include is not None and not isinstance(include, str):
        raise ToolError("argument 'include' must be a string")
    flags = re.IGNORECASE if bool_arg(args, "ignore_case") else 0
    limit = int_arg(args, "max_results", DEFAULT_GREP_RESULTS, minimum=1, maximum=MAX_GREP_RESULTS)
    try:
        regex = re.compile(pattern, flags)
    except re.error as exc:
        raise ToolError(f"invalid regular expression {pattern!r}: {exc}") from None
    results: list[str] = []
    scanned = 0
    stopped = ""
    for path in walk_files(root, GREP_SKIP_DIRS):
        if include and not _included(ctx, path, include):
            continue
        if scanned >= MAX_GREP_FILES:
            stopped = f"[stopped after scanning {MAX_GREP_FILES} files; narrow `path` or `include`]"
            break
        scanned += 1
        if not _searchable(ctx, path):
            continue
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line_no, line in enumerate(handle, start=1):
                if regex.search(line):
                    text = line.rstrip("\r\n")
                    if len(text) > MAX_MATCH_LINE_CHARS:
                        text = f"{text[:MAX_MATCH_LINE_CHARS]}…"
                    results.append(f"{ctx.display(path)}:{line_no}: {text}")
                    if len(results) >= limit:
                        break
        if len(results) >= limit:
            stopped = f"[stopped after {limit} matches]"
            break
    if not results:
        return f"(no matches)\n{stopped}" if stopped else "(no matches)"
    if stopped:
        results.append(stopped)
    return "\n".join(results)


def _included(ctx: ToolContext, path: Path, include: str) -> bool:
    # `*.py` matches by file name, `src/**/*.py`-style patterns by workspace-relative path.
    return fnmatch.fnmatch(path.name, include) or fnmatch.fnmatch(ctx.display(path), include)


def _searchable(ctx: ToolContext, path: Path) -> bool:
    try:
        resolved = path.resolve()
        return (
            resolved.is_relative_to(ctx.workspace)
            and resolved.is_file()
            and resolved.stat().st_size <= MAX_GREP_FILE_BYTES
            and not is_binary(resolved)
        )
    except OSError:
        return False  # unreadable or vanished while walking: nothing to report


GLOB = Tool(
    name="glob",
    description=(
        "Find files and directories in the workspace by glob pattern, e.g. '**/*.py' or "
        f"'src/*.rs' (relative to `path`). Returns at most {MAX_GLOB_RESULTS} paths, sorted."
    ),
    parameters=object_schema(
        {
            "pattern": {"type": "string", "description": "Glob pattern; '**' matches any depth."},
            "path": {
                "type": "string",
                "description": "Directory to search from (default: the workspace root).",
            },
        },
        required=("pattern",),
    ),
    handler=_glob,
)

GREP = Tool(
    name="grep",
    description=(
        "Search file contents with a Python regular expression; returns 'path:line: text' for "
        "each matching line. Binary and very large files are skipped, and so are .git, "
        "node_modules, target, virtualenvs and caches unless `path` points inside one."
    ),
    parameters=object_schema(
        {
            "pattern": {"type": "string", "description": "Regular expression (Python syntax)."},
            "path": {
                "type": "string",
                "description": "File or directory to search (default: the workspace root).",
            },
            "include": {
                "type": "string",
                "description": "Only files whose name (or relative path) matches this glob.",
            },
            "ignore_case": {"type": "boolean", "description": "Case-insensitive search."},
            "max_results": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_GREP_RESULTS,
                "description": f"Maximum matching lines (default {DEFAULT_GREP_RESULTS}).",
            },
        },
        required=("pattern",),
    ),
    handler=_grep,
)
