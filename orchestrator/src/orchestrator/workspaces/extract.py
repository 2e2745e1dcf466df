"""Unpacks a checked archive into a fresh directory, never following a link.

Every entry is created relative to a directory descriptor, one component at a time, with
``O_NOFOLLOW`` and ``O_EXCL``: the tree being built holds only what this module made (the
archive may hold no link, see ``archive_rules``), and nothing can be made to land outside it
even if a name slipped through. Files are given to the sandbox user (uid 1000), who must be
able to change them in the job; see :class:`SandboxOwnership`.
"""

from __future__ import annotations

import errno
import os
import tarfile
from dataclasses import dataclass
from typing import IO, Protocol

from orchestrator.errors import FailedPrecondition, OrchestratorError
from orchestrator.jobs.projects import SANDBOX_GID, SANDBOX_UID
from orchestrator.workspaces.archive_rules import (
    ArchiveLedger,
    ArchiveRefused,
    PlannedEntry,
    plan_entry,
    shown,
)
from orchestrator.workspaces.streams import ArchiveCorrupt

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY_CHUNK = 1 << 20


class Readable(Protocol):
    def read(self, size: int = -1) -> bytes: ...


@dataclass(frozen=True)
class ExtractStats:
    entries: int


class SandboxOwnership:
    """How what is unpacked becomes the sandbox user's: as root, by owner (uid/gid 1000, the
    archive's permission bits); running as uid 1000, it already is; as any other user, by
    permission bits (group and others may write), as ``create_job_project_dir`` does."""

    def __init__(self, euid: int | None = None) -> None:
        self._euid = os.geteuid() if euid is None else euid

    def apply(self, fd: int, mode: int, is_dir: bool) -> None:
        if self._euid == 0:
            os.fchown(fd, SANDBOX_UID, SANDBOX_GID)
        elif self._euid != SANDBOX_UID:
            mode |= 0o777 if is_dir else 0o666
        os.fchmod(fd, mode)


class _Parents:
    """Opens (creating as needed) the directory of each entry, keeping the last one open:
    an archive lists a directory's files together."""

    def __init__(self, root_fd: int, owner: SandboxOwnership) -> None:
        self._root = root_fd
        self._owner = owner
        self._held: tuple[tuple[str, ...], int] | None = None

    def open(self, parts: tuple[str, ...]) -> int:
        if self._held is not None and self._held[0] == parts:
            return self._held[1]
        self.close()
        fd = os.dup(self._root)
        try:
            for name in parts:
                child = _open_or_make_dir(fd, name, self._owner)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        self._held = (parts, fd)
        return fd

    def close(self) -> None:
        if self._held is not None:
            os.close(self._held[1])
            self._held = None


def _open_or_make_dir(parent: int, name: str, owner: SandboxOwnership) -> int:
    try:
        os.mkdir(name, 0o700, dir_fd=parent)
        made = True
    except FileExistsError:
        made = False
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    if made:
        # Writable by its owner while it is filled; the archive's own bits come at the end.
        owner.apply(fd, 0o755, is_dir=True)
    return fd


def extract_tree(source: Readable, root_fd: int, owner: SandboxOwnership) -> ExtractStats:
    """Unpacks the tar archive read from ``source`` below ``root_fd``. Raises ArchiveRefused
    (or another OrchestratorError) on the first entry that breaks a rule; what was unpacked
    until then is the caller's to remove."""
    ledger = ArchiveLedger()
    dir_modes: dict[tuple[str, ...], int] = {}
    parents = _Parents(root_fd, owner)
    try:
        with _open_tar(source) as tar:
            while True:
                info = _next_entry(tar)
                if info is None:
                    break
                entry = plan_entry(info, ledger)
                if entry is None:
                    continue
                try:
                    if entry.is_dir:
                        parents.open(entry.parts)  # made, and held for its files
                        dir_modes[entry.parts] = entry.mode
                    else:
                        _write_file(tar, info, entry, parents.open(entry.parts[:-1]), owner)
                except OSError as exc:
                    raise _os_failure(entry, exc) from None
        _apply_dir_modes(root_fd, dir_modes, owner)
    finally:
        parents.close()
    return ExtractStats(entries=ledger.entries)


def _open_tar(source: Readable) -> tarfile.TarFile:
    try:
        # Closed by the caller's ``with``; opening reads the first header, which may fail.
        return tarfile.open(fileobj=source, mode="r|")  # type: ignore[call-overload,no-any-return]
    except tarfile.ReadError as exc:
        raise ArchiveRefused(f"the upload is not a tar or tar.gz archive ({exc})") from None
    except ArchiveCorrupt as exc:
        raise ArchiveRefused(f"the archive is damaged: {exc}") from None


def _next_entry(tar: tarfile.TarFile) -> tarfile.TarInfo | None:
    try:
        info = tar.next()
    except (tarfile.TarError, ArchiveCorrupt) as exc:
        raise ArchiveRefused(f"the archive is damaged: {exc}") from None
    # In stream mode tarfile keeps every header it read (its ``members``, which the type
    # stubs do not declare); nothing here looks back at them.
    tar.__dict__["members"].clear()
    return info


def _write_file(
    tar: tarfile.TarFile,
    info: tarfile.TarInfo,
    entry: PlannedEntry,
    parent: int,
    owner: SandboxOwnership,
) -> None:
    fd = os.open(entry.parts[-1], _FILE_FLAGS, 0o600, dir_fd=parent)
    try:
        data = tar.extractfile(info)
        if data is None:  # pragma: no cover - plan_entry passes regular files only
            raise ArchiveRefused(f"archive entry {shown(info.name)} has no data")
        _copy(data, fd, entry)
        owner.apply(fd, entry.mode, is_dir=False)
        os.utime(fd, (entry.mtime, entry.mtime))
    finally:
        os.close(fd)


def _copy(data: IO[bytes], fd: int, entry: PlannedEntry) -> None:
    left = entry.size
    while left > 0:
        try:
            chunk = data.read(min(left, _COPY_CHUNK))
        except (tarfile.TarError, ArchiveCorrupt) as exc:
            raise ArchiveRefused(f"the archive is damaged: {exc}") from None
        if not chunk:
            raise ArchiveRefused(f"the archive ends inside {shown('/'.join(entry.parts))}")
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]
        left -= len(chunk)


def _apply_dir_modes(
    root_fd: int, dir_modes: dict[tuple[str, ...], int], owner: SandboxOwnership
) -> None:
    # Deepest first: a directory the archive makes read-only would stop nothing here (the
    # walk only reads), but the order keeps that true for any owner.
    for parts in sorted(dir_modes, key=len, reverse=True):
        fd = os.dup(root_fd)
        try:
            for name in parts:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
            owner.apply(fd, dir_modes[parts], is_dir=True)
        finally:
            os.close(fd)


def _os_failure(entry: PlannedEntry, exc: OSError) -> OrchestratorError:
    name = shown("/".join(entry.parts))
    if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return ArchiveRefused(f"archive entry {name} cannot be created: {exc.strerror}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return FailedPrecondition(
            f"the orchestrator's disk is full: archive entry {name} could not be written"
        )
    return FailedPrecondition(f"archive entry {name} could not be written: {exc.strerror}")
