"""Each worker API route's happy path and its client errors, through real HTTP, checked against
what the job manager recorded."""

from __future__ import annotations

import secrets
import typing
from datetime import datetime
from typing import Any

import pytest

from ironclaw_contract.worker_api import JobInfo
from orchestrator.domain.jobs import JobState, TerminalReason, UpdateKind
from orchestrator.tokens import TOKEN_PREFIX
from tests.helpers import wait_for

pytestmark = pytest.mark.docker

TASK = "sleep while the worker API tests poke at it"
EVENTS = [
    ("message", {"role": "assistant", "content": "I will run the tests."}),
    ("tool_use", {"tool_name": "shell", "tool_use_id": "call_1", "input": {"command": "ls"}}),
    (
        "tool_result",
        {"tool_name": "shell", "tool_use_id": "call_1", "output": "a.txt", "is_error": False},
    ),
    ("reasoning", {"text": "The listing shows one file."}),
    ("status", {"message": "Running tests (iteration 5)", "iteration": 5}),
]


# -- GET /job ------------------------------------------------------------------------------


async def test_get_job_returns_the_spec_fields_and_credential_env(
    api: Any, shared_orch: Any, jobs: Any
) -> None:
    github, npm = "ghp_" + secrets.token_hex(18), "npm_" + secrets.token_hex(18)
    job = await jobs.create(shared_orch, TASK, grants={"github": github, "npm": npm})

    reply = await api.call(job, "GET", "job")

    assert reply.status == 200, reply.text
    assert reply.content_type == "application/json"
    body = reply.body
    snapshot = shared_orch.manager.get_job(job.job_id)
    assert body["job_id"] == job.job_id
    assert body["task_description"] == TASK
    assert body["project_dir"] == "/workspace"
    assert body["mode"] == "worker"
    assert body["max_iterations"] == snapshot.limits.max_iterations == 50
    assert datetime.fromisoformat(body["deadline"]) == snapshot.deadline
    assert body["credential_env"] == {"github": "GITHUB_TOKEN", "npm": "NPM_TOKEN"}
    # Everything the container is not told at its start (ironclaw_contract.worker_api.JobInfo).
    assert set(body) == set(typing.get_type_hints(JobInfo))
    assert body["limits"]["timeout_seconds"] == snapshot.limits.timeout_seconds
    assert body["limits"]["llm_call_budget"] == snapshot.limits.llm_call_budget
    assert (body["wait_for_prompts"], body["claude"], body["llm_refusal"]) == (False, None, None)
    assert (body["mcp_servers"], body["wasm_tools"]) == ([], [])
    # The job description names the grants; only /credentials hands out their values.
    api.assert_never_returned(github, npm, job.token)


# -- GET /credentials ----------------------------------------------------------------------


async def test_credentials_are_empty_without_grants(api: Any, shared_orch: Any, jobs: Any) -> None:
    job = await jobs.create(shared_orch)
    reply = await api.call(job, "GET", "credentials")
    assert (reply.status, reply.body) == (200, {})
    assert (await api.call(job, "GET", "job")).body["credential_env"] == {}


async def test_credentials_go_to_their_own_job_only(api: Any, shared_orch: Any, jobs: Any) -> None:
    github, npm = "ghp_" + secrets.token_hex(18), "npm_" + secrets.token_hex(18)
    owner = await jobs.create(shared_orch, grants={"github": github, "npm": npm})
    other = await jobs.create(shared_orch)

    mine = await api.call(owner, "GET", "credentials")
    assert (mine.status, mine.body) == (200, {"github": github, "npm": npm})

    stolen = await api.call(owner, "GET", "credentials", token=other.token)
    stolen.expect_error(401, "invalid_token")
    own_of_other = await api.call(other, "GET", "credentials")
    assert (own_of_other.status, own_of_other.body) == (200, {})
    for reply in (stolen, own_of_other):
        assert github not in reply.text
        assert npm not in reply.text

    # Once the job ends, its grants are gone with its token.
    await shared_orch.manager.stop_job(owner.job_id)
    after = await api.call(owner, "GET", "credentials")
    after.expect_error(401, "invalid_token")
    assert github not in after.text


# -- POST /status --------------------------------------------------------------------------


