"""The bridge with the real Claude Code CLI on the host: the fake worker API on one side, the fake
Anthropic upstream (as the CLI's ANTHROPIC_BASE_URL, from ``GET /job``) on the other. What
happens inside the container is covered end to end in tests/e2e/claude; here the process
handling is checked where it is fast to observe: lines read as they come, the child's
environment, follow-ups, failures, how a refusal is told from other failures, the deadline and
SIGTERM."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bridge.runner import BridgeConfig, ClaudeBridge
from tests.conftest import ROOT
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.fakes.fake_worker_api import FakeWorkerApi
from tests.helpers import wait_for
from worker.client import RetryPolicy, WorkerApiClient

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05, max_total_s=5.0)
LLM_KEY = "ircl_" + "L" * 43


@pytest.fixture
async def worker_api() -> AsyncIterator[FakeWorkerApi]:
    api = FakeWorkerApi(task="Create note.txt containing hi")
    await api.start()
    yield api
    await api.close()


@pytest.fixture
async def anthropic(worker_api: FakeWorkerApi) -> AsyncIterator[FakeAnthropic]:
    # As from the orchestrator: the CLI's endpoint and its key (not the worker token) come
    # from GET /job.
    async with FakeAnthropic(api_key=LLM_KEY) as fake:
        worker_api.claude = {
            "model": "sonnet",
            "max_turns": 50,
            "allowed_tools": ["Bash", "Read", "Write"],
            "model_aliases": {"sonnet": "claude-sonnet-5-5", "haiku": "claude-haiku-5-5"},
            "base_url": fake.url,
            "api_key": LLM_KEY,
            "oauth_token": None,
            "idle_timeout_s": 600.0,
        }
        yield fake


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    return path


@pytest.fixture
def base_env(tmp_path: Path, worker_api: FakeWorkerApi, anthropic: FakeAnthropic) -> dict[str, str]:
    """The environment of a Claude Code container (its identity, the image's own), pointed at
    the fake worker API."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path / "home"),
        "LANG": "C.UTF-8",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "IRONCLAW_JOB_ID": worker_api.job_id,
        "IRONCLAW_ORCHESTRATOR_URL": worker_api.url,
        "IRONCLAW_WORKER_TOKEN": worker_api.token,
        "IRONCLAW_WORKSPACE": str(tmp_path / "workspace"),
    }


RunBridge = Callable[..., Coroutine[Any, Any, int]]


@pytest.fixture
def run_bridge(
    worker_api: FakeWorkerApi, workspace: Path, base_env: dict[str, str], claude_cli: Path
) -> RunBridge:
    """Runs the bridge (in a thread: it is blocking) to its end; returns its exit code."""

    async def run(**overrides: Any) -> int:
        env = {**base_env, **overrides.pop("env", {})}
        env.pop("IRONCLAW_WORKER_TOKEN")  # main() takes it out before the bridge runs
        overrides.setdefault("claude_bin", str(claude_cli))
        config = BridgeConfig(workspace=workspace, poll_interval_s=0.1, base_env=env, **overrides)
        client = WorkerApiClient(
            worker_api.url, worker_api.job_id, worker_api.token, retry=FAST_RETRY
        )
        try:
            return await asyncio.wait_for(asyncio.to_thread(ClaudeBridge(client, config).run), 90)
        finally:
            client.close()

    return run


def _types(api: FakeWorkerApi) -> list[str]:
    return [event_type for event_type, _ in api.events if event_type != "status"]


