from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.errors import InvalidArgument
from orchestrator.jobs.projects import check_writable_by_sandbox, validate_bind_mount_path


@pytest.fixture
def projects(tmp_path: Path) -> Path:
    base = tmp_path / "base" / "projects"
    (base / "ok").mkdir(parents=True)
    return base


def test_a_directory_under_the_base_is_accepted(projects: Path) -> None:
    assert validate_bind_mount_path(str(projects / "ok"), projects) == (projects / "ok").resolve()
    assert validate_bind_mount_path("ok", projects) == (projects / "ok").resolve()


@pytest.mark.parametrize("requested", ["/tmp/untrusted", "../escape", "ok/../../escape", "/"])
def test_paths_outside_the_base_are_rejected(projects: Path, requested: str) -> None:
    with pytest.raises(InvalidArgument, match="Project directory outside allowed base"):
        validate_bind_mount_path(requested, projects)


def test_the_base_itself_is_not_a_project(projects: Path) -> None:
    with pytest.raises(InvalidArgument, match="outside allowed base"):
        validate_bind_mount_path(str(projects), projects)


def test_symlink_pointing_out_is_rejected(projects: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (projects / "link").symlink_to(outside)
    with pytest.raises(InvalidArgument, match="outside allowed base"):
        validate_bind_mount_path(str(projects / "link"), projects)


def test_symlinked_base_still_accepts_its_children(tmp_path: Path, projects: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(projects)
    assert validate_bind_mount_path(str(alias / "ok"), alias) == (projects / "ok").resolve()


def test_missing_directory_is_rejected(projects: Path) -> None:
    with pytest.raises(InvalidArgument, match="does not exist"):
        validate_bind_mount_path(str(projects / "nope"), projects)


def test_file_is_not_a_project(projects: Path) -> None:
    (projects / "file").write_text("x")
    with pytest.raises(InvalidArgument, match="not a directory"):
        validate_bind_mount_path(str(projects / "file"), projects)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_directory_the_sandbox_cannot_write_is_refused_with_the_fix(projects: Path) -> None:
    target = projects / "ok"
    os.chown(target, 0, 0)
    target.chmod(0o755)
    with pytest.raises(InvalidArgument, match=f"chown -R 1000 {target}"):
        check_writable_by_sandbox(target)
    os.chown(target, 1000, 1000)
    check_writable_by_sandbox(target)