async def test_status_is_visible_on_the_job(api: Any, shared_orch: Any, jobs: Any) -> None:
    job = await jobs.create(shared_orch, ready=True)

    reply = await api.call(
        job, "POST", "status", {"message": "Running tests (iteration 5)", "iteration": 5}
    )

    assert (reply.status, reply.body) == (200, {"status": "ok"})
    snapshot = shared_orch.manager.get_job(job.job_id)
    assert (snapshot.status_message, snapshot.iteration) == ("Running tests (iteration 5)", 5)

    # Without an iteration the last one is kept; "state" is accepted as the spec allows.
    reply = await api.call(job, "POST", "status", {"message": "Linting", "state": "working"})
    assert reply.status == 200, reply.text
    snapshot = shared_orch.manager.get_job(job.job_id)
    assert (snapshot.status_message, snapshot.iteration) == ("Linting", 5)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"iteration": 1}, "message"),
        ({"message": "x", "iteration": -1}, "iteration"),
        ({"message": "x", "iteration": "five"}, "iteration"),
        ({"message": 42}, "message"),
        ({"message": "x" * 10_001}, "message"),
        ({"message": "x", "colour": "red"}, "colour"),
    ],
    ids=["missing", "negative", "string-iteration", "number-message", "too-long", "extra"],
)
async def test_status_that_breaks_the_schema_is_422_and_not_recorded(
    api: Any, shared_orch: Any, jobs: Any, body: dict[str, Any], field: str
) -> None:
    job = await jobs.create(shared_orch, ready=True)
    reply = await api.call(job, "POST", "status", body)
    message = reply.expect_error(422, "invalid_body")
    assert field in message
    assert shared_orch.manager.get_job(job.job_id).status_message == "test agent sleeping"


# -- POST /event ---------------------------------------------------------------------------


async def test_each_event_type_is_recorded_in_order(
    api: Any, shared_orch: Any, jobs: Any, updates_of: Any
) -> None:
    job = await jobs.create(shared_orch)
    after = shared_orch.manager.get_job(job.job_id).last_sequence

    for event_type, data in EVENTS:
        reply = await api.call(job, "POST", "event", {"event_type": event_type, "data": data})
        assert (reply.status, reply.body) == (200, {"status": "ok"}), (event_type, reply.text)

    recorded = [
        u.payload
        for u in await updates_of(shared_orch, job.job_id, after)
        if u.kind is UpdateKind.EVENT
    ]
    assert recorded == [{"event_type": t, "data": d} for t, d in EVENTS]


@pytest.mark.parametrize(
    "body",
    [
        {"event_type": "thought", "data": {"text": "hmm"}},
        {"event_type": "MESSAGE", "data": {"role": "user", "content": "x"}},
        {"event_type": "message"},
        {"event_type": "message", "data": "not an object"},
        {"data": {"text": "no type"}},
    ],
    ids=["unknown-type", "wrong-case", "no-data", "data-not-object", "no-type"],
)
async def test_bad_events_are_422_and_not_recorded(
    api: Any, shared_orch: Any, jobs: Any, updates_of: Any, body: dict[str, Any]
) -> None:
    job = await jobs.create(shared_orch)
    after = shared_orch.manager.get_job(job.job_id).last_sequence
    reply = await api.call(job, "POST", "event", body)
    reply.expect_error(422, "invalid_body")
    events = [
        u for u in await updates_of(shared_orch, job.job_id, after) if u.kind is UpdateKind.EVENT
    ]
    assert events == []


async def test_a_huge_event_text_is_truncated_with_a_marker(
    api: Any, shared_orch: Any, jobs: Any, updates_of: Any
) -> None:
    job = await jobs.create(shared_orch)
    after = shared_orch.manager.get_job(job.job_id).last_sequence
    huge = "y" * 100_000  # two of them fit in the event route's 256 KiB
    reply = await api.call(
        job,
        "POST",
        "event",
        {
            "event_type": "tool_result",
            "data": {"tool_name": "shell", "output": huge, "is_error": False, "n": [huge]},
        },
    )
    assert reply.status == 200, reply.text

    (event,) = [
        u for u in await updates_of(shared_orch, job.job_id, after) if u.kind is UpdateKind.EVENT
    ]
    data = event.payload["data"]
    for stored in (data["output"], data["n"][0]):
        assert stored.startswith("y" * 1000)
        assert stored.endswith("…[truncated 84000 chars]")
        assert len(stored) < 17_000
    assert data["tool_name"] == "shell"
    assert data["is_error"] is False


# -- GET /prompt ---------------------------------------------------------------------------


async def test_prompt_is_204_when_empty_then_follow_ups_come_in_order(
    api: Any, shared_orch: Any, jobs: Any
) -> None:
    job = await jobs.create(shared_orch)

    empty = await api.call(job, "GET", "prompt")
    assert (empty.status, empty.text) == (204, "")

    shared_orch.manager.send_prompt(job.job_id, "Now add a README.", done=False)
    shared_orch.manager.send_prompt(job.job_id, "And a licence.", done=False)
    shared_orch.manager.send_prompt(job.job_id, "", done=True)
    got = [await api.call(job, "GET", "prompt") for _ in range(3)]
    assert [(r.status, r.body) for r in got] == [
        (200, {"content": "Now add a README.", "done": False}),
        (200, {"content": "And a licence.", "done": False}),
        (200, {"content": "", "done": True}),
    ]
    again = await api.call(job, "GET", "prompt")
    assert again.status == 204