async def test_events_arrive_while_the_cli_still_works_and_one_result_ends_the_job(
    run_bridge: RunBridge, worker_api: FakeWorkerApi, anthropic: FakeAnthropic, workspace: Path
) -> None:
    anthropic.enqueue_tool_use(
        "Bash",
        {"command": "sleep 3 && echo hi > note.txt", "description": "slow write"},
        text="I'll write the file.",
        input_tokens=100,
        output_tokens=20,
    )
    anthropic.enqueue_text("Done: note.txt written.", input_tokens=130, output_tokens=12)
    bridge = asyncio.create_task(run_bridge())

    await worker_api.wait_for(lambda: "tool_use" in _types(worker_api), timeout=60)
    # The tool_use line was read and posted while its command was still sleeping.
    assert not (workspace / "note.txt").exists()
    assert not bridge.done()

    assert await bridge == 0
    assert (workspace / "note.txt").read_text() == "hi\n"
    assert _types(worker_api) == ["message", "tool_use", "tool_result", "message"]
    events = [data for kind, data in worker_api.events if kind != "status"]
    assert events[1]["tool_name"] == events[2]["tool_name"] == "Bash"
    assert events[1]["tool_use_id"] == events[2]["tool_use_id"]
    assert events[1]["input"]["command"] == "sleep 3 && echo hi > note.txt"
    assert events[2]["is_error"] is False
    assert events[3] == {"role": "assistant", "content": "Done: note.txt written."}
    statuses = [data["message"] for kind, data in worker_api.events if kind == "status"]
    assert any("tools Bash, Read, Write" in s for s in statuses), statuses

    [completion] = worker_api.completions
    assert completion["success"] is True
    assert completion["message"] == "Done: note.txt written."
    details = completion["details"]
    uuid.UUID(details["session_id"])
    assert details["num_turns"] == 2
    assert details["runs"] == 1
    assert details["ended"] == "result"
    assert details["usage"]["input_tokens"] == 230
    assert details["usage"]["output_tokens"] == 32
    assert details["total_cost_usd"] > 0
    assert details["duration_ms"] > 0
    # The CLI was given exactly the granted tools, and the job's LLM key as its key.
    main_calls = [r for r in anthropic.requests if r.body.get("tools")]
    assert {t["name"] for t in main_calls[-1].body["tools"]} <= {"Bash", "Read", "Write"}
    assert all(r.api_key == LLM_KEY for r in anthropic.requests)
    assert {r.body["model"] for r in main_calls} == {"claude-sonnet-5-5"}


