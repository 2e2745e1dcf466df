"""Workspace upload and download through the client, the CLI and the raw stubs, against a real
orchestrator in-process (free ports, the in-memory engine): a tree goes up, a job runs on it
(the test plays its agent: it edits the project and completes through the real worker API),
the result comes back down; every refusal arrives with its status."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import grpc
import pytest
from grpc import aio

from ironclaw_client import (
    Client,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
)
from ironclaw_client.api.v1 import jobs_pb2 as pb
from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc
from tests.client.conftest import Running, StartFn
from tests.helpers import wait_for

IRONCLAW = str(Path(sys.executable).parent / "ironclaw")
SECRET = b"host-secret-line-that-must-never-be-archived\n"


def make_tree(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text("VERSION = 1\n")
    (root / "README.md").write_text("# demo\n")
    return root


def archive_names(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {info.name: info for info in tar.getmembers()}


async def test_upload_run_and_download_the_edited_tree(fake_orch: Running, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")

    def upload_and_create() -> tuple[str, str]:
        with Client(fake_orch.target) as client:
            uploaded = client.upload_workspace(tree)
            assert uploaded.entries == 3
            assert uploaded.unpacked_bytes > 0
            job = client.create_job("bump the version", project_dir=uploaded.project_dir).job
            assert job.project_dir == uploaded.project_dir
            return job.job_id, uploaded.project_dir

    job_id, project = await asyncio.to_thread(upload_and_create)
    assert Path(project).name.startswith("upload-")
    assert (Path(project) / "src" / "app.py").stat().st_uid == (
        1000 if os.geteuid() == 0 else os.geteuid()
    )
    agent = await fake_orch.agent(job_id)
    # What the job's agent does in /workspace, on the host side of the mount.
    (Path(project) / "src" / "app.py").write_text("VERSION = 2\n")
    (Path(project) / "planted").symlink_to(tmp_path / "host-secret")
    (tmp_path / "host-secret").write_bytes(SECRET)

    def download_live() -> bytes:
        with Client(fake_orch.target) as client:
            return b"".join(client.download_workspace_chunks(job_id))

    live = await asyncio.to_thread(download_live)
    assert "src/app.py" in archive_names(live)
    await agent.complete("bumped")

    def download_after_end() -> tuple[Path, Path]:
        with Client(fake_orch.target) as client:
            client.wait(job_id, timeout=30)
            as_file = client.download_workspace(job_id, tmp_path / "out.tar.gz")
            unpacked = tmp_path / "unpacked"
            unpacked.mkdir()
            return as_file, client.download_workspace(job_id, unpacked)

    as_file, unpacked = await asyncio.to_thread(download_after_end)
    data = as_file.read_bytes()
    names = archive_names(data)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        member = tar.extractfile("src/app.py")
        assert member is not None
        assert member.read() == b"VERSION = 2\n"
    assert names["planted"].issym()
    assert SECRET not in gzip.decompress(data)
    assert (unpacked / "src" / "app.py").read_text() == "VERSION = 2\n"
    assert (unpacked / "README.md").read_text() == "# demo\n"
    # The link to a file outside was not unpacked (nor followed).
    assert not (unpacked / "planted").exists()
    assert not (unpacked / "planted").is_symlink()
    assert not (tmp_path / "out.tar.gz.partial").exists()


async def test_refusals_arrive_with_their_status_and_leave_nothing(
    start_fake_orch: StartFn, tmp_path: Path
) -> None:
    running = await start_fake_orch(WORKSPACE_UPLOAD_MAX_MB="1")
    projects = running.orch.settings.projects_dir
    before = sorted(os.listdir(projects))
    linked = io.BytesIO()
    with tarfile.open(fileobj=linked, mode="w:gz") as tar:
        info = tarfile.TarInfo("shadow")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/shadow"
        tar.addfile(info)
    (tmp_path / "linked.tar.gz").write_bytes(linked.getvalue())
    big = io.BytesIO()
    with tarfile.open(fileobj=big, mode="w:gz") as tar:
        info = tarfile.TarInfo("zeros")
        info.size = 3 * 1024 * 1024
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    (tmp_path / "big.tar.gz").write_bytes(big.getvalue())
    tree = make_tree(tmp_path / "tree")
    (tree / "link").symlink_to("/etc/passwd")

    def scenario() -> list[str]:
        messages = []
        with Client(running.target) as client:
            with pytest.raises(InvalidArgument, match="symbolic links are refused") as refused:
                client.upload_workspace(tmp_path / "linked.tar.gz")
            messages.append(refused.value.message)
            with pytest.raises(ResourceExhausted, match="WORKSPACE_UPLOAD_MAX_MB"):
                client.upload_workspace(tmp_path / "big.tar.gz")
            # The client refuses a directory with a link before sending anything.
            with pytest.raises(InvalidArgument, match="symbolic link"):
                client.upload_workspace(tree)
            with pytest.raises(NotFound):
                client.download_workspace(
                    "00000000-0000-4000-8000-000000000000", tmp_path / "x.tar.gz"
                )
            with pytest.raises(InvalidArgument):
                client.download_workspace("not-a-uuid", tmp_path / "x.tar.gz")
        return messages

    await asyncio.to_thread(scenario)
    assert not (tmp_path / "x.tar.gz").exists()
    assert not (tmp_path / "x.tar.gz.partial").exists()
    assert sorted(os.listdir(projects)) == before
    assert os.listdir(projects / ".uploading") == []

    async with aio.insecure_channel(running.target) as channel:
        stub = pb_grpc.JobServiceStub(channel)

        async def chunk_first() -> object:
            yield pb.UploadWorkspaceRequest(chunk=b"data")

        with pytest.raises(grpc.RpcError) as caught:
            await stub.UploadWorkspace(chunk_first())
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "first message must carry the metadata" in (caught.value.details() or "")

        async def bad_format() -> object:
            yield pb.UploadWorkspaceRequest(metadata=pb.UploadWorkspaceMetadata(format="zip"))

        with pytest.raises(grpc.RpcError) as caught:
            await stub.UploadWorkspace(bad_format())
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_an_ended_job_past_the_retention_is_failed_precondition(
    start_fake_orch: StartFn, tmp_path: Path
) -> None:
    running = await start_fake_orch(WORKSPACE_RETAIN_S="0")
    tree = make_tree(tmp_path / "tree")

    def create() -> str:
        with Client(running.target) as client:
            uploaded = client.upload_workspace(tree)
            return client.create_job("x", project_dir=uploaded.project_dir).job.job_id

    job_id = await asyncio.to_thread(create)
    agent = await running.agent(job_id)

    def download_live() -> int:
        with Client(running.target) as client:
            return len(b"".join(client.download_workspace_chunks(job_id)))

    assert await asyncio.to_thread(download_live) > 0
    await agent.complete("done")
    await wait_for(
        lambda: running.orch.manager.get_job(job_id).state.is_terminal, what="the job's end"
    )

    def download_late() -> None:
        with (
            Client(running.target) as client,
            pytest.raises(FailedPrecondition, match="WORKSPACE_RETAIN_S"),
        ):
            client.download_workspace(job_id, tmp_path / "late.tar.gz")

    await asyncio.to_thread(download_late)
    assert not (tmp_path / "late.tar.gz").exists()
    # The upload is past its retention too: the next pass removes it.
    project = Path(running.orch.manager.get_job(job_id).project_dir)
    assert project.exists()
    removed = await running.orch.manager.sweep_workspaces()
    assert removed == [project.name.removeprefix("upload-")]
    assert not project.exists()


async def test_transfers_need_the_admin_token(start_fake_orch: StartFn, tmp_path: Path) -> None:
    running = await start_fake_orch(ORCHESTRATOR_ADMIN_TOKEN="adm1n-t0ken-value")
    tree = make_tree(tmp_path / "tree")

    def scenario() -> str:
        with Client(running.target, admin_token="wrong") as client:
            with pytest.raises(Unauthenticated) as refused:
                client.upload_workspace(tree)
            assert "adm1n-t0ken-value" not in refused.value.message
            with pytest.raises(Unauthenticated):
                client.download_workspace(
                    "00000000-0000-4000-8000-000000000000", tmp_path / "x.tar.gz"
                )
        with Client(running.target, admin_token="adm1n-t0ken-value") as client:
            return client.upload_workspace(tree).workspace_id

    workspace_id = await asyncio.to_thread(scenario)
    # Only the upload with the token made anything.
    uploads = [p.name for p in running.orch.settings.projects_dir.glob("upload-*")]
    assert uploads == [f"upload-{workspace_id}"]


async def test_the_cli_creates_a_job_on_an_upload_and_downloads_its_workspace(
    fake_orch: Running, tmp_path: Path
) -> None:
    tree = make_tree(tmp_path / "tree")
    env = {**os.environ, "IRONCLAW_ORCHESTRATOR": fake_orch.target}
    create = await asyncio.create_subprocess_exec(
        IRONCLAW,
        "job",
        "create",
        "--upload",
        str(tree),
        "--json",
        "edit it",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(create.communicate(), timeout=60)
    assert create.returncode == 0, err.decode()
    assert "uploaded (3 entries" in err.decode()
    job = json.loads(out)
    assert Path(job["project_dir"]).name.startswith("upload-")
    (Path(job["project_dir"]) / "src" / "app.py").write_text("VERSION = 3\n")
    agent = await fake_orch.agent(job["job_id"])
    await agent.complete("edited")
    target = tmp_path / "result.tar.gz"
    download = await asyncio.create_subprocess_exec(
        IRONCLAW,
        "job",
        "download",
        job["job_id"],
        "-o",
        str(target),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(download.communicate(), timeout=60)
    assert download.returncode == 0, err.decode()
    assert f"saved to {target}" in out.decode()
    with tarfile.open(target, mode="r:gz") as tar:
        member = tar.extractfile("src/app.py")
        assert member is not None
        assert member.read() == b"VERSION = 3\n"
    missing = await asyncio.create_subprocess_exec(
        IRONCLAW,
        "job",
        "download",
        "00000000-0000-4000-8000-000000000000",
        "-o",
        str(tmp_path / "none.tar.gz"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    _, err = await asyncio.wait_for(missing.communicate(), timeout=60)
    assert missing.returncode == 1
    assert "not found" in err.decode()
    assert "Traceback" not in err.decode()


async def test_the_async_client_uploads_from_a_tar_file_and_downloads(
    fake_orch: Running, tmp_path: Path
) -> None:
    from ironclaw_client import AsyncClient

    tar_path = tmp_path / "tree.tar"
    with tarfile.open(tar_path, mode="w") as tar:
        info = tarfile.TarInfo("notes.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"notes"))
    async with AsyncClient(fake_orch.target) as client:
        uploaded = await client.upload_workspace(tar_path)
        assert uploaded.entries == 1
        job = (await client.create_job("read the notes", project_dir=uploaded.project_dir)).job
        agent = await fake_orch.agent(job.job_id)
        (Path(uploaded.project_dir) / "reply.txt").write_text("read\n")
        await agent.complete("read")
        await client.wait(job.job_id, timeout=30)
        unpacked = tmp_path / "unpacked"
        unpacked.mkdir()
        await client.download_workspace(job.job_id, unpacked)
        saved = await client.download_workspace(job.job_id, tmp_path / "out.tar.gz")
    assert (unpacked / "notes.txt").read_text() == "notes"
    assert (unpacked / "reply.txt").read_text() == "read\n"
    assert set(archive_names(saved.read_bytes())) == {"notes.txt", "reply.txt"}


async def test_a_git_workspace_is_asked_for_through_the_client_and_the_cli(
    fake_orch: Running,
) -> None:
    from ironclaw_client import AsyncClient, GitWorkspace

    async with AsyncClient(fake_orch.target) as client:
        created = await client.create_job(
            "x", git=GitWorkspace(url="https://git.example/team/r.git", ref="v2")
        )
        assert created.job.proto is not None
        assert created.job.proto.git.url == "https://git.example/team/r.git"
        with pytest.raises(InvalidArgument, match="user info"):
            await client.create_job("x", git=GitWorkspace(url="https://u:p@git.example/r.git"))
    info = await (await fake_orch.agent(created.job.job_id)).get_job()
    assert info["git"] == {"url": "https://git.example/team/r.git", "ref": "v2"}

    env = {**os.environ, "IRONCLAW_ORCHESTRATOR": fake_orch.target}
    cli = await asyncio.create_subprocess_exec(
        *(IRONCLAW, "job", "create", "--git", "https://git.example/r.git", "--git-ref", "main"),
        *("--json", "look"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(cli.communicate(), timeout=60)
    assert cli.returncode == 0, err.decode()
    assert json.loads(out)["git"] == {"url": "https://git.example/r.git", "ref": "main"}


async def test_metadata_twice_is_invalid_argument_and_leaves_nothing(fake_orch: Running) -> None:
    projects = fake_orch.orch.settings.projects_dir
    async with aio.insecure_channel(fake_orch.target) as channel:
        stub = pb_grpc.JobServiceStub(channel)

        async def twice() -> object:
            yield pb.UploadWorkspaceRequest(metadata=pb.UploadWorkspaceMetadata())
            yield pb.UploadWorkspaceRequest(chunk=b"\0" * 512)
            yield pb.UploadWorkspaceRequest(metadata=pb.UploadWorkspaceMetadata())

        with pytest.raises(grpc.RpcError) as caught:
            await stub.UploadWorkspace(twice())
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "only the first message" in (caught.value.details() or "")
    await wait_for(lambda: os.listdir(projects / ".uploading") == [], what="staging emptied")
    assert list(projects.glob("upload-*")) == []