# -- POST /complete ------------------------------------------------------------------------


async def test_complete_success_stops_the_job_and_kills_the_token(
    api: Any, shared_orch: Any, jobs: Any
) -> None:
    job = await jobs.create(shared_orch, ready=True)

    reply = await api.call(
        job,
        "POST",
        "complete",
        {"success": True, "message": "All tests passed. Deployed to staging.", "iterations": 3},
    )

    assert (reply.status, reply.body) == (200, {"status": "ok"})
    done = shared_orch.manager.get_job(job.job_id)
    assert done.state is JobState.STOPPED
    assert done.result.reason is TerminalReason.COMPLETED
    assert done.result.success is True
    assert done.result.message == "All tests passed. Deployed to staging."
    assert done.result.iterations == 3
    assert not shared_orch.manager.tokens.is_live(job.job_id)

    # The token died with the answer: a second report is refused and changes nothing.
    second = await api.call(job, "POST", "complete", {"success": False, "message": "oops"})
    second.expect_error(401, "invalid_token")
    for route in ("job", "credentials", "prompt"):
        (await api.call(job, "GET", route)).expect_error(401, "invalid_token")
    assert shared_orch.manager.get_job(job.job_id).result == done.result
    # The container goes after the answer was sent.
    await wait_for(
        lambda: shared_orch.manager.container_id(job.job_id) is None, what="container removal"
    )
    api.assert_never_returned(job.token)


async def test_complete_failure_fails_the_job(api: Any, shared_orch: Any, jobs: Any) -> None:
    job = await jobs.create(shared_orch)
    reply = await api.call(job, "POST", "complete", {"success": False, "message": "build broke"})
    assert reply.status == 200, reply.text
    done = shared_orch.manager.get_job(job.job_id)
    assert done.state is JobState.FAILED
    assert done.result.reason is TerminalReason.FAILED
    assert (done.result.success, done.result.message) == (False, "build broke")


async def test_complete_keeps_the_details(api: Any, shared_orch: Any, jobs: Any) -> None:
    job = await jobs.create(shared_orch)
    details = {
        "session_id": "5f0c1d7e-claude-session",
        "num_turns": 7,
        "duration_ms": 12345,
        "total_cost_usd": 0.0123,
        "usage": {"input_tokens": 1200, "output_tokens": 340},
    }
    reply = await api.call(
        job, "POST", "complete", {"success": True, "message": "done", "details": details}
    )
    assert reply.status == 200, reply.text
    result = shared_orch.manager.get_job(job.job_id).result
    assert result.reason is TerminalReason.COMPLETED
    assert result.details == details


async def test_complete_with_budget_exceeded_reason_is_typed(
    api: Any, shared_orch: Any, jobs: Any
) -> None:
    job = await jobs.create(shared_orch)
    reply = await api.call(
        job,
        "POST",
        "complete",
        {
            "success": False,
            "message": "LLM budget used up",
            "details": {"reason": "budget_exceeded"},
        },
    )
    assert reply.status == 200, reply.text
    done = shared_orch.manager.get_job(job.job_id)
    assert done.state is JobState.FAILED
    assert done.result.reason is TerminalReason.BUDGET_EXCEEDED


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"message": "no success flag"}, "success"),
        ({"success": "maybe", "message": "x"}, "success"),
        ({"success": True, "iterations": -2}, "iterations"),
        ({"success": True, "details": ["not", "an", "object"]}, "details"),
        ({"success": True, "details": {"blob": "z" * 70_000}}, "details"),
        ({"success": True, "verdict": "extra field"}, "verdict"),
    ],
    ids=[
        "no-success",
        "success-not-bool",
        "negative-iterations",
        "details-list",
        "details-huge",
        "extra",
    ],
)
async def test_complete_that_breaks_the_schema_is_422_and_the_job_goes_on(
    api: Any, shared_orch: Any, jobs: Any, body: dict[str, Any], field: str
) -> None:
    job = await jobs.create(shared_orch)
    reply = await api.call(job, "POST", "complete", body)
    assert field in reply.expect_error(422, "invalid_body")
    snapshot = shared_orch.manager.get_job(job.job_id)
    assert snapshot.state is JobState.RUNNING
    assert snapshot.result is None
    assert shared_orch.manager.tokens.is_live(job.job_id)


async def test_tokens_have_the_spec_prefix(shared_orch: Any, jobs: Any) -> None:
    job = await jobs.create(shared_orch)
    assert job.token.startswith(TOKEN_PREFIX)
    assert len(job.token) > 40
