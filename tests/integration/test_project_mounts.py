"""What is mounted at /workspace is the directory that was validated, whatever a job does
meanwhile: the swap attack run from inside a real job, a swap race only the host can run, a
symlink from one project into another, and a mount that does not match failing its job.

Checked from the host: ``/proc/<container pid>/root/workspace`` (the tests run as root)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc import aio

from ironclaw_client.api.v1 import jobs_pb2 as pb
from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc
from orchestrator.containers import docker_backend
from orchestrator.containers.backend import ContainerSpec, DirectoryIdentity
from orchestrator.containers.docker_backend import DockerBackend
from orchestrator.http_api import app as worker_app
from tests.helpers import wait_for

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(os.geteuid() != 0, reason="chowns projects and reads /proc as root"),
]

ATTEMPTS = 15
AGENT_READY = "test agent sleeping"
# Run inside job A's container by the test agent's `python` action: swaps `sub` (a directory)
# and `decoy` (a symlink to a host directory outside the base) as fast as it can.
SWAP_LOOP = """
import ctypes, os
os.chdir("/workspace")
os.makedirs("sub", exist_ok=True)
if not os.path.lexists("decoy"):
    os.symlink({target!r}, "decoy")
libc = ctypes.CDLL(None, use_errno=True)
call("POST", "/status", {{"message": "swapping", "iteration": 1}})
while True:
    if libc.renameat2(-100, b"sub", -100, b"decoy", 2) != 0:
        raise OSError(ctypes.get_errno(), "renameat2(RENAME_EXCHANGE)")
"""


def identity(path: Path) -> DirectoryIdentity:
    st = os.stat(path)
    return DirectoryIdentity(st.st_dev, st.st_ino)


def mounted_from_host(docker_engine: Any, job_id: str) -> DirectoryIdentity:
    """What the job's container has at /workspace, seen from the host."""
    (row,) = docker_engine.api.containers(filters={"label": f"ironclaw.job_id={job_id}"})
    pid = docker_engine.api.inspect_container(row["Id"])["State"]["Pid"]
    st = os.stat(f"/proc/{pid}/root/workspace", follow_symlinks=False)
    return DirectoryIdentity(st.st_dev, st.st_ino)


def containers_of(docker_engine: Any, job_id: str) -> list[Any]:
    return list(
        docker_engine.api.containers(all=True, filters={"label": f"ironclaw.job_id={job_id}"})
    )