async def test_a_workspace_of_its_own_is_fetched_for_the_cli_and_pushed_before_the_result(
    run_bridge: RunBridge, worker_api: FakeWorkerApi, anthropic: FakeAnthropic, workspace: Path
) -> None:
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        info = tarfile.TarInfo("given.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    worker_api.workspace_sync = {"fetch": True, "max_bytes": 1 << 20}
    worker_api.workspace_archive = archive.getvalue()
    anthropic.enqueue_tool_use(
        "Bash", {"command": "cp given.txt note.txt", "description": "copy"}, text="Copying."
    )
    anthropic.enqueue_text("Copied.")
    assert await run_bridge() == 0
    (pushed,) = worker_api.pushed_workspaces
    with tarfile.open(fileobj=io.BytesIO(pushed), mode="r:gz") as tar:
        note = tar.extractfile("note.txt")
        assert note is not None
        assert note.read() == b"hi\n"  # what the CLI wrote from the fetched file
    routes = [(r.method, r.route) for r in worker_api.requests]
    assert routes.index(("GET", "workspace")) < routes.index(("PUT", "workspace"))
    assert routes.index(("PUT", "workspace")) < routes.index(("POST", "complete"))


async def test_the_cli_gets_credentials_and_its_settings_from_get_job_never_the_worker_token(
    run_bridge: RunBridge, worker_api: FakeWorkerApi, anthropic: FakeAnthropic, workspace: Path
) -> None:
    settings = workspace / ".claude" / "settings.json"
    settings.parent.mkdir()
    original = '{"permissions": {"deny": ["Bash(rm -rf *)"]}}\n'
    settings.write_text(original)
    worker_api.credentials = {"github": "ghp_granted_value"}
    anthropic.enqueue_tool_use("Bash", {"command": "env > env.txt"})
    anthropic.enqueue_text("ok")

    assert await run_bridge() == 0

    env = dict(
        line.split("=", 1)
        for line in (workspace / "env.txt").read_text().splitlines()
        if "=" in line
    )
    assert env["GITHUB_TOKEN"] == "ghp_granted_value"
    assert env["ANTHROPIC_BASE_URL"] == anthropic.url
    assert env["ANTHROPIC_API_KEY"] == LLM_KEY
    assert env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == "claude-haiku-5-5"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert not [name for name in env if name.startswith("IRONCLAW_")]
    assert not [name for name, value in env.items() if worker_api.token in value]
    assert Path(env["HOME"], ".claude").is_dir()
    assert settings.read_text() == original
    assert sorted(p.name for p in settings.parent.iterdir()) == ["settings.json"]


async def test_a_follow_up_resumes_the_session_and_done_completes(
    run_bridge: RunBridge, worker_api: FakeWorkerApi, anthropic: FakeAnthropic
) -> None:
    anthropic.enqueue_text("first answer", input_tokens=10, output_tokens=5)
    bridge = asyncio.create_task(run_bridge(wait_for_prompts=True, idle_timeout_s=60))
    await worker_api.wait_for(
        lambda: any("waiting for a follow-up" in m for m, _ in worker_api.statuses), timeout=60
    )
    assert not worker_api.completions

    anthropic.enqueue_text("second answer", input_tokens=20, output_tokens=6)
    worker_api.prompts.append({"content": "now the second part", "done": False})
    await worker_api.wait_for(
        lambda: sum("waiting for a follow-up" in m for m, _ in worker_api.statuses) >= 2,
        timeout=60,
    )
    resumed = anthropic.last.body["messages"]
    texts = json.dumps(resumed)
    assert "Create note.txt containing hi" in texts
    assert "first answer" in texts
    assert "now the second part" in texts
    assert resumed[-1]["role"] == "user"

    worker_api.prompts.append({"content": "", "done": True})
    assert await bridge == 0
    [completion] = worker_api.completions
    assert completion["success"] is True
    assert completion["message"] == "second answer"
    details = completion["details"]
    assert details["runs"] == 2
    assert details["ended"] == "done"
    assert details["usage"]["input_tokens"] == 30
    sessions = {r.headers.get("x-claude-code-session-id") for r in anthropic.requests}
    assert sessions == {details["session_id"]}


async def test_an_idle_job_that_waits_for_prompts_ends_after_the_timeout(
    run_bridge: RunBridge, worker_api: FakeWorkerApi, anthropic: FakeAnthropic
) -> None:
    anthropic.enqueue_text("only answer")
    started = time.monotonic()
    assert await run_bridge(wait_for_prompts=True, idle_timeout_s=1.0) == 0
    assert time.monotonic() - started < 30
    [completion] = worker_api.completions
    assert completion["success"] is True
    assert completion["details"]["ended"] == "idle_timeout"


async def test_max_turns_fails_the_job_with_that_reason(
    run_bridge: RunBridge, worker_api: FakeWorkerApi, anthropic: FakeAnthropic
) -> None:
    anthropic.enqueue_tool_use("Bash", {"command": "echo one"})
    anthropic.enqueue_tool_use("Bash", {"command": "echo two"})
    assert await run_bridge(max_turns=1) == 1
    [completion] = worker_api.completions
    assert completion["success"] is False
    assert completion["message"] == "Claude Code reached its maximum of 1 turn"
    assert completion["details"]["reason"] == "max_turns"
    assert completion["details"]["subtype"] == "error_max_turns"


async def test_an_unknown_tool_stops_the_job_before_the_cli_starts(
    run_bridge: RunBridge, worker_api: FakeWorkerApi, anthropic: FakeAnthropic
) -> None:
    assert worker_api.claude is not None
    worker_api.claude["allowed_tools"] = ["bash", "telepathy"]
    assert await run_bridge() == 2
    [completion] = worker_api.completions
    assert completion["success"] is False
    assert completion["details"]["reason"] == "invalid_config"
    assert "'telepathy'" in completion["message"]
    assert anthropic.requests == []


async def test_a_cli_that_exits_non_zero_fails_with_its_code_and_stderr(
    run_bridge: RunBridge, worker_api: FakeWorkerApi, tmp_path: Path
) -> None:
    broken = tmp_path / "claude"
    broken.write_text("#!/bin/sh\necho 'not json'\necho 'fatal: no config' >&2\nexit 3\n")
    broken.chmod(0o755)
    assert await run_bridge(claude_bin=str(broken)) == 1
    [completion] = worker_api.completions
    assert completion["success"] is False
    assert completion["message"] == "claude exited with code 3 without a result: fatal: no config"
    assert completion["details"]["reason"] == "claude_exit"
    assert completion["details"]["exit_code"] == 3
    assert completion["details"]["stderr_tail"] == "fatal: no config"
    statuses = [d["message"] for kind, d in worker_api.events if kind == "status"]
    assert "claude: not json" in statuses
    assert "claude stderr: fatal: no config" in statuses


def _failing_cli(tmp_path: Path, text: str) -> Path:
    """A stand-in CLI whose session ends in an API error, worded as ``text``."""
    cli = tmp_path / "claude-failing"
    result = {
        "type": "result",
        "subtype": "success",
        "is_error": True,
        "result": text,
        "session_id": "s-1",
        "num_turns": 1,
        "api_error_status": 429,
    }
    cli.write_text(f"#!/bin/sh\ncat > /dev/null\necho '{json.dumps(result)}'\nexit 1\n")
    cli.chmod(0o755)
    return cli


async def test_a_failure_after_a_refusal_is_budget_exceeded_by_the_orchestrator_s_code(
    run_bridge: RunBridge, worker_api: FakeWorkerApi, anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    # Words that no phrase would ever match: the code is what counts.
    worker_api.llm_refusal = "token_budget_exhausted"
    assert await run_bridge(claude_bin=str(_failing_cli(tmp_path, "API Error: 429 {}"))) == 1
    [completion] = worker_api.completions
    assert completion["success"] is False
    assert completion["details"]["reason"] == "budget_exceeded"
    assert completion["details"]["refusal"] == "token_budget_exhausted"
    assert completion["message"] == (
        "the job's LLM policy refused a model call (token_budget_exhausted): API Error: 429 {}"
    )
    # The bridge asked the orchestrator why, after the run failed.
    assert len(worker_api.accepted("job")) == 2


async def test_the_cli_s_words_never_make_a_refusal(
    run_bridge: RunBridge, worker_api: FakeWorkerApi, anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    worded = "API Error: 429 LLM token budget exhausted: 30 of 30 tokens used"
    assert await run_bridge(claude_bin=str(_failing_cli(tmp_path, worded))) == 1
    [completion] = worker_api.completions
    assert completion["details"]["reason"] == "claude_error"
    assert "refusal" not in completion["details"]


async def test_the_deadline_stops_the_cli_and_fails_the_job(
    run_bridge: RunBridge, worker_api: FakeWorkerApi, anthropic: FakeAnthropic, workspace: Path
) -> None:
    worker_api.deadline = (datetime.now(UTC) + timedelta(seconds=6)).isoformat()
    anthropic.enqueue_tool_use(
        "Bash", {"command": "python3 -c 'import time; time.sleep(41.5)'; touch late.txt"}
    )
    started = time.monotonic()
    bridge = asyncio.create_task(run_bridge(deadline_margin_s=0.0))
    await wait_for(lambda: _processes_running("time.sleep.41.5"), what="the command to run")
    assert await bridge == 1
    assert time.monotonic() - started < 25
    [completion] = worker_api.completions
    assert completion["success"] is False
    assert completion["details"]["reason"] == "deadline"
    assert not _processes_running("time.sleep.41.5")
    assert not (workspace / "late.txt").exists()


async def test_sigterm_stops_the_cli_and_what_it_started_without_a_report(
    worker_api: FakeWorkerApi,
    anthropic: FakeAnthropic,
    base_env: dict[str, str],
    workspace: Path,
    claude_cli: Path,
) -> None:
    anthropic.enqueue_tool_use(
        "Bash", {"command": "python3 -c 'import time; time.sleep(42.5)'; echo late > late.txt"}
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bridge",
            "--workspace",
            str(workspace),
            "--claude-bin",
            str(claude_cli),
        ],
        cwd=ROOT,
        env={**base_env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        await worker_api.wait_for(lambda: "tool_use" in _types(worker_api), timeout=60)
        await wait_for(lambda: _processes_running("time.sleep.42.5"), what="the command to run")
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 20)
        log = proc.stdout.read().decode() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 143, log
    assert "stopped by SIGTERM" in log
    assert worker_api.token not in log
    assert worker_api.completions == []
    assert not _processes_running("time.sleep.42.5")
    assert not (workspace / "late.txt").exists()


def _processes_running(pattern: str) -> bool:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return any(pid.strip() for pid in found.stdout.splitlines())
