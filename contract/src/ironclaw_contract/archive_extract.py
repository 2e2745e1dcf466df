"""Unpacks a checked archive into a fresh directory, never following a link.

Every entry is created relative to a directory descriptor, one component at a time, with
``O_NOFOLLOW`` and ``O_EXCL``: the tree being built holds only what this module made (the
archive may hold no link, see ``archive_rules``), and nothing can be made to land outside it
even if a name slipped through. Who owns what is made is the caller's ``owner`` (the
orchestrator, maybe root, gives it to the sandbox user; a job container already is that user).

The orchestrator unpacks uploads with it, and a job container the workspace it fetches on a
backend without shared host paths: one extractor, one set of refusals.
"""

from __future__ import annotations

import errno
import os
import tarfile
from dataclasses import dataclass
from typing import IO, Protocol

from ironclaw_contract.archive_rules import (
    ArchiveLedger,
    ArchiveRefused,
    PlannedEntry,
    plan_entry,
    shown,
)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY_CHUNK = 1 << 20


class Readable(Protocol):
    def read(self, size: int = -1) -> bytes: ...


class ArchiveCorrupt(Exception):
    """The archive's bytes are not what its format requires (a message for the caller)."""


class ArchiveTruncated(ArchiveCorrupt):
    def __init__(self) -> None:
        super().__init__("the archive ended before its gzip data did (truncated upload?)")


class ArchiveUnwritable(Exception):
    """An entry passed the rules but could not be written here; ``disk_full`` when the disk
    (or the workspace's size limit) is what stopped it, which the message does not say: the
    caller knows whose disk it is."""

    def __init__(self, message: str, disk_full: bool) -> None:
        super().__init__(message)
        self.disk_full = disk_full


@dataclass(frozen=True)
class ExtractStats:
    entries: int
    file_bytes: int = 0


class Owner(Protocol):
    def apply(self, fd: int, mode: int, is_dir: bool) -> None:
        """Gives the file or directory open as ``fd`` its owner and permission bits."""


class ModeOnly:
    """The owner of a process that already is the workspace's user: permission bits only."""

    def apply(self, fd: int, mode: int, is_dir: bool) -> None:
        os.fchmod(fd, mode)


class _Parents:
    """Opens (creating as needed) the directory of each entry, keeping the last one open:
    an archive lists a directory's files together."""

    def __init__(self, root_fd: int, owner: Owner) -> None:
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


def _open_or_make_dir(parent: int, name: str, owner: Owner) -> int:
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


def extract_tree(
    source: Readable,
    root_fd: int,
    owner: Owner,
    max_file_bytes: int | None = None,
    gzipped: bool = False,
) -> ExtractStats:
    """Unpacks the tar archive read from ``source`` (inflated here when ``gzipped``; the
    orchestrator inflates an upload itself, to bound its size) below ``root_fd``.
    Raises ArchiveRefused on the first entry that breaks a rule (or past ``max_file_bytes`` of
    file contents), ArchiveUnwritable when one cannot be written; what was unpacked until
    then is the caller's to remove."""
    ledger = ArchiveLedger()
    file_bytes = 0
    dir_modes: dict[tuple[str, ...], int] = {}
    parents = _Parents(root_fd, owner)
    try:
        with _open_tar(source, gzipped) as tar:
            while True:
                info = _next_entry(tar)
                if info is None:
                    break
                entry = plan_entry(info, ledger)
                if entry is None:
                    continue
                file_bytes += entry.size
                if max_file_bytes is not None and file_bytes > max_file_bytes:
                    raise ArchiveRefused(
                        f"the archive holds more than {max_file_bytes} bytes of files "
                        f"(at {shown(info.name)})"
                    )
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
    return ExtractStats(entries=ledger.entries, file_bytes=file_bytes)


def _open_tar(source: Readable, gzipped: bool) -> tarfile.TarFile:
    try:
        # Closed by the caller's ``with``; opening reads the first header, which may fail.
        return tarfile.open(fileobj=source, mode="r|gz" if gzipped else "r|")  # type: ignore[call-overload,no-any-return]
    except tarfile.ReadError as exc:
        raise ArchiveRefused(f"the archive is not a tar or tar.gz archive ({exc})") from None
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
    owner: Owner,
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


def _apply_dir_modes(root_fd: int, dir_modes: dict[tuple[str, ...], int], owner: Owner) -> None:
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


def _os_failure(entry: PlannedEntry, exc: OSError) -> Exception:
    name = shown("/".join(entry.parts))
    if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return ArchiveRefused(f"archive entry {name} cannot be created: {exc.strerror}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ArchiveUnwritable(f"archive entry {name} could not be written", disk_full=True)
    return ArchiveUnwritable(
        f"archive entry {name} could not be written: {exc.strerror}", disk_full=False
    )
