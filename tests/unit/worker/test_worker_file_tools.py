"""read_file, write_file, edit_file and list_dir."""

from __future__ import annotations

from pathlib import Path

from worker.tools import ToolRegistry


def test_edit_file_replaces_a_unique_string(registry: ToolRegistry, workspace: Path) -> None:
    (workspace / "app.py").write_text("def f():\n    return 1\n")
    result = registry.call(
        "edit_file", {"path": "app.py", "old_string": "return 1", "new_string": "return 2"}
    )
    assert not result.is_error, result.output
    assert (workspace / "app.py").read_text() == "def f():\n    return 2\n"


def test_edit_file_fails_when_old_string_is_missing(
    registry: ToolRegistry, workspace: Path
) -> None:
    (workspace / "app.py").write_text("x = 1\n")
    result = registry.call("edit_file", {"path": "app.py", "old_string": "y", "new_string": "z"})
    assert result.is_error
    assert "not found" in result.output
    assert (workspace / "app.py").read_text() == "x = 1\n"


def test_edit_file_refuses_an_ambiguous_string(registry: ToolRegistry, workspace: Path) -> None:
    (workspace / "app.py").write_text("a = 1\nb = 1\n")
    result = registry.call(
        "edit_file", {"path": "app.py", "old_string": "= 1", "new_string": "= 2"}
    )
    assert result.is_error
    assert "occurs 2 times" in result.output
    assert (workspace / "app.py").read_text() == "a = 1\nb = 1\n"


def test_edit_file_replace_all_changes_every_occurrence(
    registry: ToolRegistry, workspace: Path
) -> None:
    (workspace / "app.py").write_text("a = 1\nb = 1\n")
    result = registry.call(
        "edit_file",
        {"path": "app.py", "old_string": "= 1", "new_string": "= 2", "replace_all": True},
    )
    assert not result.is_error, result.output
    assert "replaced 2" in result.output
    assert (workspace / "app.py").read_text() == "a = 2\nb = 2\n"


def test_edit_file_keeps_crlf_line_endings(registry: ToolRegistry, workspace: Path) -> None:
    (workspace / "win.txt").write_bytes(b"one\r\ntwo\r\n")
    result = registry.call("edit_file", {"path": "win.txt", "old_string": "two", "new_string": "2"})
    assert not result.is_error, result.output
    assert (workspace / "win.txt").read_bytes() == b"one\r\n2\r\n"


def test_edit_file_on_a_missing_file_is_an_error(registry: ToolRegistry) -> None:
    result = registry.call("edit_file", {"path": "nope.py", "old_string": "a", "new_string": "b"})
    assert result.is_error
    assert "file not found" in result.output


def test_write_file_creates_parent_directories(registry: ToolRegistry, workspace: Path) -> None:
    result = registry.call("write_file", {"path": "deep/er/new.txt", "content": "hi\n"})
    assert not result.is_error, result.output
    assert (workspace / "deep" / "er" / "new.txt").read_text() == "hi\n"
    assert "created" in result.output


def test_write_file_without_content_is_an_error(registry: ToolRegistry, workspace: Path) -> None:
    result = registry.call("write_file", {"path": "f.txt"})
    assert result.is_error
    assert "content" in result.output
    assert not (workspace / "f.txt").exists()


def test_read_file_offset_and_limit(registry: ToolRegistry, workspace: Path) -> None:
    (workspace / "n.txt").write_text("".join(f"line {i}\n" for i in range(1, 11)))
    result = registry.call("read_file", {"path": "n.txt", "offset": 3, "limit": 2})
    assert not result.is_error
    assert result.output.startswith("line 3\nline 4\n")
    assert "line 5" not in result.output
    assert "offset=5" in result.output


def test_read_file_whole_file(registry: ToolRegistry, workspace: Path) -> None:
    (workspace / "n.txt").write_text("a\nb\n")
    assert registry.call("read_file", {"path": "n.txt"}).output == "a\nb\n"


def test_read_file_refuses_binary_and_directories(registry: ToolRegistry, workspace: Path) -> None:
    (workspace / "blob.bin").write_bytes(b"\x00\x01\x02")
    (workspace / "dir").mkdir()
    binary = registry.call("read_file", {"path": "blob.bin"})
    directory = registry.call("read_file", {"path": "dir"})
    assert binary.is_error
    assert "binary" in binary.output
    assert directory.is_error
    assert "directory" in directory.output


def test_read_file_caps_long_lines(registry: ToolRegistry, workspace: Path) -> None:
    (workspace / "wide.txt").write_text("x" * 10_000 + "\n")
    result = registry.call("read_file", {"path": "wide.txt"})
    assert len(result.output) < 3000
    assert "line truncated" in result.output


def test_list_dir_marks_directories_and_symlinks(registry: ToolRegistry, workspace: Path) -> None:
    (workspace / "src").mkdir()
    (workspace / "b.txt").write_text("")
    (workspace / "link").symlink_to(workspace / "b.txt")
    assert registry.call("list_dir", {}).output == "b.txt\nlink@\nsrc/"


def test_bad_argument_types_are_error_results(registry: ToolRegistry) -> None:
    result = registry.call("read_file", {"path": 42})
    assert result.is_error
    assert "must be a string" in result.output
