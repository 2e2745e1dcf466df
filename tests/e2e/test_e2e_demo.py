"""The offline demo end to end: the control plane creates a job, the real worker image runs the
scripted model's tool calls against a real project, and the result, the history, the container
and the token all end as promised. `make demo` itself (deploy/scripts/demo.sh) runs the same job
and shows the passing tests from a fresh hardened container: the job-edited project's code never
runs on the host, here either."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from ironclaw_client.api.v1 import jobs_pb2 as pb
from orchestrator.llm.scripted_provider import load_script
from tests.conftest import ROOT
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
DEMO_SH = ROOT / "deploy" / "scripts" / "demo.sh"
RUN_SANDBOXED = ROOT / "deploy" / "scripts" / "run-sandboxed.sh"
# Anything that would make the demo pick a real model.
PROVIDER_VARS = (
    "LLM_PROVIDER",
    "LLM_SCRIPT",
    "LLM_BASE_URL",
    "ANTHROPIC_API_KEY",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "OPENAI_API_KEY",
)


def _remove_labelled(docker_engine: Any, label: str) -> None:
    for row in docker_engine.api.containers(all=True, filters={"label": label}):
        with contextlib.suppress(Exception):
            docker_engine.api.remove_container(row["Id"], force=True)


@pytest.fixture
async def project_tests(
    docker_engine: Any, worker_image: str
) -> AsyncIterator[Callable[[Path], Coroutine[Any, Any, tuple[int, str]]]]:
    """``await project_tests(project)``: the project's unit tests, run by run-sandboxed.sh in a
    fresh hardened container (what a job left there is the job's code: never run on the host);
    returns the exit code and the output."""
    label = f"ironclaw.test.sandboxed-run={uuid.uuid4().hex}"

    async def run(project: Path) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            str(RUN_SANDBOXED),
            "--image",
            worker_image,
            "--label",
            label,
            str(project),
            "python3",
            "-m",
            "unittest",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
        assert process.returncode is not None
        return process.returncode, output.decode()

    yield run
    _remove_labelled(docker_engine, label)


async def test_demo_job_fixes_the_project_and_ends_completed(
    e2e: Any,
    demo_project: Path,
    docker_engine: Any,
    worker_image: str,
    project_tests: Callable[[Path], Coroutine[Any, Any, tuple[int, str]]],
) -> None:
    code, output = await project_tests(demo_project)
    assert code != 0, output  # the bug is there to begin with
    assert "FAILED (failures=2)" in output
    # The project lives under the test's base dir on the host: it ran where it is /workspace.
    assert 'File "/workspace/test_calc.py"' in output
    # In the default network mode: the job behind its relay, out only through the gateway.
    run = await e2e(DEMO_SCRIPT, JOB_NETWORK="isolated", JOB_RELAY_IMAGE=worker_image)
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
    code, output = await project_tests(demo_project)
    assert code == 0, output
    assert "Ran 3 tests" in output

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_demo(env: dict[str, str], timeout: float) -> tuple[int, str]:
    # Its own session, so a timeout can end the demo with everything it started (its
    # `ironclaw serve`, a `docker run` client) and leave nothing behind.
    process = subprocess.Popen(
        [str(DEMO_SH)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        pytest.fail(f"make demo did not finish in {timeout} s:\n{output[-6000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode, output


def _after(output: str, heading: str) -> str:
    """What the demo printed under one of its headings (without the headings' bold)."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", output)
    marker = f"==> {heading}"
    assert marker in plain, plain[-6000:]
    return plain.split(marker, 1)[1].split("==> ", 1)[0]


def test_make_demo_shows_the_passing_tests_from_a_fresh_hardened_container(
    docker_engine: Any, worker_image: str, test_instance: str, tmp_path: Path
) -> None:
    base = tmp_path / "demo"
    tests_label = f"ironclaw.demo={base}"
    # `python3` / `python` on the host, for the demo, record the call and fail: the project's
    # code must run in no interpreter of the host.
    host_bin, host_calls = tmp_path / "host-bin", tmp_path / "host-python-calls"
    host_bin.mkdir()
    for name in ("python3", "python"):
        shim = host_bin / name
        shim.write_text(f'#!/bin/sh\necho "$0 $*" >> {host_calls}\nexit 97\n')
        shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in PROVIDER_VARS}
    for name in ("WORKER_IMAGE", "IRONCLAW_ORCHESTRATOR"):
        env.pop(name, None)  # the demo derives them: the image from IRONCLAW_IMAGE_TAG
    env.update(
        PATH=f"{host_bin}:{os.environ['PATH']}",
        PYTHON=sys.executable,
        IRONCLAW_BASE_DIR=str(base),
        ORCHESTRATOR_INSTANCE=test_instance,
        ORCHESTRATOR_PORT=str(_free_port()),
        ORCHESTRATOR_HTTP_PORT=str(_free_port()),
        METRICS_PORT="0",
        STOP_GRACE_S="2",
    )
    since = int(time.time()) - 1
    try:
        code, output = _run_demo(env, timeout=300)
        until = int(time.time()) + 1
        assert code == 0, output[-6000:]
        assert "LLM provider: scripted" in output

        before = _after(output, f"A small project with a failing test: {base}/projects/demo")
        assert "FAILED (failures=2)" in before
        shown = _after(output, f"The tests, run in a fresh container ({worker_image}:")
        assert "Ran 3 tests" in shown
        assert shown.rstrip().endswith("OK"), shown
        assert "return a + b" in (base / "projects" / "demo" / "calc.py").read_text()
        assert not host_calls.exists(), host_calls.read_text()

        # The engine's record: one container for each run of the tests, from the worker image
        # the demo built, failing before the fix and passing after it, then removed.
        runs: dict[str, dict[str, Any]] = {}
        for event in docker_engine.events(
            since=since,
            until=until,
            filters={"type": "container", "label": tests_label},
            decode=True,
        ):
            run = runs.setdefault(event["Actor"]["ID"], {"actions": []})
            run["actions"].append(event["Action"])
            run["image"] = event["Actor"]["Attributes"]["image"]
            if event["Action"] == "die":
                run["exit_code"] = event["Actor"]["Attributes"]["exitCode"]
        assert [run["exit_code"] for run in runs.values()] == ["1", "0"], runs
        for run in runs.values():
            assert run["image"] == worker_image
            assert [a for a in run["actions"] if a in ("create", "start", "die", "destroy")] == [
                "create",
                "start",
                "die",
                "destroy",
            ]
        assert docker_engine.api.containers(all=True, filters={"label": tests_label}) == []
    finally:
        _remove_labelled(docker_engine, tests_label)