def make_project(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir(parents=True)
    os.chown(path, 1000, 1000)
    return path


@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    """A host directory outside the base, writable by the sandbox, that no job may see."""
    secret = make_project(tmp_path, "host-only")
    (secret / "marker").write_text("host only\n")
    return secret


@pytest.fixture
async def stub_for() -> Any:
    channels: list[aio.Channel] = []

    def make(orch: Any) -> Any:
        channel = aio.insecure_channel(f"127.0.0.1:{orch.grpc_port}")
        channels.append(channel)
        return pb_grpc.JobServiceStub(channel)

    yield make
    for channel in channels:
        await channel.close()


async def _state(stub: Any, job_id: str) -> Any:
    return (await stub.GetJob(pb.GetJobRequest(job_id=job_id))).job


async def _stop(stub: Any, job_id: str) -> None:
    with contextlib.suppress(grpc.RpcError):
        await stub.StopJob(pb.StopJobRequest(job_id=job_id))


class Outcomes:
    """What the retried CreateJob calls came to."""

    def __init__(self) -> None:
        self.refused: list[str] = []
        self.start_failed: list[str] = []
        self.start_failed_reasons: list[int] = []
        self.accepted: list[DirectoryIdentity] = []

    async def attempt(self, stub: Any, docker_engine: Any, project_dir: str) -> None:
        job_id = str(uuid.uuid4())
        try:
            await stub.CreateJob(
                pb.CreateJobRequest(task="sleep", job_id=job_id, project_dir=project_dir)
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                self.refused.append(exc.details() or "")
            else:
                self.start_failed.append(exc.details() or "")
                self.start_failed_reasons.append((await _state(stub, job_id)).result.reason)
            return
        try:
            self.accepted.append(mounted_from_host(docker_engine, job_id))
        finally:
            await _stop(stub, job_id)


@contextlib.contextmanager
def host_swap_loop(directory: Path, a: str, b: str) -> Iterator[subprocess.Popen[bytes]]:
    """``renameat2(RENAME_EXCHANGE)`` of ``a`` and ``b`` in a loop, in its own process."""
    code = textwrap.dedent(
        f"""
        import ctypes, os, sys
        os.chdir({str(directory)!r})
        libc = ctypes.CDLL(None, use_errno=True)
        print("swapping", flush=True)
        while True:
            if libc.renameat2(-100, {a.encode()!r}, -100, {b.encode()!r}, 2) != 0:
                sys.exit(ctypes.get_errno())
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"swapping\n"
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


# ------------------------------------------------------------------ the attack, from a job


async def test_a_job_swapping_its_own_directory_with_a_host_link_never_gets_it_mounted(
    start_orch: Any,
    make_settings: Any,
    test_agent_image: str,
    stub_for: Any,
    docker_engine: Any,
    base_dir: Path,
    host_dir: Path,
) -> None:
    orch = await start_orch(make_settings(WORKER_IMAGE=test_agent_image))
    stub = stub_for(orch)
    a = make_project(base_dir / "projects", "a")
    attacker = (
        await stub.CreateJob(
            pb.CreateJobRequest(
                task="python " + SWAP_LOOP.format(target=str(host_dir)), project_dir=str(a)
            )
        )
    ).job
    await wait_for(
        lambda: orch.manager.get_job(attacker.job_id).status_message == "swapping",
        what="job A's swap loop",
    )
    kinds: set[bool] = set()

    def seen_both() -> bool:
        kinds.add((a / "sub").is_symlink())
        return kinds == {True, False}

    # From the host, `sub` is now a directory, now a link: the loop is swapping.
    await wait_for(seen_both, interval=0.001, what="sub seen as both a directory and a link")
    outcomes = Outcomes()
    for _ in range(ATTEMPTS):
        await outcomes.attempt(stub, docker_engine, str(a / "sub"))
    assert (await _state(stub, attacker.job_id)).state == pb.JOB_STATE_RUNNING
    await _stop(stub, attacker.job_id)

    assert identity(host_dir) not in outcomes.accepted
    # Deterministic, whatever the timing: <A>/sub lies inside a project, which job A can write.
    assert len(outcomes.refused) == ATTEMPTS, vars(outcomes)
    assert all("lies inside" in message for message in outcomes.refused)
    assert str(host_dir) not in " ".join(outcomes.refused)
    assert sorted(os.listdir(host_dir)) == ["marker"]


# ------------------------------------------------------------------ a race only the host can run


async def test_a_swap_race_outside_any_job_never_mounts_the_other_directory(
    start_orch: Any,
    make_settings: Any,
    test_agent_image: str,
    stub_for: Any,
    docker_engine: Any,
    base_dir: Path,
    host_dir: Path,
) -> None:
    """In a directory no job can write, the host swaps the project with a link to a host
    directory: every CreateJob is refused at the walk, fails START_FAILED at the check after
    the start, or runs with the validated directory."""
    orch = await start_orch(make_settings(WORKER_IMAGE=test_agent_image))
    stub = stub_for(orch)
    team = base_dir / "projects" / "team"
    team.mkdir(mode=0o755)
    app = make_project(team, "app")
    validated = identity(app)
    (team / "decoy").symlink_to(host_dir)
    outcomes = Outcomes()
    with host_swap_loop(team, "app", "decoy"):
        for _ in range(ATTEMPTS):
            await outcomes.attempt(stub, docker_engine, str(team / "app"))
    print(
        f"refused {len(outcomes.refused)}, start failed {len(outcomes.start_failed)}, "
        f"accepted {len(outcomes.accepted)}"
    )
    assert identity(host_dir) not in outcomes.accepted
    assert all(seen == validated for seen in outcomes.accepted), outcomes.accepted
    assert all("symbolic link" in message for message in outcomes.refused)
    assert set(outcomes.start_failed_reasons) <= {pb.TERMINAL_REASON_START_FAILED}
    for message in outcomes.start_failed:
        assert "is not the validated project directory" in message
        assert str(host_dir) not in message
    assert len(outcomes.refused) + len(outcomes.start_failed) + len(outcomes.accepted) == ATTEMPTS
    assert sorted(os.listdir(host_dir)) == ["marker"]


# ------------------------------------------------------------------ one project into another


async def test_a_symlink_from_one_project_into_another_is_refused(
    start_orch: Any,
    make_settings: Any,
    test_agent_image: str,
    stub_for: Any,
    docker_engine: Any,
    base_dir: Path,
) -> None:
    orch = await start_orch(make_settings(WORKER_IMAGE=test_agent_image))
    stub = stub_for(orch)
    projects = base_dir / "projects"
    a = make_project(projects, "a")
    make_project(projects, "b")
    (a / "link").symlink_to(projects / "b")
    (projects / "b-alias").symlink_to(projects / "b")
    for requested, expected in (
        (str(a / "link"), f"it lies inside {a}"),
        (str(projects / "b-alias"), "b-alias is a symbolic link"),
    ):
        job_id = str(uuid.uuid4())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateJob(
                pb.CreateJobRequest(task="sleep", job_id=job_id, project_dir=requested)
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert expected in (caught.value.details() or "")
        assert containers_of(docker_engine, job_id) == []


# ------------------------------------------------------------------ the check after the start


class SwappingDocker(DockerBackend):
    """The real Docker backend, except that right before the engine starts the container the
    validated project is moved aside and another directory put at its path: what a swap
    between the check and the start would do."""

    def __init__(self, decoy: Path) -> None:
        super().__init__()
        self.decoy = decoy

    async def create_and_start(self, spec: ContainerSpec) -> str:
        project = Path(spec.mounts[0].host_path)
        project.rename(project.with_name(project.name + ".validated"))
        self.decoy.rename(project)
        return await super().create_and_start(spec)


@pytest.mark.parametrize("path", ["proc", "exec"])
async def test_a_mount_that_is_not_the_validated_directory_fails_the_job(
    start_orch: Any,
    make_settings: Any,
    test_agent_image: str,
    stub_for: Any,
    docker_engine: Any,
    base_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
) -> None:
    if path == "exec":
        # As when the orchestrator cannot look into the container's process (in a container
        # itself, or not root): the check runs `stat` in the container instead.
        monkeypatch.setattr(docker_backend, "identity_through_proc", lambda *_: None)
    decoy = make_project(base_dir, "decoy")
    orch = await start_orch(
        make_settings(WORKER_IMAGE=test_agent_image), backend=SwappingDocker(decoy)
    )
    stub = stub_for(orch)
    project = make_project(base_dir / "projects", "victim")
    expected, mounted = identity(project), identity(decoy)
    job_id = str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateJob(
            pb.CreateJobRequest(task="sleep", job_id=job_id, project_dir=str(project))
        )
    message = caught.value.details() or ""
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"/workspace ({mounted})" in message
    assert f"validated project directory {project} ({expected})" in message
    assert "decoy" not in message  # nothing of what was mounted beyond its identity

    job = await _state(stub, job_id)
    assert job.state == pb.JOB_STATE_FAILED
    assert job.result.reason == pb.TERMINAL_REASON_START_FAILED
    assert not orch.manager.tokens.is_live(job_id)
    assert job.status_message == ""  # the agent's first call was never served
    await wait_for(lambda: containers_of(docker_engine, job_id) == [], what="container removed")


async def test_the_check_passes_through_exec_too(
    start_orch: Any,
    make_settings: Any,
    test_agent_image: str,
    stub_for: Any,
    docker_engine: Any,
    base_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(docker_backend, "identity_through_proc", lambda *_: None)
    orch = await start_orch(make_settings(WORKER_IMAGE=test_agent_image))
    stub = stub_for(orch)
    project = make_project(base_dir / "projects", "plain")
    job = (await stub.CreateJob(pb.CreateJobRequest(task="sleep", project_dir=str(project)))).job
    assert job.state == pb.JOB_STATE_RUNNING
    assert mounted_from_host(docker_engine, job.job_id) == identity(project)
    await _stop(stub, job.job_id)


# ------------------------------------------------------------------ calls wait for the check


class GatedDocker(DockerBackend):
    """The real Docker backend whose workspace check waits for the test to open a gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def mounted_directory(
        self, container_id: str, container_path: str
    ) -> DirectoryIdentity | None:
        await self.gate.wait()
        return await super().mounted_directory(container_id, container_path)


async def test_calls_of_a_job_are_held_until_its_workspace_is_verified(
    start_orch: Any,
    make_settings: Any,
    test_agent_image: str,
    stub_for: Any,
    docker_engine: Any,
    base_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_app, "START_HOLD_S", 0.5)
    backend = GatedDocker()
    orch = await start_orch(make_settings(WORKER_IMAGE=test_agent_image), backend=backend)
    stub = stub_for(orch)
    held: list[str] = []
    hold = orch.manager.hold_while_creating

    async def recording(job_id: str, token: str, timeout_s: float) -> bool:
        held.append(orch.manager.get_job(job_id).state.name)
        return await hold(job_id, token, timeout_s)

    monkeypatch.setattr(orch.manager, "hold_while_creating", recording)
    job_id = str(uuid.uuid4())
    creating = asyncio.ensure_future(
        stub.CreateJob(pb.CreateJobRequest(task="sleep", job_id=job_id))
    )
    try:
        # The container runs and its agent has called, while the job is still Creating.
        await wait_for(lambda: "CREATING" in held, what="the agent's first call")
        (row,) = containers_of(docker_engine, job_id)
        env = docker_engine.api.inspect_container(row["Id"])["Config"]["Env"]
        token = next(e.split("=", 1)[1] for e in env if e.startswith("IRONCLAW_WORKER_TOKEN="))
        url = f"http://{orch.http_host}:{orch.http_port}/worker/{job_id}"
        async with aiohttp.ClientSession() as session:
            wrong = {"Authorization": "Bearer irc_" + "x" * 43}
            async with session.get(f"{url}/credentials", headers=wrong) as response:
                assert response.status == 401  # not held: refused at once
            mine = {"Authorization": f"Bearer {token}"}
            async with session.get(f"{url}/credentials", headers=mine) as response:
                assert response.status == 503
                assert response.headers["Retry-After"] == "1"
                body = await response.json()
                assert body == {
                    "error": "unavailable",
                    "message": f"job {job_id} is still starting: retry shortly",
                }
            assert orch.manager.get_job(job_id).status_message == ""
            assert not creating.done()

            backend.gate.set()
            created = (await creating).job
            assert created.state == pb.JOB_STATE_RUNNING
            await wait_for(
                lambda: orch.manager.get_job(job_id).status_message == AGENT_READY,
                what="the agent, served once the job runs",
            )
            async with session.get(f"{url}/credentials", headers=mine) as response:
                assert response.status == 200
    finally:
        backend.gate.set()
        with contextlib.suppress(Exception):
            await creating
        await _stop(stub, job_id)
