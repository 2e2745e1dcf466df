"""Path confinement: every tool path must resolve inside the workspace."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.tools import ToolContext, ToolError, ToolRegistry


def test_relative_path_resolves_against_workspace(context: ToolContext, workspace: Path) -> None:
    assert context.resolve_path("src/main.py") == workspace.resolve() / "src" / "main.py"


def test_absolute_path_inside_workspace_is_accepted(context: ToolContext, workspace: Path) -> None:
    inside = workspace.resolve() / "a.txt"
    assert context.resolve_path(str(inside)) == inside


def test_dotdot_that_stays_inside_is_accepted(context: ToolContext, workspace: Path) -> None:
    assert context.resolve_path("src/../a.txt") == workspace.resolve() / "a.txt"


@pytest.mark.parametrize("raw", ["../outside/secret.txt", "a/../../outside", "..", "../../.."])
def test_dotdot_escape_is_rejected(context: ToolContext, raw: str) -> None:
    with pytest.raises(ToolError, match="outside the workspace"):
        context.resolve_path(raw)


@pytest.mark.parametrize("raw", ["/etc/passwd", "/", "/tmp"])
def test_absolute_path_outside_is_rejected(context: ToolContext, raw: str) -> None:
    with pytest.raises(ToolError, match="outside the workspace"):
        context.resolve_path(raw)


def test_absolute_sibling_with_common_prefix_is_rejected(
    context: ToolContext, workspace: Path
) -> None:
    # /x/workspace2 starts with the string /x/workspace but is not inside it.
    sibling = workspace.parent / (workspace.name + "2")
    sibling.mkdir()
    with pytest.raises(ToolError, match="outside the workspace"):
        context.resolve_path(str(sibling / "f"))


def test_symlinked_file_pointing_out_is_rejected(
    context: ToolContext, workspace: Path, outside: Path
) -> None:
    (workspace / "link.txt").symlink_to(outside / "secret.txt")
    with pytest.raises(ToolError, match="outside the workspace"):
        context.resolve_path("link.txt")


def test_path_through_symlinked_directory_pointing_out_is_rejected(
    context: ToolContext, workspace: Path, outside: Path
) -> None:
    (workspace / "out").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ToolError, match="outside the workspace"):
        context.resolve_path("out/new-file.txt")


def test_symlink_inside_workspace_is_accepted(context: ToolContext, workspace: Path) -> None:
    (workspace / "real.txt").write_text("x")
    (workspace / "alias.txt").symlink_to(workspace / "real.txt")
    assert context.resolve_path("alias.txt") == workspace.resolve() / "real.txt"


def test_workspace_reached_through_a_symlink_still_confines(tmp_path: Path, outside: Path) -> None:
    real = tmp_path / "real-ws"
    real.mkdir()
    (tmp_path / "ws-link").symlink_to(real, target_is_directory=True)
    context = ToolContext(workspace=tmp_path / "ws-link")
    assert context.resolve_path("a.txt") == real.resolve() / "a.txt"
    with pytest.raises(ToolError, match="outside the workspace"):
        context.resolve_path("../outside/secret.txt")


def test_empty_path_is_rejected(context: ToolContext) -> None:
    with pytest.raises(ToolError, match="must not be empty"):
        context.resolve_path("")


def test_tools_return_escape_as_error_result(
    registry: ToolRegistry, workspace: Path, outside: Path
) -> None:
    read = registry.call("read_file", {"path": "../outside/secret.txt"})
    assert read.is_error
    assert "outside the workspace" in read.output
    assert "outside secret" not in read.output

    (workspace / "out").symlink_to(outside, target_is_directory=True)
    write = registry.call("write_file", {"path": "out/planted.txt", "content": "x"})
    assert write.is_error
    assert not (outside / "planted.txt").exists()

    edit = registry.call(
        "edit_file",
        {"path": str(outside / "secret.txt"), "old_string": "outside", "new_string": "owned"},
    )
    assert edit.is_error
    assert (outside / "secret.txt").read_text() == "outside secret\n"

    for name, args in [
        ("list_dir", {"path": ".."}),
        ("glob", {"pattern": "*", "path": "/"}),
        ("grep", {"pattern": "secret", "path": "../outside"}),
        ("shell", {"command": "pwd", "workdir": ".."}),
    ]:
        result = registry.call(name, args)
        assert result.is_error, name
        assert "outside the workspace" in result.output, name
