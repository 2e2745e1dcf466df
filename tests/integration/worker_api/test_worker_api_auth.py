"""Who may call the worker API: every ``/worker/{id}/...`` route against every way a bearer
token can be wrong, through real HTTP against an orchestrator on the Docker engine."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from orchestrator.domain.jobs import CreateJobRequest, CredentialGrant, JobState
from orchestrator.secrets import Secret

pytestmark = pytest.mark.docker

LLM_BODY = {"messages": [{"role": "user", "content": "What is 2+2?"}]}
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "job", None),
    ("GET", "credentials", None),
    ("POST", "status", {"message": "Running tests", "iteration": 1}),
    ("POST", "event", {"event_type": "reasoning", "data": {"text": "thinking"}}),
    ("GET", "prompt", None),
    ("POST", "complete", {"success": True, "message": "All tests passed."}),
    ("POST", "llm/complete", LLM_BODY),
    ("POST", "llm/complete_with_tools", {**LLM_BODY, "tools": [{"name": "shell"}]}),
]
ROUTE_IDS = [f"{method} {route}" for method, route, _ in ROUTES]


@dataclass(frozen=True)
class Credentials:
    job_id: str
    token: str


@dataclass(frozen=True)
class AuthJobs:
    """Jobs on the module orchestrator: ``a`` (the target), ``b`` (another live job) and
    ``revoked`` (stopped, so its token is dead)."""

    a: Credentials
    b: Credentials
    revoked: Credentials


@pytest.fixture(scope="module")
async def auth_jobs(shared_orch: Any) -> AsyncIterator[AuthJobs]:
    grant = CredentialGrant("github", "api_token", Secret("ghp_" + secrets.token_hex(16)), "")
    made = [
        await shared_orch.manager.create_job(CreateJobRequest(task="sleep", credentials=(grant,)))
        for _ in range(3)
    ]
    await shared_orch.manager.stop_job(made[2].job.job_id)
    yield AuthJobs(*(Credentials(m.job.job_id, m.token) for m in made))
    for created in made:
        await shared_orch.manager.stop_job(created.job.job_id)


@pytest.mark.parametrize(("method", "route", "body"), ROUTES, ids=ROUTE_IDS)
async def test_every_bad_credential_is_401_invalid_token(
    api: Any,
    shared_orch: Any,
    auth_jobs: AuthJobs,
    openai_fake: Any,
    method: str,
    route: str,
    body: dict[str, Any] | None,
) -> None:
    a, b, revoked = auth_jobs.a, auth_jobs.b, auth_jobs.revoked
    before = shared_orch.manager.get_job(a.job_id)
    provider_calls = len(openai_fake.requests)
    unknown_job = str(uuid.uuid4())
    cases: dict[str, tuple[str, dict[str, str]]] = {
        "no header": (a.job_id, {}),
        "scheme only": (a.job_id, {"Authorization": "Bearer"}),
        "basic auth": (a.job_id, {"Authorization": "Basic x"}),
        "basic with the token": (a.job_id, {"Authorization": f"Basic {a.token}"}),
        "token without irc_ prefix": (a.job_id, {"Authorization": f"Bearer {a.token[4:]}"}),
        "token as x-api-key": (a.job_id, {"x-api-key": a.token}),
        "wrong token": (a.job_id, {"Authorization": f"Bearer irc_{secrets.token_urlsafe(32)}"}),
        "truncated token": (a.job_id, {"Authorization": f"Bearer {a.token[:-1]}"}),
        "another job's token": (a.job_id, {"Authorization": f"Bearer {b.token}"}),
        "revoked token": (revoked.job_id, {"Authorization": f"Bearer {revoked.token}"}),
        "unknown job id": (unknown_job, {"Authorization": f"Bearer {a.token}"}),
    }
    for case, (job_id, headers) in cases.items():
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None:
            kwargs["json_body"] = body
        reply = await api.request(method, f"/worker/{job_id}/{route}", **kwargs)
        assert reply.status == 401, (case, reply.status, reply.text)
        assert reply.body == {"error": "invalid_token", "message": "Invalid bearer token"}, case

    # Nothing the refused calls asked for happened.
    after = shared_orch.manager.get_job(a.job_id)
    assert after.state is JobState.RUNNING
    assert (after.status_message, after.usage, after.result) == (
        before.status_message,
        before.usage,
        before.result,
    )
    assert len(openai_fake.requests) == provider_calls
    api.assert_never_returned(a.token, b.token, revoked.token)


@pytest.mark.parametrize(("method", "route", "body"), ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize("bad_id", ["not-a-uuid", "1234", "x" * 300, "%00"])
async def test_a_job_id_that_is_not_a_uuid_is_400(
    api: Any,
    auth_jobs: AuthJobs,
    method: str,
    route: str,
    body: dict[str, Any] | None,
    bad_id: str,
) -> None:
    kwargs: dict[str, Any] = {"token": auth_jobs.a.token}
    if body is not None:
        kwargs["json_body"] = body
    reply = await api.request(method, f"/worker/{bad_id}/{route}", **kwargs)
    message = reply.expect_error(400, "invalid_request")
    assert "not a UUID" in message
    assert len(message) < 200  # the id is quoted, cut short
    # Without a token the id is still checked first: still 400, not 401.
    no_token = await api.request(method, f"/worker/{bad_id}/{route}")
    no_token.expect_error(400, "invalid_request")
    api.assert_never_returned(auth_jobs.a.token)


async def test_the_own_token_works_with_any_spelling_of_the_uuid(
    api: Any, auth_jobs: AuthJobs
) -> None:
    a = auth_jobs.a
    for spelling in (a.job_id.upper(), a.job_id.replace("-", "")):
        reply = await api.request("GET", f"/worker/{spelling}/job", token=a.token)
        assert reply.status == 200, reply.text
        assert reply.body["job_id"] == a.job_id


async def test_revoked_and_foreign_tokens_cannot_read_credentials(
    api: Any, auth_jobs: AuthJobs
) -> None:
    a, b, revoked = auth_jobs.a, auth_jobs.b, auth_jobs.revoked
    own = await api.call(a, "GET", "credentials")
    assert own.status == 200
    assert set(own.body) == {"github"}
    assert own.body["github"].startswith("ghp_")
    for job, token in ((a, b.token), (revoked, revoked.token), (revoked, a.token)):
        reply = await api.call(job, "GET", "credentials", token=token)
        reply.expect_error(401, "invalid_token")
        assert own.body["github"] not in reply.text


async def test_anthropic_passthrough_route_exists_and_requires_the_token(
    api: Any, auth_jobs: AuthJobs
) -> None:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": LLM_BODY["messages"]}
    # The route speaks the Anthropic protocol, so its errors are Anthropic's documents.
    reply = await api.request(
        "POST", f"/worker/{auth_jobs.a.job_id}/anthropic/v1/messages", json_body=body
    )
    assert reply.status == 401
    assert reply.body["error"]["type"] == "authentication_error"
    foreign = await api.request(
        "POST",
        f"/worker/{auth_jobs.a.job_id}/anthropic/v1/messages",
        json_body=body,
        headers={"x-api-key": auth_jobs.b.token},
    )
    assert foreign.status == 401
    assert foreign.body["error"]["type"] == "authentication_error"
    assert auth_jobs.b.token not in foreign.text
