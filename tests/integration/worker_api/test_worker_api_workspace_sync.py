"""The workspace routes of a job whose /workspace is no host directory (a backend that binds no
host paths, as Swarm): GET and PUT /worker/{id}/workspace on the real worker API, called by the
worker's own fetch and push (worker/workspace_sync.py) and by a raw HTTP client for what a
well-behaved worker never sends; DownloadWorkspace then serves what was pushed, until the
retention sweep removes it. The engine is the in-memory one: no container runs."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import tarfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.domain.jobs import CreateJobRequest
from orchestrator.errors import FailedPrecondition
from orchestrator.service import Orchestrator, start_orchestrator
from tests.fakes.fake_backend import FakeBackend
from tests.integration.worker_api.conftest import Job, WorkerHttp
from worker.client import TokenRejected, WorkerApiClient
from worker.workspace_sync import WorkspaceNotReady, prepare_workspace, push_workspace


class ClusterBackend(FakeBackend):
    """The in-memory engine, as a backend whose containers run on other machines."""

    binds_host_paths = False


@pytest.fixture
async def orch(make_settings: Callable[..., Any]) -> AsyncIterator[Orchestrator]:
    settings = make_settings(WORKSPACE_UPLOAD_MAX_MB="1", WORKSPACE_RETAIN_S="60")
    started = await start_orchestrator(
        settings, backend=ClusterBackend(), grpc_port=0, http_port=0, reaper_interval=0.5
    )
    try:
        yield started
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(started.stop(grace=1), timeout=30)


def _tar_gz(files: dict[str, bytes], *, links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _job_on_upload(orch: Orchestrator, files: dict[str, bytes]) -> Job:
    uploaded = await orch.manager.upload_workspace(_chunks(_tar_gz(files)))
    created = await orch.manager.create_job(
        CreateJobRequest(task="sleep", project_dir=str(uploaded.project_dir))
    )
    assert created.token is not None
    return Job(created.job.job_id, created.token)


def _client(orch: Orchestrator, job: Job) -> WorkerApiClient:
    return WorkerApiClient(f"http://{orch.http_host}:{orch.http_port}", job.job_id, job.token)


async def _download(orch: Orchestrator, job_id: str) -> dict[str, tarfile.TarInfo | bytes]:
    data = b"".join([chunk async for chunk in orch.manager.download_workspace(job_id)])
    found: dict[str, tarfile.TarInfo | bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for info in tar.getmembers():
            content = tar.extractfile(info) if info.isfile() else None
            found[info.name] = content.read() if content is not None else info
    return found


async def test_a_job_fetches_its_upload_pushes_its_edit_and_the_download_serves_it(
    orch: Orchestrator, tmp_path: Path
) -> None:
    job = await _job_on_upload(orch, {"src/app.py": b"VERSION = 1\n"})
    spec = orch.backend.created[-1]  # type: ignore[attr-defined]
    assert spec.mounts == ()  # nothing of this host reaches the container
    assert spec.scratch_workspace is not None
    assert spec.scratch_workspace.container_path == "/workspace"
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    client = _client(orch, job)
    info = await asyncio.to_thread(client.get_job)
    assert info["workspace_sync"] == {"fetch": True, "max_bytes": 1024 * 1024}

    said = await asyncio.to_thread(prepare_workspace, client, info, workspace, dict(os.environ))
    assert said is not None
    assert said.startswith("fetched the workspace")
    assert (workspace / "src" / "app.py").read_bytes() == b"VERSION = 1\n"
    # While it runs there is nothing to download yet: the tree is on the node.
    with pytest.raises(FailedPrecondition, match="once the job has ended"):
        await _download(orch, job.job_id)

    (workspace / "src" / "app.py").write_text("VERSION = 2\n")
    (workspace / "planted").symlink_to("/etc/shadow")
    await asyncio.to_thread(push_workspace, client, info, workspace)
    await orch.manager.complete_job(job.job_id, True, "done")
    found = await _download(orch, job.job_id)
    assert found["src/app.py"] == b"VERSION = 2\n"
    planted = found["planted"]
    assert isinstance(planted, tarfile.TarInfo)
    assert planted.issym()
    assert planted.linkname == "/etc/shadow"
    # A push after the end: the token died with the job.
    with pytest.raises(TokenRejected):
        await asyncio.to_thread(client.upload, "workspace", lambda emit: emit(b"late"))
    client.close()

    # Retention: kept WORKSPACE_RETAIN_S after the end, then swept.
    assert job.job_id not in await orch.manager.sweep_workspaces()
    removed = await orch.manager.sweep_workspaces(now=time.time() + 120)
    assert job.job_id in removed
    with pytest.raises(FailedPrecondition, match="nothing to download"):
        await _download(orch, job.job_id)


async def test_a_job_that_ends_without_pushing_has_nothing_to_download(
    orch: Orchestrator,
) -> None:
    job = await _job_on_upload(orch, {"a.txt": b"a"})
    await orch.manager.stop_job(job.job_id)
    with pytest.raises(FailedPrecondition, match="ended without pushing its workspace back"):
        await _download(orch, job.job_id)


async def test_a_jobs_token_opens_only_its_own_workspace(
    orch: Orchestrator, api_for: Callable[[Orchestrator], WorkerHttp]
) -> None:
    api = api_for(orch)
    mine = await _job_on_upload(orch, {"mine.txt": b"mine"})
    other = await _job_on_upload(orch, {"other.txt": b"other"})
    archive = _tar_gz({"x.txt": b"x"})
    for method, body in (("GET", None), ("PUT", archive)):
        reply = await api.call(other, method, "workspace", token=mine.token, data=body)
        reply.expect_error(401)
        reply = await api.call(mine, method, "workspace", token=None, data=body)
        reply.expect_error(401)
    async with api.session.get(
        f"{api.base_url}/worker/{mine.job_id}/workspace",
        headers={"Authorization": f"Bearer {mine.token}"},
    ) as response:
        assert response.status == 200
        assert response.content_type == "application/gzip"
        data = await response.read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert tar.getnames() == ["mine.txt"]


async def test_a_push_over_the_limit_is_413_with_or_without_a_length(
    orch: Orchestrator, api_for: Callable[[Orchestrator], WorkerHttp]
) -> None:
    api = api_for(orch)
    job = await _job_on_upload(orch, {"a.txt": b"a"})
    big = _tar_gz({"noise.bin": os.urandom(2 * 1024 * 1024)})  # random: gzip cannot shrink it
    reply = await api.call(job, "PUT", "workspace", data=big)
    assert "1048576 bytes" in reply.expect_error(413)

    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    async with api.session.put(
        f"{api.base_url}/worker/{job.job_id}/workspace",
        data=stream(),
        headers={"Authorization": f"Bearer {job.token}"},
    ) as response:
        assert response.status == 413
        body = await response.json()
    assert "larger than 1 MiB" in body["message"]
    assert not orch.manager._results.has(job.job_id)  # nothing half-kept


@pytest.mark.parametrize(
    ("archive", "words"),
    [
        (b"not an archive at all", "not a complete .tar.gz archive"),
        (_tar_gz({"../escape.txt": b"x"}), "'..' would leave the workspace"),
        (_tar_gz({"/etc/passwd": b"x"}), "absolute paths are refused"),
        (_tar_gz({"a.txt": b"a"})[:-30], "not a complete .tar.gz archive"),
    ],
    ids=["not-gzip", "traversal", "absolute", "truncated"],
)
async def test_a_bad_pushed_archive_is_refused_with_the_reason(
    orch: Orchestrator,
    api_for: Callable[[Orchestrator], WorkerHttp],
    archive: bytes,
    words: str,
) -> None:
    api = api_for(orch)
    job = await _job_on_upload(orch, {"a.txt": b"a"})
    reply = await api.call(job, "PUT", "workspace", data=archive)
    assert words in reply.expect_error(400)
    assert not orch.manager._results.has(job.job_id)


async def test_a_hard_link_in_a_push_is_refused(
    orch: Orchestrator, api_for: Callable[[Orchestrator], WorkerHttp]
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("hard")
        info.type = tarfile.LNKTYPE
        info.linkname = "etc/shadow"
        tar.addfile(info)
    job = await _job_on_upload(orch, {"a.txt": b"a"})
    reply = await api_for(orch).call(job, "PUT", "workspace", data=buffer.getvalue())
    assert "hard links are refused" in reply.expect_error(400)


async def test_the_fetch_refuses_what_an_upload_may_not_hold(
    orch: Orchestrator, tmp_path: Path
) -> None:
    job = await _job_on_upload(orch, {"a.txt": b"a"})
    # The project changed after the upload was checked (a link planted in it): the job's
    # own unpacking refuses it, under the same rules.
    project = Path(orch.manager.get_job(job.job_id).project_dir)
    (project / "planted").symlink_to("/etc/shadow")
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    client = _client(orch, job)
    info = await asyncio.to_thread(client.get_job)
    with pytest.raises(WorkspaceNotReady, match="symbolic links are refused") as refused:
        await asyncio.to_thread(prepare_workspace, client, info, workspace, {})
    assert refused.value.reason == "workspace_fetch"
    client.close()
