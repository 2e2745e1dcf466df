"""The offline demo end to end: the control plane creates a job, the real worker image runs the
scripted model's tool calls against a real project, and the result, the history, the container
and the token all end as promised."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.api.v1 import jobs_pb2 as pb
from orchestrator.llm.scripted_provider import load_script
from tests.e2e.conftest import DEMO_SCRIPT
from tests.e2e.support import (
    container_env,
    create,
    get,
    history,
    tool_events,
    tool_results,
    wait_removed,
    wait_terminal,
    worker_api_get_job_status,
)

pytestmark = pytest.mark.docker

DEMO_TASK = "The tests fail. Find the bug and fix it."


def _unittest(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-B", "-m", "unittest"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_demo_job_fixes_the_project_and_ends_completed(
    e2e: Any, demo_project: Path, docker_engine: Any, worker_image: str
) -> None:
    assert _unittest(demo_project).returncode != 0  # the bug is there to begin with
    run = await e2e(DEMO_SCRIPT)
    job = await create(run.stub, DEMO_TASK, project_dir=str(demo_project))
    env = container_env(docker_engine, job.job_id)
    token = env["IRONCLAW_WORKER_TOKEN"]
    # The container knows who it is and where the orchestrator is; everything else about the
    # job (task, limits, deadline) it reads from GET /job.
    image_env = dict(
        item.split("=", 1) for item in docker_engine.images.get(worker_image).attrs["Config"]["Env"]
    )
    assert env == {
        **image_env,
        "IRONCLAW_JOB_ID": job.job_id,
        "IRONCLAW_ORCHESTRATOR_URL": run.orch.manager.orchestrator_url,
        "IRONCLAW_WORKER_TOKEN": token,
        "IRONCLAW_WORKSPACE": "/workspace",
    }
    assert token.startswith("irc_")

    final = await wait_terminal(run.stub, job.job_id, timeout=90)

    turns = load_script(DEMO_SCRIPT)
    assert final.state == pb.JOB_STATE_STOPPED, final.result.message
    assert final.result.reason == pb.TERMINAL_REASON_COMPLETED
    assert final.result.success
    assert final.result.message == turns[-1].content
    assert final.result.iterations == len(turns)
    assert final.usage.calls == len(turns)
    assert final.usage.input_tokens > 0
    assert final.usage.output_tokens > 0
    assert "return a + b" in (demo_project / "calc.py").read_text()
    tests = _unittest(demo_project)
    assert tests.returncode == 0, tests.stderr
    assert "Ran 3 tests" in tests.stderr

    updates = await history(run.stub, job.job_id)
    assert [u.sequence for u in updates] == list(range(1, len(updates) + 1))
    assert updates[-1].WhichOneof("update") == "result"
    expected_tools = ["list_dir", "shell", "read_file", "edit_file", "shell"]
    assert tool_events(updates) == [
        (kind, name) for name in expected_tools for kind in ("tool_use", "tool_result")
    ]
    results = tool_results(updates)
    assert [r["is_error"] for r in results] == [False, True, False, False, False]
    assert "calc.py" in results[0]["output"]
    assert "FAILED (failures=2)" in results[1]["output"]
    assert "return a - b" in results[2]["output"]
    assert "OK" in results[4]["output"]

    await wait_removed(docker_engine, job.job_id)
    assert "reporting success after 6 iteration(s)" in (await get(run.stub, job.job_id)).log_tail
    status, body = await worker_api_get_job_status(run.orch, job.job_id, token)
    assert (status, body["error"]) == (401, "invalid_token")


async def test_cli_create_wait_follows_a_job_to_completion(
    e2e: Any, sandbox_project: Any, docker_engine: Any
) -> None:
    run = await e2e("hello_file.yaml")
    project = sandbox_project("hello")
    cli = Path(sys.executable).with_name("ironclaw")
    target = f"127.0.0.1:{run.orch.grpc_port}"
    process = await asyncio.create_subprocess_exec(
        str(cli),
        "job",
        "--orchestrator",
        target,
        "create",
        "Say hello in hello.txt",
        "--project",
        str(project),
        "--wait",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=90)
    output = stdout.decode()

    assert process.returncode == 0, f"{output}\n{stderr.decode()}"
    assert (project / "hello.txt").read_text() == "hello from the worker\n"
    assert "tool  write_file" in output
    assert "←     shell ok: hello from the worker" in output
    assert "result: COMPLETED: Wrote hello.txt." in output
    assert "state:    Stopped" in output
    job_id = output.split()[1]
    await wait_removed(docker_engine, job_id)
