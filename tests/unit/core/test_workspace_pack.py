"""A job's project packed for download: links archived as links and never followed (the host
file a planted link names never appears), what is no file or directory left out, and the
retention window of downloads and of uploaded workspaces."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchestrator.domain.jobs import JobState
from orchestrator.errors import FailedPrecondition
from orchestrator.workspaces.downloads import check_downloadable
from orchestrator.workspaces.pack import MAX_DEPTH, pack_tree
from orchestrator.workspaces.retention import LIVE, UNKNOWN, Claim, JobEnd, expires_at
from tests.helpers import job_record

SECRET = b"root:$6$host-secret-hash-that-must-never-leave:19000:0:99999:7:::\n"


def packed(root: Path) -> bytes:
    chunks: list[bytes] = []
    pack_tree(str(root), chunks.append)
    return b"".join(chunks)


def members(archive: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {info.name: info for info in tar.getmembers()}


def test_files_and_directories_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "project"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "mod.py").write_text("x = 1\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o750)
    (root / "empty").mkdir()
    archive = packed(root)
    found = members(archive)
    assert set(found) == {"src", "src/pkg", "src/pkg/mod.py", "run.sh", "empty"}
    assert found["run.sh"].mode == 0o750
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        extracted = tar.extractfile("src/pkg/mod.py")
        assert extracted is not None
        assert extracted.read() == b"x = 1\n"


def test_a_planted_symlink_to_a_host_file_is_archived_as_a_link_never_followed(
    tmp_path: Path,
) -> None:
    # The agent's tree points at a secret file of the host (a stand-in for /etc/shadow that a
    # test can create); packing runs as root here, so only never opening it keeps it out.
    secret = tmp_path / "host-shadow"
    secret.write_bytes(SECRET)
    os.chmod(secret, 0o600)
    root = tmp_path / "project"
    (root / "sub").mkdir(parents=True)
    (root / "shadow").symlink_to(secret)
    (root / "etc-shadow").symlink_to("/etc/shadow")
    (root / "sub" / "up").symlink_to("../..")
    (root / "dirlink").symlink_to(tmp_path)
    archive = packed(root)
    found = members(archive)
    assert found["shadow"].issym()
    assert found["shadow"].linkname == str(secret)
    assert found["etc-shadow"].issym()
    assert found["etc-shadow"].linkname == "/etc/shadow"
    assert found["sub/up"].issym()
    assert found["dirlink"].issym()
    # Nothing below the directory link was walked into.
    assert not any(name.startswith("dirlink/") for name in found)
    assert SECRET not in gzip.decompress(archive)
    if os.path.exists("/etc/shadow"):
        host = Path("/etc/shadow").read_bytes()
        if host:
            assert host not in gzip.decompress(archive)


def test_fifos_and_sockets_are_left_out_without_blocking(tmp_path: Path) -> None:
    import socket

    root = tmp_path / "project"
    root.mkdir()
    os.mkfifo(root / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    (root / "kept").write_text("k")
    try:
        found = members(packed(root))
    finally:
        sock.close()
    assert set(found) == {"kept"}


def test_a_root_that_is_a_link_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(FailedPrecondition, match="cannot be read"):
        packed(link)
    with pytest.raises(FailedPrecondition, match="no longer exists"):
        packed(tmp_path / "missing")


def test_a_tree_deeper_than_the_bound_fails_rather_than_being_cut(tmp_path: Path) -> None:
    root = tmp_path / "project"
    deep = root.joinpath(*["d"] * (MAX_DEPTH + 2))
    deep.mkdir(parents=True)
    with pytest.raises(FailedPrecondition, match="nested deeper"):
        packed(root)


def test_a_job_is_downloadable_while_live_and_within_the_retention_after() -> None:
    now = datetime.now(UTC)
    live = job_record(state=JobState.RUNNING).snapshot()
    check_downloadable(live, 0)
    ended = job_record(state=JobState.STOPPED, finished_at=now - timedelta(seconds=100))
    check_downloadable(ended.snapshot(), 101, now=now)
    with pytest.raises(FailedPrecondition, match="WORKSPACE_RETAIN_S"):
        check_downloadable(ended.snapshot(), 99, now=now)


def test_retention_of_uploads() -> None:
    ends = {
        "live": LIVE,
        "ended-early": JobEnd(live=False, ended_at=1_000.0),
        "ended-late": JobEnd(live=False, ended_at=5_000.0),
    }

    def end(job_id: str) -> JobEnd:
        return ends.get(job_id, UNKNOWN)

    # Never used: kept for the unused retention from the upload.
    assert expires_at(100.0, [], end, retain_s=50, unused_retain_s=10) == 110.0
    # Used by a live job: kept, whatever else.
    claims = [Claim("ended-late", 200.0), Claim("live", 300.0)]
    assert expires_at(100.0, claims, end, retain_s=50, unused_retain_s=10) is None
    # Ended jobs: the retention from the last end.
    claims = [Claim("ended-late", 200.0), Claim("ended-early", 300.0)]
    assert expires_at(100.0, claims, end, retain_s=50, unused_retain_s=10) == 5_050.0
    # A job no longer known: counted as ended when it claimed the upload.
    assert expires_at(100.0, [Claim("gone", 700.0)], end, 50, 10) == 750.0


async def test_downloads_are_bounded_and_a_reader_that_leaves_stops_the_packing(
    tmp_path: Path,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from orchestrator.errors import Busy
    from orchestrator.workspaces.downloads import WorkspaceDownloads
    from tests.helpers import wait_for

    root = tmp_path / "project"
    root.mkdir()
    for index in range(8):
        (root / f"blob{index}").write_bytes(os.urandom(512 * 1024))  # incompressible: many chunks
    with ThreadPoolExecutor(max_workers=2) as pool:
        downloads = WorkspaceDownloads(pool, at_once=1)
        first = downloads.stream("job-1", str(root))
        assert await anext(first)  # packing, and waiting on the pipe for this reader
        with pytest.raises(Busy, match="in progress"):
            await anext(downloads.stream("job-2", str(root)))
        await first.aclose()  # the reader leaves: the thread stops at its next chunk
        await wait_for(lambda: downloads.in_progress == 0, what="the packing thread to stop")
        whole = b"".join([chunk async for chunk in downloads.stream("job-3", str(root))])
    assert set(members(whole)) == {f"blob{index}" for index in range(8)}
