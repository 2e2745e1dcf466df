"""File tools: ``read_file``, ``write_file``, ``edit_file`` and ``list_dir``, confined to the
workspace."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
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
)

DEFAULT_READ_LINES = 2000
MAX_READ_CHARS = 50_000
MAX_LINE_CHARS = 2000
MAX_LIST_ENTRIES = 1000


def _existing_file(ctx: ToolContext, raw: str) -> Path:
    path = ctx.resolve_path(raw)
    if not path.exists():
        raise ToolError(f"file not found: {ctx.display(path)}")
    if path.is_dir():
        raise ToolError(f"{ctx.display(path)} is a directory; use list_dir")
    return path


def _read_file(ctx: ToolContext, args: Mapping[str, Any]) -> str:
    path = _existing_file(ctx, str_arg(args, "path"))
    offset = int_arg(args, "offset", 1, minimum=1)
    limit = int_arg(args, "limit", DEFAULT_READ_LINES, minimum=1, maximum=DEFAULT_READ_LINES)
    if is_binary(path):
        raise ToolError(f"{ctx.display(path)} is a binary file")
    lines: list[str] = []
    size = 0
    line_no = 0
    more = False
    # Streamed line by line: only the requested window is ever held in memory.
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line_no, line in enumerate(handle, start=1):
            if line_no < offset:
                continue
            if len(lines) >= limit or size >= MAX_READ_CHARS:
                more = True
                break
            if len(line) > MAX_LINE_CHARS:
                line = f"{line[:MAX_LINE_CHARS]}…[line truncated]\n"
            lines.append(line)
            size += len(line)
    if not lines:
        if line_no == 0:
            return "(empty file)"
        return f"(offset {offset} is past the end of the file, which has {line_no} lines)"
    text = "".join(lines)
    if more or offset > 1:
        last = offset + len(lines) - 1
        note = f"[lines {offset}-{last}"
        note += f"; more follow, continue with offset={last + 1}]" if more else "; end of file]"
        text = f"{text.rstrip(chr(10))}\n{note}"
    return text


def _write_file(ctx: ToolContext, args: Mapping[str, Any]) -> str:
    path = ctx.resolve_path(str_arg(args, "path"))
    content = str_arg(args, "content")
    if path.is_dir():
        raise ToolError(f"{ctx.display(path)} is a directory")
    existed = path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    # newline="" writes exactly what was given: no \n → \r\n translation anywhere.
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write(content)
    action = "overwrote" if existed else "created"
    return f"{action} {ctx.display(path)} ({len(content)} characters)"


def _edit_file(ctx: ToolContext, args: Mapping[str, Any]) -> str:
    path = _existing_file(ctx, str_arg(args, "path"))
    old = str_arg(args, "old_string")
    new = str_arg(args, "new_string")
    replace_all = bool_arg(args, "replace_all")
    if not old:
        raise ToolError("old_string must not be empty; use write_file to create a file")
    if old == new:
        raise ToolError("old_string and new_string are identical; nothing to change")
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            text = handle.read()
    except UnicodeDecodeError:
        raise ToolError(f"{ctx.display(path)} is not UTF-8 text; edit it with shell") from None
    count = text.count(old)
    if count == 0:
        raise ToolError(f"old_string not found in {ctx.display(path)}")
    if count > 1 and not replace_all:
        raise ToolError(
            f"old_string occurs {count} times in {ctx.display(path)}; include more surrounding "
            "context to make it unique, or set replace_all"
        )
    text = text.replace(old, new) if replace_all else text.replace(old, new, 1)
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    replaced = count if replace_all else 1
    return f"replaced {replaced} occurrence(s) in {ctx.display(path)}"


def _list_dir(ctx: ToolContext, args: Mapping[str, Any]) -> str:
    path = ctx.resolve_path(str_arg(args, "path", "."))
    if not path.exists():
        raise ToolError(f"directory not found: {ctx.display(path)}")
    if not path.is_dir():
        raise ToolError(f"{ctx.display(path)} is not a directory")
    entries: list[str] = []
    for entry in sorted(path.iterdir(), key=lambda p: p.name):
        if entry.is_symlink():
            entries.append(f"{entry.name}@")
        elif entry.is_dir():
            entries.append(f"{entry.name}/")
        else:
            entries.append(entry.name)
    if not entries:
        return "(empty directory)"
    shown = entries[:MAX_LIST_ENTRIES]
    if len(entries) > len(shown):
        shown.append(f"[{len(entries) - len(shown)} more entries not shown]")
    return "\n".join(shown)


READ_FILE = Tool(
    name="read_file",
    description=(
        "Read a text file from the workspace. Returns up to `limit` lines starting at line "
        f"`offset` (1-based), at most {MAX_READ_CHARS} characters; says where to continue."
    ),
    parameters=object_schema(
        {
            "path": {"type": "string", "description": "File path, relative to the workspace."},
            "offset": {"type": "integer", "minimum": 1, "description": "First line (default 1)."},
            "limit": {
                "type": "integer",
                "minimum": 1,
                "maximum": DEFAULT_READ_LINES,
                "description": f"Number of lines (default {DEFAULT_READ_LINES}).",
            },
        },
        required=("path",),
    ),
    handler=_read_file,
)

WRITE_FILE = Tool(
    name="write_file",
    description=(
        "Create or overwrite a file in the workspace with the given content; missing parent "
        "directories are created."
    ),
    parameters=object_schema(
        {
            "path": {"type": "string", "description": "File path, relative to the workspace."},
            "content": {"type": "string", "description": "The complete new file content."},
        },
        required=("path", "content"),
    ),
    handler=_write_file,
)

EDIT_FILE = Tool(
    name="edit_file",
    description=(
        "Replace an exact string in a file. `old_string` must occur exactly once (include "
        "enough surrounding lines to make it unique) unless `replace_all` is true."
    ),
    parameters=object_schema(
        {
            "path": {"type": "string", "description": "File path, relative to the workspace."},
            "old_string": {"type": "string", "description": "The exact text to replace."},
            "new_string": {"type": "string", "description": "The replacement text."},
            "replace_all": {
                "type": "boolean",
                "description": "Replace every occurrence (default false).",
            },
        },
        required=("path", "old_string", "new_string"),
    ),
    handler=_edit_file,
)

LIST_DIR = Tool(
    name="list_dir",
    description=("List a directory of the workspace: directories end with '/', symlinks with '@'."),
    parameters=object_schema(
        {
            "path": {
                "type": "string",
                "description": "Directory, relative to the workspace (default: its root).",
            },
        },
    ),
    handler=_list_dir,
)
