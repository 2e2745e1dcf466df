"""The walk that validates a project path: no symlink followed, nothing inside another project,
and the directory checked is the one held."""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from pathlib import Path

import pytest

from orchestrator.errors import FailedPrecondition, InvalidArgument
from orchestrator.jobs.projects import (
    SANDBOX_UID,
    HeldProjectDir,
    hold_job_project_dir,
    open_project_dir,
)

IS_ROOT = os.geteuid() == 0
# Every directory a test creates belongs to the user running it: when that is uid 1000 itself,
# every one of them is the sandbox's, and the tests of "not the sandbox's" cannot be set up.
AS_SANDBOX = os.geteuid() == SANDBOX_UID
needs_other_user = pytest.mark.skipif(AS_SANDBOX, reason="runs as uid 1000, the sandbox user")


def give_to_sandbox(path: Path) -> Path:
    """What the README asks of a project: writable by uid 1000."""
    if IS_ROOT:
        os.chown(path, SANDBOX_UID, SANDBOX_UID)
    else:
        path.chmod(0o777)
    return path


def project(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir(parents=True)
    return give_to_sandbox(path)


def identity_of(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def held_identity(held: HeldProjectDir) -> tuple[int, int]:
    return held.identity.device, held.identity.inode


@pytest.fixture
def projects(tmp_path: Path) -> Path:
    base = tmp_path / "base" / "projects"
    base.mkdir(parents=True)
    project(base, "ok")
    return base


# ------------------------------------------------------------------ accepted


def test_a_directory_under_the_base_is_accepted_and_held(projects: Path) -> None:
    for requested in (str(projects / "ok"), "ok", "./ok", str(projects) + "//ok/"):
        with open_project_dir(requested, projects) as held:
            assert held.path == (projects / "ok").resolve()
            assert held_identity(held) == identity_of(projects / "ok")
            # The descriptor is the directory itself.
            assert os.fstat(held.fd).st_ino == held.identity.inode
        assert held.closed


def test_symlinked_base_still_accepts_its_children(tmp_path: Path, projects: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(projects)
    for requested in (str(alias / "ok"), str(projects.resolve() / "ok"), "ok"):
        with open_project_dir(requested, alias) as held:
            assert held.path == (projects / "ok").resolve()


@needs_other_user
def test_a_nested_project_below_directories_the_sandbox_cannot_write_is_accepted(
    projects: Path,
) -> None:
    team = projects / "team"
    team.mkdir(mode=0o755)
    team.chmod(0o755)
    project(team, "app")
    with open_project_dir(str(team / "app"), projects) as held:
        assert held.path == (team / "app").resolve()


@needs_other_user
def test_dot_dot_is_walked_physically_and_may_stay_inside(projects: Path) -> None:
    team = projects / "team"
    team.mkdir(mode=0o755)
    team.chmod(0o755)
    with open_project_dir("team/../ok", projects) as held:
        assert held.path == (projects / "ok").resolve()


# ------------------------------------------------------------------ outside the base


@pytest.mark.parametrize(
    "requested", ["/tmp/untrusted", "../escape", "ok/../../escape", "/", "ok/..", ".", ""]
)
def test_paths_outside_the_base_are_rejected(projects: Path, requested: str) -> None:
    with pytest.raises(InvalidArgument, match="Project directory outside allowed base"):
        open_project_dir(requested, projects)


def test_the_base_itself_is_not_a_project(projects: Path) -> None:
    with pytest.raises(InvalidArgument, match="outside allowed base"):
        open_project_dir(str(projects), projects)


def test_a_nul_byte_is_rejected(projects: Path) -> None:
    with pytest.raises(InvalidArgument, match="outside allowed base: path contains a NUL"):
        open_project_dir("ok\x00/x", projects)


def test_an_absolute_path_reaching_the_base_through_a_link_outside_is_rejected(
    tmp_path: Path, projects: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.symlink_to(projects)
    with pytest.raises(InvalidArgument, match="outside allowed base"):
        open_project_dir(str(elsewhere / "ok"), projects)


# ------------------------------------------------------------------ symlinks


def test_symlink_pointing_out_is_rejected(projects: Path, tmp_path: Path) -> None:
    outside = project(tmp_path, "outside")
    (projects / "link").symlink_to(outside)
    with pytest.raises(InvalidArgument, match="Project directory outside allowed base") as caught:
        open_project_dir(str(projects / "link"), projects)
    assert f"{projects / 'link'} is a symbolic link" in caught.value.message
    assert str(outside) not in caught.value.message  # where it points is not told


def test_symlink_to_another_project_inside_the_base_is_rejected(projects: Path) -> None:
    project(projects, "b")
    (projects / "link-to-b").symlink_to(projects / "b")
    with pytest.raises(InvalidArgument, match="link-to-b is a symbolic link") as caught:
        open_project_dir("link-to-b", projects)
    assert "outside allowed base" not in caught.value.message


@needs_other_user
def test_a_symlink_in_the_middle_of_the_path_is_rejected(projects: Path) -> None:
    team = projects / "team"
    team.mkdir(mode=0o755)
    team.chmod(0o755)
    project(team, "app")
    (projects / "alias").symlink_to(team)
    with pytest.raises(InvalidArgument, match=f"{projects / 'alias'} is a symbolic link"):
        open_project_dir(str(projects / "alias" / "app"), projects)


def test_a_symlink_before_dot_dot_is_not_climbed_through(projects: Path, tmp_path: Path) -> None:
    (tmp_path / "deep" / "ok").mkdir(parents=True)
    (projects / "link").symlink_to(tmp_path / "deep" / "ok")
    with pytest.raises(InvalidArgument, match="link is a symbolic link"):
        open_project_dir("link/../ok", projects)


# ------------------------------------------------------------------ inside another project


def test_a_path_inside_another_project_is_refused_with_why_and_what_to_do(
    projects: Path,
) -> None:
    a = project(projects, "a")
    project(a, "sub")
    with pytest.raises(InvalidArgument) as caught:
        open_project_dir(str(a / "sub"), projects)
    message = caught.value.message
    assert f"it lies inside {a}, which the sandbox user (uid 1000) can write" in message
    assert "could rename or replace" in message
    assert "directly under the projects base" in message
    assert f"chown root {a} && chmod go-w {a}" in message


def test_a_symlink_from_one_project_into_another_is_refused(projects: Path) -> None:
    a = project(projects, "a")
    project(projects, "b")
    (a / "link").symlink_to(projects / "b")
    with pytest.raises(InvalidArgument, match=f"it lies inside {a}"):
        open_project_dir(str(a / "link"), projects)


@needs_other_user
@pytest.mark.parametrize(
    ("mode", "owner", "group"),
    [
        (0o777, None, None),  # world-writable
        (0o1777, None, None),  # sticky does not help: uid 1000 renames what it owns
        (0o775, None, SANDBOX_UID),  # writable by the sandbox's group
        (0o555, SANDBOX_UID, None),  # the owner can always make it writable
    ],
)
def test_ancestors_the_sandbox_can_write_are_refused(
    projects: Path, mode: int, owner: int | None, group: int | None
) -> None:
    if (owner is not None or group is not None) and not IS_ROOT:
        pytest.skip("needs root to chown")
    team = projects / "team"
    team.mkdir()
    project(team, "app")
    if owner is not None or group is not None:
        os.chown(team, owner if owner is not None else -1, group if group is not None else -1)
    team.chmod(mode)
    try:
        with pytest.raises(InvalidArgument, match="lies inside"):
            open_project_dir("team/app", projects)
    finally:
        team.chmod(0o755)


# ------------------------------------------------------------------ existing, kind, access


def test_missing_directory_is_rejected(projects: Path) -> None:
    for requested in (str(projects / "nope"), "nope/deeper"):
        with pytest.raises(InvalidArgument, match="does not exist"):
            open_project_dir(requested, projects)


def test_missing_base_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="does not exist"):
        open_project_dir("ok", tmp_path / "none")


def test_file_is_not_a_project(projects: Path) -> None:
    (projects / "file").write_text("x")
    with pytest.raises(InvalidArgument, match="not a directory"):
        open_project_dir(str(projects / "file"), projects)
    with pytest.raises(InvalidArgument, match="not a directory"):
        open_project_dir("file/x", projects)


@pytest.mark.skipif(not IS_ROOT, reason="needs root to chown")
def test_directory_the_sandbox_cannot_write_is_refused_with_the_fix(projects: Path) -> None:
    target = projects / "ok"
    os.chown(target, 0, 0)
    target.chmod(0o755)
    with pytest.raises(InvalidArgument, match=f"chown -R 1000 {target}"):
        open_project_dir(str(target), projects)
    os.chown(target, 1000, 1000)
    open_project_dir(str(target), projects).close()


# ------------------------------------------------------------------ the job's own directory


def test_the_default_project_is_created_for_the_sandbox_and_held(projects: Path) -> None:
    with hold_job_project_dir("", projects, "job-1") as held:
        assert held.path == (projects / "job-1").resolve()
        st = os.stat(projects / "job-1")
        assert (st.st_uid == SANDBOX_UID) if IS_ROOT else (st.st_mode & 0o777 == 0o777)


def test_a_link_planted_where_the_default_project_goes_is_refused_and_not_chowned(
    projects: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    before = os.stat(victim)
    (projects / "job-2").symlink_to(victim)
    with pytest.raises(FailedPrecondition, match="could not be prepared"):
        hold_job_project_dir("", projects, "job-2")
    after = os.stat(victim)
    assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)


# ------------------------------------------------------------------ swapped components


def test_what_is_held_stays_the_validated_directory_when_the_path_is_swapped(
    projects: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    held = open_project_dir("ok", projects)
    try:
        (projects / "ok").rename(projects / "moved")
        (projects / "ok").symlink_to(outside)
        # The path now leads elsewhere; the held directory and its identity do not.
        assert identity_of(projects / "ok") == identity_of(outside)
        assert held_identity(held) == identity_of(projects / "moved")
        assert os.fstat(held.fd).st_ino == identity_of(projects / "moved")[1]
    finally:
        held.close()


RENAME_EXCHANGE = 2


def _rename_exchange(libc: ctypes.CDLL, a: bytes, b: bytes) -> None:
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, a, at_fdcwd, b, RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@needs_other_user
def test_a_component_swapped_with_a_symlink_in_a_tight_loop_is_never_followed(
    projects: Path, tmp_path: Path
) -> None:
    """Only the test can swap here (the parent is not the sandbox's): every walk either sees
    the symlink and refuses, or holds the real directory."""
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        pytest.skip("no renameat2 in this libc")
    outside = tmp_path / "outside"
    outside.mkdir()
    give_to_sandbox(outside)
    team = projects / "team"
    team.mkdir(mode=0o755)
    team.chmod(0o755)
    real = project(team, "app")
    real_identity = identity_of(real)
    (team / "decoy").symlink_to(outside)
    stop = threading.Event()
    swaps = [0]

    def swap() -> None:
        a, b = bytes(team / "app"), bytes(team / "decoy")
        while not stop.is_set():
            try:
                _rename_exchange(libc, a, b)
            except OSError as exc:
                if exc.errno in (errno.ENOSYS, errno.EINVAL):
                    return
                raise
            swaps[0] += 1

    thread = threading.Thread(target=swap, daemon=True)
    thread.start()
    refusals: list[str] = []
    accepted = 0
    try:
        for _ in range(2000):
            try:
                held = open_project_dir("team/app", projects)
            except InvalidArgument as exc:
                refusals.append(exc.message)
                continue
            with held:
                assert held_identity(held) == real_identity
                assert os.fstat(held.fd).st_ino == real_identity[1]
            accepted += 1
    finally:
        stop.set()
        thread.join(5)
    if swaps[0] == 0:
        pytest.skip("renameat2(RENAME_EXCHANGE) is not supported on this filesystem")
    assert all("app is a symbolic link" in message for message in refusals)
    # Both outcomes happened, so the walk really raced the swaps.
    assert refusals, (accepted, swaps[0])
    assert accepted, (len(refusals), swaps[0])
