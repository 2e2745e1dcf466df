"""glob and grep."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.tools import ToolRegistry


@pytest.fixture
def project(workspace: Path, outside: Path) -> Path:
    (workspace / "src" / "pkg").mkdir(parents=True)
    (workspace / "src" / "main.py").write_text("import pkg\nprint('Hello')\n")
    (workspace / "src" / "pkg" / "util.py").write_text("def hello():\n    return 'hello'\n")
    (workspace / "README.md").write_text("# Hello project\n")
    (workspace / "image.bin").write_bytes(b"hello\x00binary")
    (workspace / ".git").mkdir()
    (workspace / ".git" / "config").write_text("hello from git\n")
    (workspace / "escape.py").symlink_to(outside / "secret.txt")
    (outside / "leak.py").write_text("hello outside\n")
    (workspace / "outdir").symlink_to(outside, target_is_directory=True)
    return workspace


def test_glob_finds_files_recursively_sorted(registry: ToolRegistry, project: Path) -> None:
    result = registry.call("glob", {"pattern": "**/*.py"})
    assert not result.is_error, result.output
    assert result.output.splitlines() == ["src/main.py", "src/pkg/util.py"]


def test_glob_relative_to_path(registry: ToolRegistry, project: Path) -> None:
    assert registry.call("glob", {"pattern": "*", "path": "src"}).output == "src/main.py\nsrc/pkg/"


def test_glob_rejects_escaping_patterns(registry: ToolRegistry, project: Path) -> None:
    result = registry.call("glob", {"pattern": "../outside/*"})
    assert result.is_error
    assert "'..'" in result.output


def test_glob_without_matches(registry: ToolRegistry, project: Path) -> None:
    assert registry.call("glob", {"pattern": "*.rs"}).output == "(no matches)"


def test_grep_finds_lines_with_numbers(registry: ToolRegistry, project: Path) -> None:
    result = registry.call("grep", {"pattern": r"hello\b"})
    assert not result.is_error, result.output
    # .git, the binary file and the symlinks pointing out of the workspace are not searched.
    assert result.output.splitlines() == [
        "src/pkg/util.py:1: def hello():",
        "src/pkg/util.py:2:     return 'hello'",
    ]


def test_grep_ignore_case_and_include(registry: ToolRegistry, project: Path) -> None:
    result = registry.call("grep", {"pattern": "hello", "ignore_case": True, "include": "*.md"})
    assert result.output == "README.md:1: # Hello project"


def test_grep_single_file_path(registry: ToolRegistry, project: Path) -> None:
    result = registry.call("grep", {"pattern": "print", "path": "src/main.py"})
    assert result.output == "src/main.py:2: print('Hello')"


def test_grep_inside_a_skipped_directory_when_asked(registry: ToolRegistry, project: Path) -> None:
    result = registry.call("grep", {"pattern": "hello", "path": ".git"})
    assert result.output == ".git/config:1: hello from git"


def test_grep_bounds_results(registry: ToolRegistry, workspace: Path) -> None:
    (workspace / "many.txt").write_text("match\n" * 50)
    result = registry.call("grep", {"pattern": "match", "max_results": 5})
    lines = result.output.splitlines()
    assert lines[:5] == [f"many.txt:{n}: match" for n in range(1, 6)]
    assert lines[5] == "[stopped after 5 matches]"
    assert len(lines) == 6


def test_grep_invalid_regex_is_an_error(registry: ToolRegistry, project: Path) -> None:
    result = registry.call("grep", {"pattern": "(unclosed"})
    assert result.is_error
    assert "invalid regular expression" in result.output
