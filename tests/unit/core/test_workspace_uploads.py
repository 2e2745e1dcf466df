"""Uploaded workspaces: every refusal of the archive checks, the size limit on the unpacked
bytes, ownership, and that a refused or abandoned upload leaves nothing behind. Real threads,
real files in a temporary directory; no server."""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import stat
import tarfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from orchestrator.errors import (
    Busy,
    DeadlineExceeded,
    ErrorKind,
    InvalidArgument,
    OrchestratorError,
    TooLarge,
)
from orchestrator.workspaces.archive_rules import ArchiveRefused
from orchestrator.workspaces.retention import LIVE, JobEnd
from orchestrator.workspaces.uploads import STAGING_NAME, UploadLimits, WorkspaceUploads
from tests.helpers import wait_for

MiB = 1024 * 1024


def limits(**overrides: float) -> UploadLimits:
    values = {
        "max_bytes": 4 * MiB,
        "at_once": 2,
        "timeout_s": 30.0,
        "retain_s": 3600.0,
        "unused_retain_s": 3600.0,
    }
    values.update(overrides)
    return UploadLimits(**values)  # type: ignore[arg-type]


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=4)
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture
def make_uploads(tmp_path: Path, executor: ThreadPoolExecutor) -> Callable[..., WorkspaceUploads]:
    def make(**overrides: float) -> WorkspaceUploads:
        uploads = WorkspaceUploads(
            tmp_path / "projects", tmp_path / "state", limits(**overrides), executor
        )
        uploads.prepare()
        return uploads

    return make


def tar_bytes(
    add: Callable[[tarfile.TarFile], None], compressed: bool = True, fmt: int = tarfile.PAX_FORMAT
) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz" if compressed else "w", format=fmt) as tar:
        add(tar)
    return out.getvalue()


def add_file(tar: tarfile.TarFile, name: str, data: bytes = b"x", mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def add_entry(tar: tarfile.TarFile, name: str, kind: bytes, **attrs: object) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info)


