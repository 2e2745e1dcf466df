"""The client's side of workspace transfers: a directory packed for ``UploadWorkspace``, the
request stream, and a downloaded archive written or unpacked without surprises."""

from __future__ import annotations

import logging
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from ironclaw_client.api.v1 import jobs_pb2 as pb
from ironclaw_client.errors import InvalidArgument

log = logging.getLogger("ironclaw_client")

CHUNK_BYTES = 1024 * 1024
# Packed in memory up to this size, then in a temporary file.
_SPOOL_BYTES = 8 * 1024 * 1024


def pack_directory(root: Path) -> IO[bytes]:
    """``root`` as a .tar.gz in a temporary file (rewound), names relative to it. Raises
    InvalidArgument for what the orchestrator refuses anyway (links, devices, fifos,
    setuid/setgid bits), naming the path, before a byte is sent."""
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115 - returned
    try:
        with tarfile.open(fileobj=spool, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
            for path in _walk(root):
                info = tar.gettarinfo(str(path), arcname=path.relative_to(root).as_posix())
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if info.isreg():
                    with open(path, "rb") as data:
                        tar.addfile(info, data)
                else:
                    tar.addfile(info)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


def _walk(root: Path) -> Iterator[Path]:
    if not root.is_dir() or root.is_symlink():
        raise InvalidArgument(f"{root} is not a directory")
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in [*dirnames, *sorted(filenames)]:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise InvalidArgument(
                    f"{path} is a symbolic link: the orchestrator refuses links in a workspace; "
                    "replace it with what it points to"
                )
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise InvalidArgument(f"{path} is no file or directory (a device, fifo, socket)")
            if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                raise InvalidArgument(f"{path} has the setuid or setgid bit, which is refused")
            yield path


def upload_requests(archive: IO[bytes], fmt: str = "") -> Iterator[pb.UploadWorkspaceRequest]:
    """The UploadWorkspace stream: the metadata, then the archive in chunks."""
    yield pb.UploadWorkspaceRequest(metadata=pb.UploadWorkspaceMetadata(format=fmt))
    while chunk := archive.read(CHUNK_BYTES):
        yield pb.UploadWorkspaceRequest(chunk=chunk)


def open_source(source: str | os.PathLike[str]) -> tuple[IO[bytes], str]:
    """The archive to send for ``source`` (a directory is packed; a file is sent as it is)
    and its format ("" lets the orchestrator recognise it)."""
    path = Path(source)
    if path.is_dir():
        return pack_directory(path), "tar.gz"
    if not path.is_file():
        raise InvalidArgument(f"{path} is neither a directory nor an archive file")
    return open(path, "rb"), ""


def _inside_only(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tarfile's "data" filter (no special bits, nothing outside ``dest``), skipping what it
    refuses instead of stopping: the archive is what a job made, and a link it planted to
    ``/etc/shadow`` must neither land here nor cost the rest of the tree."""
    try:
        return tarfile.data_filter(member, dest)
    except tarfile.FilterError as exc:
        log.warning("not unpacked from the workspace archive: %s", exc)
        return None


def save_archive(chunks: Iterable[bytes], destination: Path) -> Path:
    """Writes the downloaded .tar.gz; into an existing directory it is unpacked instead.
    Nothing is left at ``destination`` when the download fails half-way."""
    if destination.is_dir():
        with tempfile.TemporaryFile() as scratch:
            for chunk in chunks:
                scratch.write(chunk)
            return save_spooled(scratch, destination)
    partial = destination.with_name(destination.name + ".partial")
    try:
        with open(partial, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
        os.replace(partial, destination)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return destination


def save_spooled(scratch: IO[bytes], destination: Path) -> Path:
    """``save_archive`` for an archive already received whole into ``scratch``."""
    scratch.seek(0)
    if destination.is_dir():
        with tarfile.open(fileobj=scratch, mode="r:gz") as tar:
            tar.extractall(destination, filter=_inside_only)  # noqa: S202 - filtered
        return destination

    def chunks() -> Iterator[bytes]:
        while chunk := scratch.read(CHUNK_BYTES):
            yield chunk

    return save_archive(chunks(), destination)
