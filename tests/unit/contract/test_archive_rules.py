"""The archive rules both sides apply (``ironclaw_contract.archive_rules``), the extractor a job
container unpacks its fetched workspace with (as the sandbox user: permission bits only), and
the packer it pushes its workspace back with: a round trip, and each refusal with its reason."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from ironclaw_contract import archive_extract, archive_pack
from ironclaw_contract.archive_rules import ArchiveRefused, check_result_entry


def _entry(name: str, kind: bytes = tarfile.REGTYPE, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def _archive(*entries: tuple[tarfile.TarInfo, bytes], gzipped: bool = True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gzipped else "w") as tar:
        for info, data in entries:
            if info.isreg():
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def _unpack(data: bytes, root: Path, max_file_bytes: int | None = None) -> int:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        stats = archive_extract.extract_tree(
            io.BytesIO(data),
            fd,
            archive_extract.ModeOnly(),
            max_file_bytes=max_file_bytes,
            gzipped=True,
        )
    finally:
        os.close(fd)
    return stats.entries


def test_a_packed_tree_unpacks_to_the_same_files_and_modes(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "src").mkdir(parents=True)
    (source / "src" / "app.py").write_text("VERSION = 1\n")
    (source / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (source / "run.sh").chmod(0o755)
    chunks: list[bytes] = []
    stats = archive_pack.pack_tree(str(source), chunks.append)
    assert (stats.files, stats.dirs) == (2, 1)
    target = tmp_path / "target"
    target.mkdir()
    assert _unpack(b"".join(chunks), target) == 3
    assert (target / "src" / "app.py").read_text() == "VERSION = 1\n"
    assert (target / "run.sh").stat().st_mode & 0o777 == 0o755


def test_the_packer_keeps_a_link_as_a_link_and_a_result_may_hold_it(tmp_path: Path) -> None:
    (tmp_path / "planted").symlink_to("/etc/shadow")
    chunks: list[bytes] = []
    archive_pack.pack_tree(str(tmp_path), chunks.append)
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks)), mode="r:gz") as tar:
        (info,) = tar.getmembers()
    assert info.issym()
    assert info.linkname == "/etc/shadow"
    assert check_result_entry(info) == 0


def test_the_packer_refuses_a_tree_that_is_gone(tmp_path: Path) -> None:
    with pytest.raises(archive_pack.PackFailed, match="no longer exists"):
        archive_pack.pack_tree(str(tmp_path / "gone"), lambda chunk: None)


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        (_entry("../escape"), "'..' would leave the workspace"),
        (_entry("/etc/passwd"), "absolute paths are refused"),
        (_entry("link", tarfile.SYMTYPE, linkname="/etc/shadow"), "symbolic links are refused"),
        (_entry("hard", tarfile.LNKTYPE, linkname="a"), "hard links are refused"),
        (_entry("dev", tarfile.CHRTYPE, devmajor=1, devminor=3), "devices and fifos"),
        (_entry("fifo", tarfile.FIFOTYPE), "devices and fifos"),
        (_entry("suid", mode=0o4755), "setuid and setgid bits are refused"),
    ],
    ids=["traversal", "absolute", "symlink", "hardlink", "device", "fifo", "setuid"],
)
def test_the_fetch_refuses_each_entry_a_workspace_may_not_hold(
    tmp_path: Path, entry: tarfile.TarInfo, words: str
) -> None:
    with pytest.raises(ArchiveRefused, match=words):
        _unpack(_archive((entry, b"")), tmp_path)
    assert not any(tmp_path.iterdir())  # refused before anything was made


def test_the_fetch_refuses_more_file_bytes_than_the_limit(tmp_path: Path) -> None:
    data = _archive((_entry("a.bin"), b"a" * 600), (_entry("b.bin"), b"b" * 600))
    refused, kept = tmp_path / "refused", tmp_path / "kept"
    refused.mkdir()
    kept.mkdir()
    with pytest.raises(ArchiveRefused, match=r"more than 1000 bytes of files \(at 'b.bin'\)"):
        _unpack(data, refused, max_file_bytes=1000)
    assert _unpack(data, kept, max_file_bytes=1200) == 2


def test_the_fetch_refuses_what_is_no_gzip_tar(tmp_path: Path) -> None:
    with pytest.raises(ArchiveRefused, match=r"not a tar or tar\.gz archive"):
        _unpack(b"plain text, no archive", tmp_path)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: _entry("../x"), "'..' would leave the workspace"),
        (lambda: _entry("/abs"), "absolute paths are refused"),
        (lambda: _entry("h", tarfile.LNKTYPE, linkname="x"), "hard links are refused"),
        (lambda: _entry("d", tarfile.BLKTYPE), "devices and fifos"),
        (lambda: _entry("s", mode=0o2755), "setuid and setgid bits are refused"),
    ],
    ids=["traversal", "absolute", "hardlink", "device", "setgid"],
)
def test_a_result_entry_is_refused_for_what_tar_x_would_not_be_safe_with(
    make: Callable[[], tarfile.TarInfo], words: str
) -> None:
    with pytest.raises(ArchiveRefused, match=words):
        check_result_entry(make())


def test_a_result_entry_counts_a_files_bytes_and_nothing_for_a_directory() -> None:
    assert check_result_entry(_entry("a.txt", size=42)) == 42
    assert check_result_entry(_entry("dir", tarfile.DIRTYPE)) == 0
