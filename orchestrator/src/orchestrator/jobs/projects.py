"""Project directories: where a job's workspace lives on the host, and what is allowed.

A project path is walked from ``<base>/projects`` one component at a time with
``openat(O_PATH | O_NOFOLLOW)``, so no symlink is ever followed and what is checked is what is
held: the walk ends with a descriptor of the directory itself. The engine is later given the
path as a string, and a path can be made to lead elsewhere after the check; two rules close
that gap:

* no component of a project path may lie inside a directory the sandbox user can write (every
  job's own project is one): a job could rename or swap anything there, e.g. with
  ``renameat2(RENAME_EXCHANGE)`` against a symlink, between the check and the container's start;
* the descriptor stays open until the started container's ``/workspace`` has been compared with
  it by device and inode (``jobs/workspace_check.py``). An open descriptor keeps the inode
  allocated, so its number cannot be reused by another directory meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import stat
import weakref
from dataclasses import dataclass
from pathlib import Path, PurePath

from orchestrator.containers.backend import DirectoryIdentity
from orchestrator.errors import FailedPrecondition, InvalidArgument

SANDBOX_UID = 1000
SANDBOX_GID = 1000
OUTSIDE_BASE = "Project directory outside allowed base"
# Where warm-pool slots keep their directories until a job claims one (jobs/warm_pool.py): no
# job may name one, or two jobs could share a workspace.
WARM_SLOTS_DIR = ".warm"

_OPEN_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class _Step:
    """One directory of the walk: its name, descriptor, status and how the caller spelled it."""

    name: str
    fd: int
    st: os.stat_result
    shown: str


class HeldProjectDir:
    """A validated project directory, held open from validation until its container has been
    verified (``close``). ``path`` is what the engine is given; ``identity`` is what must be
    mounted at ``/workspace``."""

    def __init__(self, fd: int, path: Path, requested: str) -> None:
        st = os.fstat(fd)
        self.path = path
        self.requested = requested
        self.identity = DirectoryIdentity(device=st.st_dev, inode=st.st_ino)
        self._fd = fd
        # A safety net only: every path through the job manager closes it explicitly.
        self._closer = weakref.finalize(self, _close_quietly, fd)

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return not self._closer.alive

    def close(self) -> None:
        self._closer()

    def __enter__(self) -> HeldProjectDir:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HeldProjectDir({str(self.path)!r}, {self.identity})"


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def open_project_dir(requested: str, projects_dir: Path) -> HeldProjectDir:
    """Walks ``requested`` (absolute, or relative to ``projects_dir``) without following any
    symlink and returns the directory held open.

    Raises InvalidArgument when the path leaves the base ("Project directory outside allowed
    base"), does not exist, is not a directory, has a symlink component, lies inside a
    directory the sandbox user can write, or is not writable by the sandbox user.
    """
    if "\x00" in requested:
        raise InvalidArgument(f"{OUTSIDE_BASE}: path contains a NUL byte")
    base = Path(os.path.realpath(projects_dir))
    shown_root, parts = _parts_below_base(requested, projects_dir, base)
    try:
        # The base is the operator's configuration and may itself be reached through a link.
        base_fd = os.open(projects_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InvalidArgument(f"Project directory {requested} does not exist") from None
    except OSError as exc:
        raise InvalidArgument(
            f"Project directory {requested} cannot be examined: the projects base is not "
            f"accessible to the orchestrator ({exc.strerror})"
        ) from None
    steps: list[_Step] = [_Step("", base_fd, os.fstat(base_fd), shown_root or ".")]
    try:
        for name in parts:
            if name == "..":
                if len(steps) == 1:
                    raise InvalidArgument(
                        f"{OUTSIDE_BASE}: {requested} (allowed: directories under {base})"
                    )
                os.close(steps.pop().fd)
                continue
            parent = steps[-1]
            if len(steps) == 1 and name == WARM_SLOTS_DIR:
                raise InvalidArgument(
                    f"Project directory {requested} is refused: {WARM_SLOTS_DIR} under the "
                    "projects base holds the warm pool's workspaces, which only the "
                    "orchestrator hands out"
                )
            # Checked before anything below it is looked at: whatever a job does in there
            # (a link, a swap) is then never what decides.
            if len(steps) > 1 and _sandbox_controls(parent.st):
                raise InvalidArgument(
                    f"Project directory {requested} is refused: it lies inside {parent.shown}, "
                    f"which the sandbox user (uid {SANDBOX_UID}) can write, as it can every "
                    "job's project: a job working there could rename or replace the directory "
                    "after this check. Use a directory directly under the projects base, or "
                    f"give {parent.shown} to another user and remove its group and world "
                    f"write bits (`chown root {parent.shown} && chmod go-w {parent.shown}`)"
                )
            shown = os.path.join(shown_root, *_names(steps), name)
            where = base.joinpath(*_names(steps))
            steps.append(_open_step(parent.fd, name, shown, requested, where, base))
        if len(steps) == 1:
            raise InvalidArgument(
                f"{OUTSIDE_BASE}: {requested} (allowed: directories under {base})"
            )
        target = steps[-1]
        path = base.joinpath(*_names(steps))
        if not _sandbox_can_write(target.st):
            raise InvalidArgument(
                f"Project directory {path} is not writable by the sandbox user "
                f"(uid {SANDBOX_UID}): run `chown -R {SANDBOX_UID} {path}`"
            )
        held = HeldProjectDir(target.fd, path, requested)
        steps.pop()
        return held
    finally:
        for step in steps:
            _close_quietly(step.fd)


def _names(steps: list[_Step]) -> list[str]:
    return [step.name for step in steps[1:]]


def _open_step(
    parent: int, name: str, shown: str, requested: str, where: Path, base: Path
) -> _Step:
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        raise InvalidArgument(f"Project directory {requested} does not exist") from None
    except OSError as exc:
        raise InvalidArgument(
            f"Project directory {requested} cannot be examined: {shown}: {exc.strerror}"
        ) from None
    st = os.fstat(fd)
    if stat.S_ISLNK(st.st_mode):
        os.close(fd)
        prefix = f"Project directory {requested} is refused"
        if _leads_out(parent, name, where, base):
            prefix = f"{OUTSIDE_BASE}: {requested}"
        raise InvalidArgument(
            f"{prefix}: {shown} is a symbolic link. Name the real directory: a link is not "
            "followed, since it can be pointed elsewhere (out of the allowed base, or into "
            "another project) after the check"
        )
    if not stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise InvalidArgument(f"Project directory {requested} is not a directory ({shown})")
    return _Step(name, fd, st, shown)


def _leads_out(parent: int, name: str, where: Path, base: Path) -> bool:
    """Where a refused link points now, for the message only: it decides nothing."""
    try:
        resolved = Path(os.path.realpath(where / os.readlink(name, dir_fd=parent)))
    except OSError:
        return False
    return resolved == base or not resolved.is_relative_to(base)


def _parts_below_base(requested: str, projects_dir: Path, base: Path) -> tuple[str, list[str]]:
    """The components of ``requested`` below the base, and the base as the caller spelled it
    ("" for a relative path). ``..`` stays a component: the walk climbs it physically."""
    candidate = PurePath(os.path.expanduser(requested))
    if not candidate.is_absolute():
        return "", list(candidate.parts)
    for root in (PurePath(os.path.abspath(projects_dir)), PurePath(base)):
        if candidate.is_relative_to(root):
            return str(root), list(candidate.relative_to(root).parts)
    raise InvalidArgument(f"{OUTSIDE_BASE}: {requested} (allowed: directories under {base})")


def _sandbox_can_write(st: os.stat_result) -> bool:
    """uid 1000 without DAC_OVERRIDE can create, rename and remove entries here."""
    return bool(
        (st.st_uid == SANDBOX_UID and st.st_mode & 0o200)
        or (st.st_gid == SANDBOX_GID and st.st_mode & 0o020)
        or st.st_mode & 0o002
    )


def _sandbox_controls(st: os.stat_result) -> bool:
    """The sandbox user can write here, or make it writable: an owner may always chmod."""
    return st.st_uid == SANDBOX_UID or _sandbox_can_write(st)


def hold_job_project_dir(requested: str | None, projects_dir: Path, job_id: str) -> HeldProjectDir:
    """The job's project, held open: the one it names, or ``<projects>/<job_id>`` created for it."""
    if requested:
        return open_project_dir(requested, projects_dir)
    try:
        create_job_project_dir(projects_dir, job_id)
    except OSError as exc:
        raise FailedPrecondition(
            f"the job's project directory {projects_dir / job_id} could not be prepared: "
            f"{exc.strerror}"
        ) from None
    return open_project_dir(job_id, projects_dir)


def create_job_project_dir(projects_dir: Path, job_id: str) -> Path:
    """Creates ``<projects>/<job_id>`` owned by the sandbox user (raises OSError)."""
    projects_dir.mkdir(parents=True, exist_ok=True)
    path = projects_dir / job_id
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o755)
    # Through a descriptor opened without following links: whatever may sit at that name, the
    # ownership change lands on that directory and never on a link's target.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            os.fchown(fd, SANDBOX_UID, SANDBOX_GID)
        except PermissionError:
            # Not root: a directory we created is ours; make it writable for the sandbox user.
            os.fchmod(fd, 0o777)
    finally:
        os.close(fd)
    return path
