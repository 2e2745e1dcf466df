"""Claude Code jobs end to end: CreateJob → a container of the real Claude Code image → the
bridge → the real ``claude`` CLI → the orchestrator's per-job Anthropic route → a fake
Anthropic upstream speaking the Messages API with SSE. The CLI really plans the tool call,
really runs Bash in /workspace, sends the result back and finishes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from ironclaw_client.api.v1 import jobs_pb2 as pb
from tests.e2e.claude.conftest import UPSTREAM_KEY
from tests.e2e.support import (
    container_env,
    create,
    events,
    history,
    wait_for_event,
    wait_removed,
    wait_terminal,
)
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.helpers import wait_for

pytestmark = pytest.mark.docker

CLAUDE = pb.JOB_MODE_CLAUDE_CODE


def _details(job: Any) -> dict[str, Any]:
    return json_format.MessageToDict(job.result.details)


def _main_calls(upstream: FakeAnthropic) -> list[Any]:
    """The upstream requests the CLI made for the conversation (with its tools)."""
    return [r for r in upstream.requests if r.path == "/v1/messages" and r.body.get("tools")]


async def test_a_claude_job_edits_the_project_and_reports_one_result(
    claude: Any, project: Callable[[str], Path], docker_engine: Any
) -> None:
    running = await claude()
    upstream = running.upstream
    workdir = project("note")
    settings = workdir / ".claude" / "settings.json"
    settings.parent.mkdir()
    settings.write_text('{"permissions": {"deny": ["WebFetch"]}}\n')
    os.chown(settings.parent, 1000, 1000)
    upstream.enqueue_tool_use(
        "Bash",
        {"command": "echo hi > note.txt", "description": "Write note.txt"},
        text="I'll write note.txt.",
        input_tokens=1200,
        output_tokens=40,
    )
    upstream.enqueue_text("Done: note.txt contains hi.", input_tokens=1300, output_tokens=12)

    job = await create(
        running.stub, "Create note.txt containing hi", mode=CLAUDE, project_dir=str(workdir)
    )
    assert job.container_name == f"ironclaw-claude-{job.job_id}"
    # Followed live from the snapshot on, as an operator's `ironclaw job watch` would.
    live = [u async for u in running.stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id))]

    final = await wait_terminal(running.stub, job.job_id)
    assert final.state == pb.JOB_STATE_STOPPED, final.result.message
    assert final.result.reason == pb.TERMINAL_REASON_COMPLETED
    assert final.result.message == "Done: note.txt contains hi."
    details = _details(final)
    assert details["num_turns"] == 2
    assert details["runs"] == 1
    assert details["usage"]["input_tokens"] == 2500
    assert details["total_cost_usd"] > 0

    # The real CLI ran Bash in the project, as the sandbox user.
    note = workdir / "note.txt"
    assert note.read_text() == "hi\n"
    assert note.stat().st_uid == 1000
    assert settings.read_text() == '{"permissions": {"deny": ["WebFetch"]}}\n'

    kinds = [u.WhichOneof("update") for u in live]
    assert kinds[0] == "snapshot"
    assert kinds[-1] == "result"
    assert kinds.count("result") == 1
    worked = [
        (e.event_type, e.data.get("tool_name"), e.data.get("content"))
        for e in events(live)
        if e.event_type != "status"
    ]
    assert worked == [
        ("message", None, "I'll write note.txt."),
        ("tool_use", "Bash", None),
        ("tool_result", "Bash", None),
        ("message", None, "Done: note.txt contains hi."),
    ]
    sequences = [u.sequence for u in live[1:]]
    assert sequences == sorted(sequences)

    # Metered on the job from the streams; every call went out with the orchestrator's key.
    assert final.usage.input_tokens == 2500
    assert final.usage.output_tokens == 52
    assert final.usage.calls >= 2
    calls = _main_calls(upstream)
    assert len(calls) >= 2
    assert all(r.body["stream"] is True for r in calls)
    assert {r.body["model"] for r in calls} == {"claude-sonnet-5-5"}
    assert {r.api_key for r in upstream.requests} == {UPSTREAM_KEY}
    await wait_removed(docker_engine, job.job_id)


async def test_a_follow_up_resumes_the_recorded_session_and_done_completes(
    claude: Any, docker_engine: Any
) -> None:
    running = await claude()
    upstream = running.upstream
    upstream.enqueue_text("first answer", input_tokens=100, output_tokens=10)
    job = await create(running.stub, "Remember the word teal", mode=CLAUDE, wait_for_prompts=True)

    manager = running.orch.manager
    await wait_for(
        lambda: manager.get_job(job.job_id).status_message == "waiting for a follow-up prompt",
        timeout=90,
        what="the first session to finish",
    )
    assert not manager.get_job(job.job_id).state.is_terminal

    # The container holds its identity only: no Anthropic setting, no key of any kind. The
    # CLI called the model with the job's LLM key, which the bridge read from GET /job.
    env = container_env(docker_engine, job.job_id)
    assert not [name for name in env if name.startswith("ANTHROPIC_")]
    assert "CLAUDE_CODE_OAUTH_TOKEN" not in env
    assert not [name for name, value in env.items() if UPSTREAM_KEY in value]
    assert {n for n in env if n.startswith("IRONCLAW_")} == {
        "IRONCLAW_JOB_ID",
        "IRONCLAW_ORCHESTRATOR_URL",
        "IRONCLAW_WORKER_TOKEN",
        "IRONCLAW_WORKSPACE",
    }
    keys = {r.headers["x-api-key"] for r in upstream.requests}
    assert keys == {UPSTREAM_KEY}
    first_session = [r.headers["x-claude-code-session-id"] for r in _main_calls(upstream)]

    upstream.enqueue_text("second answer: teal", input_tokens=200, output_tokens=8)
    await running.stub.SendPrompt(
        pb.SendPromptRequest(job_id=job.job_id, content="Which word was it?")
    )
    await wait_for(
        lambda: any("Which word was it?" in json.dumps(r.body) for r in _main_calls(upstream)),
        timeout=60,
        what="the follow-up to reach the model",
    )
    resumed = next(r for r in _main_calls(upstream) if "Which word" in json.dumps(r.body))
    conversation = json.dumps(resumed.body["messages"])
    assert "Remember the word teal" in conversation
    assert "first answer" in conversation
    assert resumed.headers["x-claude-code-session-id"] == first_session[0]

    await wait_for(
        lambda: manager.get_job(job.job_id).status_message == "waiting for a follow-up prompt",
        timeout=60,
        what="the follow-up session to finish",
    )
    await running.stub.SendPrompt(pb.SendPromptRequest(job_id=job.job_id, done=True))
    final = await wait_terminal(running.stub, job.job_id)
    assert final.state == pb.JOB_STATE_STOPPED, final.result.message
    assert final.result.reason == pb.TERMINAL_REASON_COMPLETED
    assert final.result.message == "second answer: teal"
    details = _details(final)
    assert details["session_id"] == first_session[0]
    assert details["runs"] == 2
    assert details["ended"] == "done"
    updates = await history(running.stub, job.job_id)
    assert [u.WhichOneof("update") for u in updates].count("result") == 1
    assert final.usage.input_tokens == 300


async def test_max_turns_fails_the_job(claude: Any) -> None:
    running = await claude()
    running.upstream.enqueue_tool_use("Bash", {"command": "echo one"})
    running.upstream.enqueue_tool_use("Bash", {"command": "echo two"})
    job = await create(
        running.stub, "Keep going", mode=CLAUDE, limits=pb.JobLimits(claude_max_turns=1)
    )
    final = await wait_terminal(running.stub, job.job_id, timeout=90)
    assert final.state == pb.JOB_STATE_FAILED
    assert final.result.reason == pb.TERMINAL_REASON_FAILED
    assert final.result.message == "Claude Code reached its maximum of 1 turn"
    assert _details(final)["reason"] == "max_turns"


async def test_a_budget_exhausted_mid_session_ends_the_job_budget_exceeded(claude: Any) -> None:
    running = await claude()
    upstream = running.upstream
    for step in ("one", "two", "three"):
        upstream.enqueue_tool_use(
            "Bash", {"command": f"echo {step} >> steps.txt"}, input_tokens=8000, output_tokens=100
        )
    # Each of the CLI's requests (about 15 KB) holds its bytes, the ledger's overhead and some
    # output on the budget: after two calls of 8,100 tokens the third cannot fit.
    budget = 28_000
    limits = pb.JobLimits(llm_token_budget=budget)
    job = await create(running.stub, "Count", mode=CLAUDE, limits=limits)
    final = await wait_terminal(running.stub, job.job_id, timeout=90)
    assert final.state == pb.JOB_STATE_FAILED
    assert final.result.reason == pb.TERMINAL_REASON_BUDGET_EXCEEDED
    # Typed from the orchestrator's refusal code; the CLI's own words stay for people.
    assert final.result.message.startswith(
        "the job's LLM policy refused a model call (token_budget_exhausted)"
    )
    assert f"LLM token budget exhausted: 16200 of {budget} tokens used" in final.result.message
    assert _details(final)["reason"] == "budget_exceeded"
    assert _details(final)["refusal"] == "token_budget_exhausted"
    assert final.usage.input_tokens + final.usage.output_tokens == 16200
    worked = [
        (e.event_type, e.data.get("tool_name"))
        for e in events(await history(running.stub, job.job_id))
        if e.event_type in ("tool_use", "tool_result")
    ]
    assert worked == [("tool_use", "Bash"), ("tool_result", "Bash")] * 2
    assert upstream.pending == 1  # the third answer was never asked for


async def test_stop_job_stops_the_cli_cleanly(claude: Any, docker_engine: Any) -> None:
    running = await claude(STOP_GRACE_S="10")
    running.upstream.enqueue_tool_use(
        "Bash", {"command": "python3 -c 'import time; time.sleep(120)'; echo late > late.txt"}
    )
    job = await create(running.stub, "Wait a long time", mode=CLAUDE)
    await wait_for_event(running.stub, job.job_id, "tool_use", "Bash", timeout=90)

    def command_running() -> bool:
        top = docker_engine.api.top(job.container_name)
        return any("time.sleep(120)" in " ".join(row) for row in top.get("Processes") or [])

    await wait_for(command_running, timeout=30, what="the Bash command to run")
    stopped = (await running.stub.StopJob(pb.StopJobRequest(job_id=job.job_id))).job
    assert stopped.state == pb.JOB_STATE_STOPPED
    assert stopped.result.reason == pb.TERMINAL_REASON_STOPPED_BY_OPERATOR
    await wait_removed(docker_engine, job.job_id)
    final = await wait_terminal(running.stub, job.job_id)
    # The bridge handled SIGTERM itself (well within the grace period) and reported nothing.
    assert "stopped by SIGTERM" in final.log_tail, final.log_tail
    assert "Traceback" not in final.log_tail
