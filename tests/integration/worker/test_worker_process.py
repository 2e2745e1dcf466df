"""`python -m worker.main` as its own process: configuration, logs and SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from tests.fakes.fake_worker_api import FakeWorkerApi, text_answer, tool_answer, tool_call


def _worker_env(api: FakeWorkerApi, workspace: Path) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(workspace),
        "IRONCLAW_WORKER_TOKEN": api.token,
        "IRONCLAW_JOB_ID": api.job_id,
        "IRONCLAW_ORCHESTRATOR_URL": api.url,
        "IRONCLAW_WORKSPACE": str(workspace),
    }


async def _start_worker(api: FakeWorkerApi, workspace: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.main",
        "--log-level",
        "DEBUG",
        env=_worker_env(api, workspace),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_worker_process_runs_a_job_to_completion(
    fake_api: FakeWorkerApi, workspace: Path
) -> None:
    fake_api.script = [
        tool_answer(tool_call("shell", {"command": "echo hello > hello.txt"})),
        text_answer("Wrote hello.txt."),
    ]
    proc = await _start_worker(fake_api, workspace)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)

    assert proc.returncode == 0, stderr.decode()
    assert (workspace / "hello.txt").read_text() == "hello\n"
    assert fake_api.completions == [
        {"success": True, "message": "Wrote hello.txt.", "iterations": 2}
    ]
    log = stderr.decode()
    assert "reporting success after 2 iteration(s)" in log
    assert fake_api.token not in log
    assert stdout == b""


async def test_sigterm_during_an_llm_call_stops_promptly(
    fake_api: FakeWorkerApi, workspace: Path
) -> None:
    llm_entered = fake_api.hold_llm()
    proc = await _start_worker(fake_api, workspace)
    await asyncio.wait_for(llm_entered.wait(), 30)

    proc.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(proc.communicate(), 10)

    assert proc.returncode == 143, stderr.decode()
    assert "stopped by SIGTERM" in stderr.decode()
    assert fake_api.completions == []


async def test_sigterm_during_a_command_kills_it_too(
    fake_api: FakeWorkerApi, workspace: Path, tmp_path: Path
) -> None:
    fifo = tmp_path / "started"
    os.mkfifo(fifo)
    # The command reports its pid through the FIFO, then becomes a long sleep with that pid.
    fake_api.script = [
        tool_answer(tool_call("shell", {"command": f"echo $$ > {fifo}; exec sleep 300"}))
    ]
    proc = await _start_worker(fake_api, workspace)
    try:
        pid = int(await asyncio.wait_for(asyncio.to_thread(fifo.read_text), 30))
    finally:
        # Unblocks the reading thread should the worker never open the FIFO.
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    proc.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(proc.communicate(), 10)

    assert proc.returncode == 143, stderr.decode()
    assert fake_api.completions == []
    # The worker reaps its command before exiting, so the pid is gone, not a zombie.
    assert not Path(f"/proc/{pid}").exists()
