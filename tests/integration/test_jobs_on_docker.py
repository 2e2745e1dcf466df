"""The control plane and the job manager against the real Docker engine, through the real gRPC
server and the real worker API, with the small test-agent image."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc import aio

from ironclaw_client.api.v1 import jobs_pb2 as pb
from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc
from tests.helpers import wait_for

pytestmark = pytest.mark.docker


@pytest.fixture
async def orch(start_orch: Any, make_settings: Any, test_agent_image: str) -> Any:
    return await start_orch(make_settings(WORKER_IMAGE=test_agent_image))


@pytest.fixture
async def stub(orch: Any) -> Any:
    channel = aio.insecure_channel(f"127.0.0.1:{orch.grpc_port}")
    yield pb_grpc.JobServiceStub(channel)
    await channel.close()


def _project(base: Path, name: str) -> Path:
    path = base / "projects" / name
    path.mkdir(parents=True)
    os.chown(path, 1000, 1000)
    return path


async def _create(stub: Any, task: str, **kwargs: Any) -> Any:
    response = await stub.CreateJob(pb.CreateJobRequest(task=task, **kwargs))
    return response.job


async def _state(stub: Any, job_id: str) -> Any:
    return (await stub.GetJob(pb.GetJobRequest(job_id=job_id))).job


def _containers(docker_engine: Any, job_id: str) -> list[Any]:
    # Low-level listing: no per-container inspect that could race with a removal.
    return list(
        docker_engine.api.containers(all=True, filters={"label": f"ironclaw.job_id={job_id}"})
    )


async def test_create_runs_then_stop_removes_container_and_revokes_token(
    orch: Any, stub: Any, docker_engine: Any
) -> None:
    job = await _create(stub, "sleep")
    assert job.state == pb.JOB_STATE_RUNNING
    assert job.container_name == f"ironclaw-worker-{job.job_id}"
    # The agent's first call (GET /job, then a status) arrives through the worker API.
    await wait_for(
        lambda: orch.manager.get_job(job.job_id).status_message == "test agent sleeping",
        what="the agent's status",
    )
    assert orch.manager.tokens.is_live(job.job_id)
    assert len(_containers(docker_engine, job.job_id)) == 1

    stopped = (await stub.StopJob(pb.StopJobRequest(job_id=job.job_id))).job
    assert stopped.state == pb.JOB_STATE_STOPPED
    assert stopped.result.reason == pb.TERMINAL_REASON_STOPPED_BY_OPERATOR
    assert _containers(docker_engine, job.job_id) == []
    assert not orch.manager.tokens.is_live(job.job_id)


async def test_container_host_config_matches_the_spec(
    orch: Any, stub: Any, docker_engine: Any, base_dir: Path
) -> None:
    project = _project(base_dir, "inspected")
    job = await _create(stub, "env", project_dir=str(project))
    attrs = docker_engine.api.inspect_container(_containers(docker_engine, job.job_id)[0]["Id"])
    host = attrs["HostConfig"]
    config = attrs["Config"]
    assert host["CapDrop"] == ["ALL"]
    assert host["CapAdd"] == ["CHOWN"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["Tmpfs"] == {
        "/tmp": "rw,nosuid,nodev,size=512m",
        "/home/sandbox": "rw,nosuid,nodev,exec,size=1024m,uid=1000,gid=1000,mode=0700",
    }
    assert host["ReadonlyRootfs"] is True
    assert host["NanoCpus"] == 1_000_000_000  # WORKER_CPUS=1: a quota, not only shares
    # Bounded where the engine's storage driver can (checked at start), never asked otherwise.
    if orch.backend.limits_writable_layer:
        assert host["StorageOpt"] == {"size": str(4096 << 20)}
    else:
        assert not host.get("StorageOpt")
    assert host["Memory"] == 256 * 1024 * 1024
    assert host["MemorySwap"] == host["Memory"]  # no swap
    assert host["CpuShares"] == 1024
    assert host["PidsLimit"] == 1024
    assert host["NetworkMode"] == "bridge"
    assert host["ExtraHosts"] == ["host.docker.internal:host-gateway"]
    assert host["Binds"] == [f"{project}:/workspace:rw"]
    assert config["User"] == "1000:1000"
    assert config["WorkingDir"] == "/workspace"
    labels = config["Labels"]
    assert labels["ironclaw.job_id"] == job.job_id
    assert labels["ironclaw.mode"] == "worker"
    assert labels["ironclaw.instance"] == orch.settings.instance
    assert "ironclaw.created_at" in labels
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["IRONCLAW_JOB_ID"] == job.job_id
    assert env["IRONCLAW_WORKER_TOKEN"].startswith("irc_")
    assert env["IRONCLAW_WORKSPACE"] == "/workspace"
    assert env["IRONCLAW_ORCHESTRATOR_URL"] == f"http://host.docker.internal:{orch.http_port}"
    assert "ANTHROPIC_API_KEY" not in env


async def test_container_that_exits_3_fails_the_job_with_its_code(
    orch: Any, stub: Any, docker_engine: Any
) -> None:
    job = await _create(stub, "exit 3")
    final = await wait_for(lambda: _terminal(stub, job.job_id), timeout=20, what="the job to fail")
    assert final.state == pb.JOB_STATE_FAILED
    assert final.result.reason == pb.TERMINAL_REASON_EXITED
    assert final.result.exit_code == 3
    assert "code 3" in final.result.message
    assert not orch.manager.tokens.is_live(job.job_id)
    await wait_for(lambda: _containers(docker_engine, job.job_id) == [], what="removal")
    assert "test agent: exit" in (await _state(stub, job.job_id)).log_tail


async def test_oom_killed_container_fails_the_job_as_oom(
    start_orch: Any, make_settings: Any, test_agent_image: str, docker_engine: Any
) -> None:
    orch = await start_orch(make_settings(WORKER_IMAGE=test_agent_image, WORKER_MEMORY_MB="64"))
    async with aio.insecure_channel(f"127.0.0.1:{orch.grpc_port}") as channel:
        stub = pb_grpc.JobServiceStub(channel)
        job = await _create(stub, "oom")
        final = await wait_for(lambda: _terminal(stub, job.job_id), timeout=60, what="OOM")
        assert final.state == pb.JOB_STATE_FAILED
        assert final.result.reason == pb.TERMINAL_REASON_OOM_KILLED, final.result.message
        assert "OOM" in final.result.message


async def _terminal(stub: Any, job_id: str) -> Any:
    job = await _state(stub, job_id)
    return job if job.state in (pb.JOB_STATE_STOPPED, pb.JOB_STATE_FAILED) else None


async def test_complete_over_http_stops_the_job_and_removes_the_container(
    orch: Any, stub: Any, docker_engine: Any
) -> None:
    job = await _create(stub, "complete OK all tests pass")
    final = await wait_for(lambda: _terminal(stub, job.job_id), what="completion")
    assert final.state == pb.JOB_STATE_STOPPED
    assert final.result.reason == pb.TERMINAL_REASON_COMPLETED
    assert final.result.success
    assert final.result.message == "all tests pass"
    await wait_for(lambda: _containers(docker_engine, job.job_id) == [], what="removal")


async def test_watch_streams_snapshot_then_every_change_until_the_result(
    orch: Any, stub: Any
) -> None:
    job = await _create(stub, "complete FAIL could not build")
    kinds = []
    async for update in stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id)):
        kinds.append(update.WhichOneof("update"))
    assert kinds[0] == "snapshot"
    assert kinds[-1] == "result"
    final = await _state(stub, job.job_id)
    assert final.state == pb.JOB_STATE_FAILED
    assert final.result.reason == pb.TERMINAL_REASON_FAILED


async def test_two_jobs_have_distinct_tokens_bound_to_their_job(
    start_orch: Any, make_settings: Any, test_agent_image: str
) -> None:
    from orchestrator.domain.jobs import CreateJobRequest

    orch = await start_orch(make_settings(WORKER_IMAGE=test_agent_image))
    a = await orch.manager.create_job(CreateJobRequest(task="sleep"))
    b = await orch.manager.create_job(CreateJobRequest(task="sleep"))
    assert a.token
    assert b.token
    assert a.token != b.token
    base = f"http://{orch.http_host}:{orch.http_port}"
    async with aiohttp.ClientSession() as http:
        own = await http.get(
            f"{base}/worker/{a.job.job_id}/job", headers={"Authorization": f"Bearer {a.token}"}
        )
        assert own.status == 200
        foreign = await http.get(
            f"{base}/worker/{b.job.job_id}/job", headers={"Authorization": f"Bearer {a.token}"}
        )
        assert foreign.status == 401
        assert (await foreign.json())["error"] == "invalid_token"


async def test_missing_image_fails_the_job_with_the_fix_and_leaves_no_container(
    start_orch: Any, make_settings: Any, docker_engine: Any
) -> None:
    orch = await start_orch(make_settings(WORKER_IMAGE="ironclaw-no-such-image:latest"))
    async with aio.insecure_channel(f"127.0.0.1:{orch.grpc_port}") as channel:
        stub = pb_grpc.JobServiceStub(channel)
        job_id = str(uuid.uuid4())
        with pytest.raises(grpc.RpcError) as info:
            await _create(stub, "sleep", job_id=job_id)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "image ironclaw-no-such-image:latest not found" in info.value.details()
        assert "make images" in info.value.details()
        job = await _state(stub, job_id)
        assert job.state == pb.JOB_STATE_FAILED
        assert job.result.reason == pb.TERMINAL_REASON_START_FAILED
        assert _containers(docker_engine, job_id) == []
        assert not orch.manager.tokens.is_live(job_id)


async def test_same_client_job_id_twice_starts_one_container(
    orch: Any, stub: Any, docker_engine: Any
) -> None:
    job_id = str(uuid.uuid4())
    first = await stub.CreateJob(pb.CreateJobRequest(task="sleep", job_id=job_id))
    second = await stub.CreateJob(pb.CreateJobRequest(task="sleep", job_id=job_id))
    assert not first.already_existed
    assert second.already_existed
    assert second.job.job_id == job_id
    assert len(_containers(docker_engine, job_id)) == 1


@pytest.mark.parametrize(
    ("project", "expected"),
    [
        ("/tmp/untrusted", "Project directory outside allowed base"),
        ("../escape", "Project directory outside allowed base"),
        ("missing-dir", "does not exist"),
    ],
)
async def test_bad_project_dirs_are_invalid_argument(
    stub: Any, project: str, expected: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        await _create(stub, "sleep", project_dir=project)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in info.value.details()


async def test_symlink_out_of_the_base_is_rejected(stub: Any, base_dir: Path) -> None:
    (base_dir / "projects" / "sneaky").symlink_to("/etc")
    with pytest.raises(grpc.RpcError) as info:
        await _create(stub, "sleep", project_dir=str(base_dir / "projects" / "sneaky"))
    assert "Project directory outside allowed base" in info.value.details()


async def test_project_the_sandbox_cannot_write_is_refused_with_the_fix(
    stub: Any, base_dir: Path
) -> None:
    project = base_dir / "projects" / "rootowned"
    project.mkdir(mode=0o755)
    os.chown(project, 0, 0)
    with pytest.raises(grpc.RpcError) as info:
        await _create(stub, "sleep", project_dir=str(project))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"chown -R 1000 {project}" in info.value.details()


async def test_job_without_project_gets_a_dir_owned_by_the_sandbox(
    orch: Any, stub: Any, base_dir: Path
) -> None:
    job = await _create(stub, "sleep")
    project = Path(job.project_dir)
    assert project == base_dir / "projects" / job.job_id
    assert project.stat().st_uid == 1000


async def test_unknown_and_malformed_ids_and_bad_input(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as info:
        await stub.GetJob(pb.GetJobRequest(job_id=str(uuid.uuid4())))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        await stub.GetJob(pb.GetJobRequest(job_id="not-a-uuid"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        await _create(stub, "   ")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "task is empty" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        await _create(stub, "sleep", mode=7)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_filters_by_state_and_paginates(orch: Any, stub: Any) -> None:
    ids = [(await _create(stub, "complete OK done")).job_id for _ in range(3)]
    running = (await _create(stub, "sleep")).job_id
    for job_id in ids:
        await wait_for(lambda j=job_id: _terminal(stub, j), what="completion")
    stopped = await stub.ListJobs(pb.ListJobsRequest(states=[pb.JOB_STATE_STOPPED]))
    assert {j.job_id for j in stopped.jobs} == set(ids)
    page1 = await stub.ListJobs(pb.ListJobsRequest(page_size=2))
    assert len(page1.jobs) == 2
    assert page1.next_page_token
    page2 = await stub.ListJobs(pb.ListJobsRequest(page_size=2, page_token=page1.next_page_token))
    seen = [j.job_id for j in page1.jobs] + [j.job_id for j in page2.jobs]
    assert seen == [*ids, running]
    assert page2.next_page_token == ""


async def test_watch_from_start_replays_the_history_and_resumes_exactly(
    orch: Any, stub: Any
) -> None:
    job = await _create(stub, "complete OK replayed")
    await wait_for(lambda: _terminal(stub, job.job_id), what="completion")
    history = [
        u async for u in stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id, from_start=True))
    ]
    assert history[0].state_change.state == pb.JOB_STATE_CREATING
    assert history[-1].WhichOneof("update") == "result"
    sequences = [u.sequence for u in history]
    assert sequences == list(range(1, len(history) + 1))
    resumed = [
        u async for u in stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id, after_sequence=2))
    ]
    assert [u.sequence for u in resumed] == sequences[2:]
