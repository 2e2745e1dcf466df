"""A workspace that never was a directory the caller named on the host: uploaded as an archive
through the client, edited by a job in the real worker image, downloaded again with the edit,
and the link the job planted to /etc/shadow archived as a link, never read on the host."""

from __future__ import annotations

import asyncio
import gzip
import io
import tarfile
from pathlib import Path
from typing import Any

import pytest

from ironclaw_client import Client
from ironclaw_client.api.v1 import jobs_pb2 as pb
from tests.e2e.support import get, wait_terminal

pytestmark = pytest.mark.docker


async def test_upload_run_in_a_container_and_download_the_edit(e2e: Any, tmp_path: Path) -> None:
    run = await e2e("edit_uploaded.yaml")
    tree = tmp_path / "tree"
    (tree / "src").mkdir(parents=True)
    (tree / "src" / "app.py").write_text("VERSION = 1\n")
    target = f"127.0.0.1:{run.orch.grpc_port}"

    def upload_and_create() -> str:
        with Client(target) as client:
            uploaded = client.upload_workspace(tree)
            job = client.create_job("Bump the version", project_dir=uploaded.project_dir)
            return job.job.job_id

    job_id = await asyncio.to_thread(upload_and_create)
    final = await wait_terminal(run.stub, job_id, timeout=120)
    assert final.state == pb.JOB_STATE_STOPPED, final.result.message
    assert final.result.reason == pb.TERMINAL_REASON_COMPLETED

    def download() -> bytes:
        with Client(target) as client:
            return client.download_workspace(job_id, tmp_path / "result.tar.gz").read_bytes()

    data = await asyncio.to_thread(download)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = {info.name: info for info in tar.getmembers()}
        app = tar.extractfile("src/app.py")
        changes = tar.extractfile("CHANGES.md")
        assert app is not None
        assert changes is not None
        assert app.read() == b"VERSION = 2\n"
        assert changes.read() == b"bumped to 2\n"
    assert members["planted"].issym()
    assert members["planted"].linkname == "/etc/shadow"
    host_shadow = Path("/etc/shadow")
    if host_shadow.exists() and host_shadow.stat().st_size > 0:
        assert host_shadow.read_bytes() not in gzip.decompress(data)
    # The job's project is the upload, under the projects base.
    assert Path((await get(run.stub, job_id)).project_dir).name.startswith("upload-")