async def chunks_of(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def left_behind(tmp_path: Path) -> list[str]:
    """Everything under the projects base and the records, but the empty staging area."""
    found = []
    for root in (tmp_path / "projects", tmp_path / "state" / "workspace-uploads"):
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                rel = os.path.relpath(os.path.join(dirpath, name), tmp_path)
                if rel != os.path.join("projects", STAGING_NAME):
                    found.append(rel)
    return found


async def test_an_archive_becomes_a_project_owned_by_the_sandbox_user(
    make_uploads: Callable[..., WorkspaceUploads], tmp_path: Path
) -> None:
    def build(tar: tarfile.TarFile) -> None:
        add_entry(tar, "src", tarfile.DIRTYPE, mode=0o755)
        add_file(tar, "src/main.py", b"print('hi')\n")
        add_file(tar, "deep/er/tool.sh", b"#!/bin/sh\n", mode=0o755)
        add_file(tar, "./README", b"readme")

    uploaded = await make_uploads().receive(chunks_of(tar_bytes(build)))
    root = uploaded.project_dir
    assert root == tmp_path / "projects" / f"upload-{uploaded.workspace_id}"
    assert (root / "src" / "main.py").read_bytes() == b"print('hi')\n"
    assert (root / "README").read_bytes() == b"readme"
    tool = root / "deep" / "er" / "tool.sh"
    assert stat.S_IMODE(tool.stat().st_mode) == 0o755
    assert tool.stat().st_mtime == 1_700_000_000
    assert uploaded.entries == 6  # src, src/main.py, deep, deep/er, deep/er/tool.sh, README
    if os.geteuid() == 0:
        for path in (root, root / "deep", root / "deep" / "er", tool, root / "src" / "main.py"):
            assert (path.stat().st_uid, path.stat().st_gid) == (1000, 1000), path
    # Nothing of it is left in the staging area; the record says when it came.
    assert os.listdir(tmp_path / "projects" / STAGING_NAME) == []
    assert (tmp_path / "state" / "workspace-uploads" / f"{uploaded.workspace_id}.json").exists()


async def test_a_plain_tar_is_recognised_without_gzip(
    make_uploads: Callable[..., WorkspaceUploads],
) -> None:
    data = tar_bytes(lambda tar: add_file(tar, "a.txt", b"plain"), compressed=False)
    uploaded = await make_uploads().receive(chunks_of(data, 7))
    assert (uploaded.project_dir / "a.txt").read_bytes() == b"plain"


def _symlink(tar: tarfile.TarFile) -> None:
    add_entry(tar, "shadow", tarfile.SYMTYPE, linkname="/etc/shadow")


def _hardlink(tar: tarfile.TarFile) -> None:
    add_file(tar, "a")
    add_entry(tar, "b", tarfile.LNKTYPE, linkname="a")


def _setuid(tar: tarfile.TarFile) -> None:
    add_file(tar, "su", mode=0o4755)


def _setgid(tar: tarfile.TarFile) -> None:
    add_file(tar, "sg", mode=0o2755)


def _duplicate_file(tar: tarfile.TarFile) -> None:
    add_file(tar, "a", b"one")
    add_file(tar, "./a", b"two")


def _duplicate_dir(tar: tarfile.TarFile) -> None:
    add_entry(tar, "d", tarfile.DIRTYPE)
    add_entry(tar, "d/", tarfile.DIRTYPE)


def _file_then_dir_below_it(tar: tarfile.TarFile) -> None:
    add_file(tar, "a")
    add_file(tar, "a/b")


def _dir_then_file_of_its_name(tar: tarfile.TarFile) -> None:
    add_file(tar, "a/b")
    add_file(tar, "a")


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda tar: add_file(tar, "/etc/cron.d/x"), "absolute paths"),
        (lambda tar: add_file(tar, "../escape"), "'..'"),
        (lambda tar: add_file(tar, "a/../../escape"), "'..'"),
        (_symlink, "symbolic links"),
        (_hardlink, "hard links"),
        (lambda tar: add_entry(tar, "tty", tarfile.CHRTYPE, devmajor=5, devminor=0), "devices"),
        (lambda tar: add_entry(tar, "disk", tarfile.BLKTYPE, devmajor=8), "devices"),
        (lambda tar: add_entry(tar, "pipe", tarfile.FIFOTYPE), "fifos"),
        (_setuid, "setuid"),
        (_setgid, "setgid"),
        (_duplicate_file, "duplicate"),
        (_duplicate_dir, "duplicate"),
        (_file_then_dir_below_it, "is a file in this archive"),
        (_dir_then_file_of_its_name, "a directory of that name"),
    ],
    ids=[
        "absolute",
        "dotdot",
        "dotdot-inside",
        "symlink",
        "hardlink",
        "char-device",
        "block-device",
        "fifo",
        "setuid",
        "setgid",
        "duplicate-file",
        "duplicate-dir",
        "file-as-parent",
        "dir-then-file",
    ],
)
async def test_each_refused_entry_is_invalid_argument_and_leaves_nothing(
    make_uploads: Callable[..., WorkspaceUploads],
    tmp_path: Path,
    build: Callable[[tarfile.TarFile], None],
    words: str,
) -> None:
    def with_good_first(tar: tarfile.TarFile) -> None:
        add_file(tar, "good/first.txt", b"unpacked before the bad entry")
        build(tar)

    with pytest.raises(ArchiveRefused, match=words) as caught:
        await make_uploads().receive(chunks_of(tar_bytes(with_good_first, fmt=tarfile.GNU_FORMAT)))
    assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
    assert left_behind(tmp_path) == []
    assert os.listdir(tmp_path / "projects" / STAGING_NAME) == []


async def test_the_refusal_of_an_escaping_name_never_writes_outside(
    make_uploads: Callable[..., WorkspaceUploads], tmp_path: Path
) -> None:
    with pytest.raises(ArchiveRefused):
        await make_uploads().receive(
            chunks_of(tar_bytes(lambda tar: add_file(tar, "../../outside", b"x")))
        )
    assert not (tmp_path / "outside").exists()
    assert not (tmp_path / "projects" / "outside").exists()


