"""Packs a job's project into a gzip-compressed tar, never following a link.

The tree is the job's: while it runs (and after) it may hold anything its agent made, e.g. a
symlink to ``/etc/shadow`` or ``../../``, and may change under the walk. So the walk holds
directory descriptors and opens every entry relative to its parent with ``O_NOFOLLOW``: a link
is archived as a link (its target text, never its target's contents), a name swapped for a
link between look and open fails to open and is archived as the link it became, and what a
regular file's contents are read from is the descriptor that was checked to be one. Devices,
fifos and sockets are left out (the sandbox cannot make devices; a fifo would block a read).

The orchestrator packs a job's host directory with it (DownloadWorkspace, and the workspace a
job container fetches on a backend without shared host paths); a job container packs its own
``/workspace`` with it to push the result back.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a fifo swapped in after the look must not block the open.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
MAX_DEPTH = 128
_FLUSH_BYTES = 256 * 1024
_READ_CHUNK = 1 << 20


class PackFailed(Exception):
    """The tree cannot be packed (gone, unreadable, too deep); the message says why."""


@dataclass
class PackStats:
    files: int = 0
    dirs: int = 0
    links: int = 0
    skipped: int = 0


class _Sink:
    """The file tarfile writes to: hands the bytes on in chunks of a useful size."""

    def __init__(self, emit: Callable[[bytes], None]) -> None:
        self._emit = emit
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        if len(self._buffer) >= _FLUSH_BYTES:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._buffer:
            chunk = bytes(self._buffer)
            self._buffer.clear()
            self._emit(chunk)


class _FixedSize:
    """A file's contents as exactly ``size`` bytes, what its header promised: a file that
    grew is cut, one that shrank is padded with zeros (it changed while it was read)."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._left = size

    def read(self, n: int = -1) -> bytes:
        want = self._left if n < 0 else min(n, self._left)
        if want <= 0:
            return b""
        data = os.read(self._fd, min(want, _READ_CHUNK))
        if not data:
            data = b"\0" * min(want, _READ_CHUNK)
        self._left -= len(data)
        return data


def pack_tree(root: str, emit: Callable[[bytes], None]) -> PackStats:
    """Writes ``root`` (a directory, itself not a link) as a .tar.gz to ``emit``, chunk by
    chunk; member names are relative to it."""
    try:
        root_fd = os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        raise PackFailed("the job's workspace no longer exists") from None
    except OSError as exc:
        raise PackFailed(f"the job's workspace cannot be read: {exc.strerror}") from None
    sink = _Sink(emit)
    stats = PackStats()
    try:
        with tarfile.open(  # type: ignore[call-overload]
            fileobj=sink, mode="w|gz", format=tarfile.PAX_FORMAT
        ) as tar:
            _pack_dir(tar, root_fd, "", 0, stats)
    finally:
        os.close(root_fd)
    sink.flush()
    return stats


def _pack_dir(tar: tarfile.TarFile, dir_fd: int, prefix: str, depth: int, stats: PackStats) -> None:
    if depth > MAX_DEPTH:
        raise PackFailed(
            f"the workspace is nested deeper than {MAX_DEPTH} directories at {prefix!r}: "
            "the archive would be incomplete"
        )
    for name in sorted(os.listdir(dir_fd)):
        _pack_entry(tar, dir_fd, name, prefix + name, depth, stats)


def _pack_entry(
    tar: tarfile.TarFile, dir_fd: int, name: str, path: str, depth: int, stats: PackStats
) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return  # removed since the listing
    if stat.S_ISLNK(st.st_mode):
        _add_link(tar, dir_fd, name, path, st, stats)
    elif stat.S_ISDIR(st.st_mode):
        try:
            child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return
            if exc.errno == errno.ELOOP:  # swapped for a link after the look
                return _add_link(tar, dir_fd, name, path, st, stats)
            if exc.errno == errno.ENOTDIR:  # swapped for a file: left for the next download
                stats.skipped += 1
                return
            raise
        try:
            st = os.fstat(child)
            tar.addfile(_info(path + "/", tarfile.DIRTYPE, st))
            stats.dirs += 1
            _pack_dir(tar, child, path + "/", depth + 1, stats)
        finally:
            os.close(child)
    elif stat.S_ISREG(st.st_mode):
        _add_file(tar, dir_fd, name, path, st, stats)
    else:
        stats.skipped += 1


def _add_file(
    tar: tarfile.TarFile,
    dir_fd: int,
    name: str,
    path: str,
    st: os.stat_result,
    stats: PackStats,
) -> None:
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return
        if exc.errno == errno.ELOOP:  # it became a link after the look: archive the link
            return _add_link(tar, dir_fd, name, path, st, stats)
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            stats.skipped += 1
            return
        info = _info(path, tarfile.REGTYPE, st)
        info.size = st.st_size
        tar.addfile(info, _FixedSize(fd, st.st_size))
        stats.files += 1
    finally:
        os.close(fd)


def _add_link(
    tar: tarfile.TarFile,
    dir_fd: int,
    name: str,
    path: str,
    st: os.stat_result,
    stats: PackStats,
) -> None:
    try:
        target = os.readlink(name, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EINVAL):  # gone, or no longer a link
            stats.skipped += 1
            return
        raise
    info = _info(path, tarfile.SYMTYPE, st)
    info.linkname = target
    tar.addfile(info)
    stats.links += 1


def _info(path: str, kind: bytes, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.type = kind
    info.mode = st.st_mode & 0o777
    info.mtime = int(st.st_mtime)
    info.uid, info.gid = st.st_uid, st.st_gid
    return info
