"""``ironclaw-agent-run`` as its own process against the fake worker API: it renders the job's
catalogue command, runs it in the workspace with the job's LLM key and route under the names the
entry gives (never the worker token), streams the output as events with its keys masked, and
ends as the command does; SIGTERM stops the command and what it started."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from ironclaw_contract.job_keys import llm_key_for
from tests.fakes.fake_worker_api import FakeWorkerApi

AGENT_SCRIPT = r"""
import json, os, sys
print("task:", sys.argv[1], flush=True)
print("model:", sys.argv[2], flush=True)
print("my key is", os.environ["TOOL_KEY"], flush=True)
json.dump(dict(os.environ), open("env.json", "w"))
for n in range(3):
    print("line", n, flush=True)
sys.exit(int(os.environ.get("EXIT_WITH", "0")))
"""


def _agent(**changes: Any) -> dict[str, Any]:
    return {
        "name": "scripted",
        "command": [sys.executable, "-c", AGENT_SCRIPT, "{task}", "{model}"],
        "api": "anthropic",
        "key_env": ["TOOL_KEY", "SECOND_KEY"],
        "base_url_env": ["TOOL_BASE_URL"],
        "base_url": "http://orchestrator.example/worker/x/anthropic",
        "model": "m-1",
        "model_env": ["TOOL_MODEL"],
        "env": {"EXIT_WITH": "0"},
        **changes,
    }


def _env(api: FakeWorkerApi, workspace: Path) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(workspace),
        "IRONCLAW_WORKER_TOKEN": api.token,
        "IRONCLAW_JOB_ID": api.job_id,
        "IRONCLAW_ORCHESTRATOR_URL": api.url,
        "IRONCLAW_WORKSPACE": str(workspace),
    }


async def _run(api: FakeWorkerApi, workspace: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.agent_run",
        env=_env(api, workspace),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_the_command_runs_with_the_job_s_key_and_its_output_becomes_events(
    fake_api: FakeWorkerApi, workspace: Path
) -> None:
    fake_api.task = "fix it; $(rm -rf /) `id`"
    fake_api.agent = _agent()
    proc = await _run(fake_api, workspace)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    log = stderr.decode()
    assert proc.returncode == 0, log
    key = llm_key_for(fake_api.token, fake_api.job_id)

    env = json.loads((workspace / "env.json").read_text())
    assert env["TOOL_KEY"] == env["SECOND_KEY"] == key
    assert env["TOOL_BASE_URL"] == "http://orchestrator.example/worker/x/anthropic"
    assert env["TOOL_MODEL"] == "m-1"
    assert not [name for name in env if name.startswith("IRONCLAW_")]
    assert not [name for name, value in env.items() if fake_api.token in value]

    # The task reached the command as one argument, uninterpreted; the key never left masked.
    contents = "\n".join(
        str(data.get("content")) for kind, data in fake_api.events if kind == "message"
    )
    assert "task: fix it; $(rm -rf /) `id`" in contents
    assert "my key is ***" in contents
    assert key not in contents
    assert key not in log
    assert fake_api.token not in log
    assert "| line 2" in log  # the container log has each line
    assert fake_api.completions == [
        {
            "success": True,
            "message": "\n".join(
                ["task: fix it; $(rm -rf /) `id`", "model: m-1", "my key is ***"]
                + [f"line {n}" for n in range(3)]
            ),
            "details": {"agent": "scripted", "exit_code": 0},
        }
    ]
    assert stdout == b""


async def test_a_non_zero_exit_is_the_runner_s_and_nothing_is_reported(
    fake_api: FakeWorkerApi, workspace: Path
) -> None:
    fake_api.agent = _agent(env={"EXIT_WITH": "7"})
    proc = await _run(fake_api, workspace)
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 7, stderr.decode()
    assert fake_api.completions == []
    assert "agent scripted exited with 7" in stderr.decode()


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("exit_with", [0, 7])
async def test_a_workspace_of_its_own_is_fetched_before_and_pushed_before_the_end(
    fake_api: FakeWorkerApi, workspace: Path, exit_with: int
) -> None:
    fake_api.agent = _agent(env={"EXIT_WITH": str(exit_with)})
    fake_api.workspace_sync = {"fetch": True, "max_bytes": 1 << 20}
    fake_api.workspace_archive = _tar_gz({"given/input.txt": b"from the upload\n"})
    proc = await _run(fake_api, workspace)
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == exit_with, stderr.decode()
    # The command ran in the fetched tree; what it wrote went back, before any result.
    assert (workspace / "given" / "input.txt").read_bytes() == b"from the upload\n"
    (pushed,) = fake_api.pushed_workspaces
    with tarfile.open(fileobj=io.BytesIO(pushed), mode="r:gz") as tar:
        names = set(tar.getnames())
        given = tar.extractfile("given/input.txt")
        assert given is not None
        assert given.read() == b"from the upload\n"
    assert {"env.json", "given", "given/input.txt"} <= names
    routes = [(r.method, r.route) for r in fake_api.requests]
    assert routes.index(("GET", "workspace")) < routes.index(("PUT", "workspace"))
    if exit_with == 0:
        assert routes.index(("PUT", "workspace")) < routes.index(("POST", "complete"))


async def test_a_job_without_an_agent_section_fails_as_a_configuration_error(
    fake_api: FakeWorkerApi, workspace: Path
) -> None:
    proc = await _run(fake_api, workspace)  # a worker job's GET /job
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, stderr.decode()
    [completion] = fake_api.completions
    assert completion["success"] is False
    assert completion["details"] == {"reason": "invalid_config"}
    assert "not an agent job" in completion["message"]


async def test_sigterm_stops_the_command_and_what_it_started(
    fake_api: FakeWorkerApi, workspace: Path
) -> None:
    script = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen(['sleep', '300']); "
        "open('child.pid', 'w').write(str(child.pid)); "
        "print('started', flush=True); time.sleep(300)"
    )
    fake_api.agent = _agent(command=[sys.executable, "-c", script, "{task}"])
    proc = await _run(fake_api, workspace)
    pid_file = workspace / "child.pid"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not (pid_file.exists() and pid_file.read_text()):
        assert loop.time() < deadline, "the command never started"
        await asyncio.sleep(0.05)
    child = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 143, stderr.decode()
    assert fake_api.completions == []
    # The command's own child is gone too (or a zombie nobody waits for).
    try:
        state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z")


async def test_output_without_line_breaks_is_passed_on_in_bounded_pieces(
    fake_api: FakeWorkerApi, workspace: Path
) -> None:
    script = "import sys; sys.stdout.write('x' * 300_000); sys.stdout.flush()"
    fake_api.agent = _agent(command=[sys.executable, "-c", script, "{task}"])
    proc = await _run(fake_api, workspace)
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    [completion] = fake_api.completions
    assert completion["message"] == "x" * 4000  # the last output, bounded
    # Every piece reached the container log, none longer than the bound.
    pieces = [line.split("| ", 1)[1] for line in stderr.decode().splitlines() if "| x" in line]
    assert sum(len(piece) for piece in pieces) == 300_000
    assert max(len(piece) for piece in pieces) <= 1 << 16