@pytest.mark.parametrize(
    "data",
    [b"this is not an archive at all" * 40, gzip.compress(b"not a tar inside" * 100), b""],
    ids=["garbage", "gzip-of-garbage", "empty"],
)
async def test_what_is_no_tar_archive_is_invalid_argument(
    make_uploads: Callable[..., WorkspaceUploads], tmp_path: Path, data: bytes
) -> None:
    with pytest.raises(InvalidArgument, match=r"not a tar|damaged"):
        await make_uploads().receive(chunks_of(data))
    assert left_behind(tmp_path) == []


async def test_a_truncated_gzip_upload_is_refused(
    make_uploads: Callable[..., WorkspaceUploads], tmp_path: Path
) -> None:
    data = tar_bytes(lambda tar: add_file(tar, "big", os.urandom(200_000)))
    with pytest.raises(InvalidArgument):
        await make_uploads().receive(chunks_of(data[: len(data) // 2]))
    assert left_behind(tmp_path) == []


async def test_the_size_limit_counts_unpacked_bytes_while_streaming(
    make_uploads: Callable[..., WorkspaceUploads], tmp_path: Path
) -> None:
    # 64 MiB of zeros compress to a few dozen KiB: only the unpacked count can catch it.
    bomb = tar_bytes(lambda tar: add_file(tar, "zeros", bytes(64 * MiB)))
    assert len(bomb) < MiB
    sent = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal sent
        async for chunk in chunks_of(bomb, 4096):
            sent += len(chunk)
            yield chunk

    with pytest.raises(TooLarge, match="WORKSPACE_UPLOAD_MAX_MB") as caught:
        await make_uploads(max_bytes=2 * MiB).receive(counted())
    assert caught.value.kind.value.grpc_status == "RESOURCE_EXHAUSTED"
    # Refused as the bytes came: the rest of the stream was never read.
    assert sent < len(bomb)
    assert left_behind(tmp_path) == []


async def test_an_archive_just_under_the_limit_is_accepted(
    make_uploads: Callable[..., WorkspaceUploads],
) -> None:
    data = tar_bytes(lambda tar: add_file(tar, "f", bytes(MiB)), compressed=False)
    uploaded = await make_uploads(max_bytes=len(data)).receive(chunks_of(data, 65536))
    assert uploaded.unpacked_bytes == len(data)


async def test_uploads_beyond_the_concurrency_bound_are_refused_busy(
    make_uploads: Callable[..., WorkspaceUploads], tmp_path: Path
) -> None:
    uploads = make_uploads(at_once=1)
    release = asyncio.Event()
    data = tar_bytes(lambda tar: add_file(tar, "a", b"slow"))

    async def slow() -> AsyncIterator[bytes]:
        yield data[:10]
        await release.wait()
        yield data[10:]

    first = asyncio.create_task(uploads.receive(slow()))
    await wait_for(lambda: os.listdir(tmp_path / "projects" / STAGING_NAME), what="first upload")
    with pytest.raises(Busy, match="WORKSPACE_UPLOADS_AT_ONCE"):
        await uploads.receive(chunks_of(data))
    release.set()
    assert (await first).entries == 1
    # The slot is free again once the first one finished.
    assert (await uploads.receive(chunks_of(data))).entries == 1


async def test_an_upload_that_stalls_past_its_timeout_leaves_nothing(
    make_uploads: Callable[..., WorkspaceUploads], tmp_path: Path
) -> None:
    never = asyncio.Event()
    data = tar_bytes(lambda tar: add_file(tar, "a", os.urandom(100_000)), compressed=False)

    async def stalled() -> AsyncIterator[bytes]:
        yield data[:60_000]
        await never.wait()
        yield b""  # pragma: no cover

    uploads = make_uploads(timeout_s=0.5)
    with pytest.raises(DeadlineExceeded, match="WORKSPACE_UPLOAD_TIMEOUT_S"):
        await uploads.receive(stalled())
    await wait_for(lambda: os.listdir(tmp_path / "projects" / STAGING_NAME) == [])
    assert left_behind(tmp_path) == []


async def test_a_caller_that_goes_away_mid_upload_leaves_nothing(
    make_uploads: Callable[..., WorkspaceUploads], tmp_path: Path
) -> None:
    never = asyncio.Event()
    data = tar_bytes(lambda tar: add_file(tar, "a", os.urandom(100_000)), compressed=False)

    async def gone() -> AsyncIterator[bytes]:
        yield data[:60_000]
        await never.wait()
        yield b""  # pragma: no cover

    uploads = make_uploads()
    task = asyncio.create_task(uploads.receive(gone()))
    await wait_for(lambda: os.listdir(tmp_path / "projects" / STAGING_NAME) != [])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: os.listdir(tmp_path / "projects" / STAGING_NAME) == [])
    assert left_behind(tmp_path) == []


async def test_a_project_inside_the_staging_area_is_refused(
    make_uploads: Callable[..., WorkspaceUploads], tmp_path: Path
) -> None:
    uploads = make_uploads()
    with pytest.raises(InvalidArgument, match=STAGING_NAME):
        uploads.refuse_staging(Path(os.path.realpath(tmp_path / "projects" / STAGING_NAME / "x")))
    uploads.refuse_staging(Path(os.path.realpath(tmp_path / "projects" / "upload-x")))


def test_every_refusal_is_an_orchestrator_error_with_a_wire_status() -> None:
    for error in (ArchiveRefused("x"), TooLarge("x"), Busy("x"), DeadlineExceeded("x")):
        assert isinstance(error, OrchestratorError)
    assert TooLarge("x").kind.value.grpc_status == "RESOURCE_EXHAUSTED"
    assert Busy("x").kind.value.grpc_status == "RESOURCE_EXHAUSTED"
    assert DeadlineExceeded("x").kind.value.grpc_status == "DEADLINE_EXCEEDED"


async def test_retention_removes_unused_and_ended_uploads_and_keeps_those_in_use(
    make_uploads: Callable[..., WorkspaceUploads], tmp_path: Path
) -> None:
    uploads = make_uploads(retain_s=100, unused_retain_s=10)
    data = tar_bytes(lambda tar: add_file(tar, "a", b"a"))
    unused, in_use, ended = [await uploads.receive(chunks_of(data)) for _ in range(3)]
    now = time.time()
    uploads.claim(Path(os.path.realpath(in_use.project_dir)), "job-live")
    uploads.claim(Path(os.path.realpath(ended.project_dir)), "job-ended")
    ends = {"job-live": LIVE, "job-ended": JobEnd(live=False, ended_at=now)}

    def end(job_id: str) -> JobEnd:
        return ends[job_id]

    assert await uploads.sweep(end, now=now + 5) == []
    assert await uploads.sweep(end, now=now + 20) == [unused.workspace_id]
    assert not unused.project_dir.exists()
    assert in_use.project_dir.exists()
    assert ended.project_dir.exists()
    assert await uploads.sweep(end, now=now + 200) == [ended.workspace_id]
    assert not ended.project_dir.exists()
    assert in_use.project_dir.exists()
    assert os.listdir(tmp_path / "projects" / STAGING_NAME) == []
    # The job ended: the last one goes too, its record with it.
    ends["job-live"] = JobEnd(live=False, ended_at=now)
    assert await uploads.sweep(end, now=now + 200) == [in_use.workspace_id]
    assert left_behind(tmp_path) == []


async def test_a_restart_clears_what_an_interrupted_upload_left_in_staging(
    make_uploads: Callable[..., WorkspaceUploads], tmp_path: Path
) -> None:
    make_uploads()
    leftover = tmp_path / "projects" / STAGING_NAME / "half"
    (leftover / "sub").mkdir(parents=True)
    (leftover / "sub" / "f").write_text("partial")
    make_uploads()  # a new process prepares the directories again
    assert os.listdir(tmp_path / "projects" / STAGING_NAME) == []
