"""Project directories: where a job's workspace lives on the host, and what is allowed."""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.errors import InvalidArgument

SANDBOX_UID = 1000
OUTSIDE_BASE = "Project directory outside allowed base"


def validate_bind_mount_path(requested: str, projects_dir: Path) -> Path:
    """Canonicalizes ``requested`` (symlinks resolved) and checks it lies under projects_dir.

    Relative paths are taken relative to ``projects_dir``. Raises InvalidArgument with
    "Project directory outside allowed base" or "... does not exist".
    """
    if "\x00" in requested:
        raise InvalidArgument(f"{OUTSIDE_BASE}: path contains a NUL byte")
    base = projects_dir.resolve()
    candidate = Path(requested).expanduser()
    if not candidate.is_absolute():
        candidate = base / candidate
    # Resolve before comparing, so neither `..` nor a symlink can walk out of the base.
    resolved = candidate.resolve(strict=False)
    if resolved == base or not resolved.is_relative_to(base):
        raise InvalidArgument(f"{OUTSIDE_BASE}: {requested} (allowed: directories under {base})")
    if not resolved.exists():
        raise InvalidArgument(f"Project directory {requested} does not exist")
    if not resolved.is_dir():
        raise InvalidArgument(f"Project directory {requested} is not a directory")
    return resolved


def check_writable_by_sandbox(path: Path) -> None:
    """Refuses a project dir the sandbox user (uid 1000, no DAC_OVERRIDE) cannot write."""
    st = path.stat()
    writable = (
        (st.st_uid == SANDBOX_UID and st.st_mode & 0o200)
        or (st.st_gid == SANDBOX_UID and st.st_mode & 0o020)
        or st.st_mode & 0o002
    )
    if not writable:
        raise InvalidArgument(
            f"Project directory {path} is not writable by the sandbox user (uid {SANDBOX_UID}): "
            f"run `chown -R {SANDBOX_UID} {path}`"
        )


def create_job_project_dir(projects_dir: Path, job_id: str) -> Path:
    """Creates ``<projects>/<job_id>`` owned by the sandbox user."""
    projects_dir.mkdir(parents=True, exist_ok=True)
    path = projects_dir / job_id
    path.mkdir(mode=0o755, exist_ok=True)
    chown_to_sandbox(path)
    return path


def chown_to_sandbox(path: Path) -> None:
    """Gives ``path`` to uid 1000 when we may; otherwise it must already be writable."""
    try:
        os.chown(path, SANDBOX_UID, SANDBOX_UID)
    except PermissionError:
        # Not root: a directory we created is ours; make it writable for the sandbox user.
        path.chmod(0o777)
