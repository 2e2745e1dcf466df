"""Agent jobs through the real gRPC and HTTP doors on the in-memory engine: CreateJob names a
catalogue entry (an unknown one is INVALID_ARGUMENT listing the known names), GET /job carries
the entry and the route of the API it speaks, the job's LLM key opens that route (metered on
the job, the real SDKs on both sides of the fake upstreams) and /complete, and nothing else of
the job; a worker job's LLM key still cannot complete it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from ironclaw_client import AsyncClient, InvalidArgument, JobMode
from ironclaw_contract.job_keys import llm_key_for
from orchestrator.domain.jobs import CreateJobRequest, JobState, LlmUsage, TerminalReason
from orchestrator.domain.jobs import JobMode as DomainMode
from orchestrator.errors import FailedPrecondition
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.fakes.fake_openai import FakeOpenAI
from tests.helpers import wait_for
from tests.integration.worker_api.conftest import Job, WorkerHttp

ANTHROPIC_KEY = "sk-ant-upstream-" + "w" * 24
OPENAI_KEY = "sk-openai-upstream-" + "w" * 24


def _entry(api: str, model: str, key_env: str, base_url_env: str) -> dict[str, Any]:
    return {
        "image": "ironclaw-agent-some:in-memory",
        "command": ["some-agent", "--model", "{model}", "{task}"],
        "api": api,
        "key_env": key_env,
        "base_url_env": base_url_env,
        "model": model,
    }


@pytest.fixture
async def anthropic_fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key=ANTHROPIC_KEY) as fake:
        yield fake


@pytest.fixture
async def openai_upstream() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key=OPENAI_KEY) as fake:
        yield fake


@pytest.fixture
async def orch(
    start_orch: Any,
    make_settings: Any,
    base_dir: Path,
    anthropic_fake: FakeAnthropic,
    openai_upstream: FakeOpenAI,
) -> Any:
    agents = {
        "claudish": _entry("anthropic", "claude-sonnet-5-5", "ANTHROPIC_API_KEY", "X_BASE"),
        "gptish": _entry("openai", "gpt-4o", "OPENAI_API_KEY", "OPENAI_BASE_URL"),
        "offlist": _entry("openai", "gpt-9", "OPENAI_API_KEY", "OPENAI_BASE_URL"),
    }
    (base_dir / "agents.json").write_text(json.dumps({"agents": agents}))
    return await start_orch(
        make_settings(
            ANTHROPIC_API_KEY=ANTHROPIC_KEY,
            ANTHROPIC_BASE_URL=anthropic_fake.url,
            LLM_PROVIDER="openai",
            LLM_BASE_URL=openai_upstream.base_url,
            OPENAI_API_KEY=OPENAI_KEY,
            LLM_MODEL="gpt-4o-mini",
            LLM_MODEL_ALLOWLIST="gpt-4o",
            LLM_MAX_RETRIES="0",
        )
    )


@pytest.fixture
def http(api_for: Callable[[Any], WorkerHttp], orch: Any) -> WorkerHttp:
    return api_for(orch)


async def _agent_job(orch: Any, agent: str) -> Job:
    created = await orch.manager.create_job(
        CreateJobRequest(task="write hello.txt", mode=DomainMode.AGENT, agent=agent)
    )
    assert created.token is not None
    return Job(created.job.job_id, created.token)


async def test_create_job_names_an_agent_over_grpc_and_an_unknown_one_is_refused(
    orch: Any,
) -> None:
    async with AsyncClient(f"127.0.0.1:{orch.grpc_port}") as client:
        created = await client.create_job("write hello.txt", agent="claudish")
        job = created.job
        assert (job.mode, job.agent) == (JobMode.AGENT, "claudish")
        assert job.limits.claude_model == "claude-sonnet-5-5"
        assert job.container_name == f"ironclaw-agent-{job.job_id}"
        assert (await client.get_job(job.job_id)).agent == "claudish"
        with pytest.raises(InvalidArgument) as refused:
            await client.create_job("x", agent="aider")
        assert refused.value.code == "INVALID_ARGUMENT"
        assert "agent 'aider' is not in the catalogue (known: claudish, gptish, offlist)" in str(
            refused.value
        )
        await client.stop_job(job.job_id)


async def test_an_openai_agent_whose_model_the_route_refuses_is_refused_at_creation(
    orch: Any,
) -> None:
    with pytest.raises(
        FailedPrecondition, match=r"would use model 'gpt-9'.*allowed: gpt-4o-mini, gpt-4o"
    ):
        await _agent_job(orch, "offlist")


async def test_get_job_carries_the_entry_and_its_route(orch: Any, http: WorkerHttp) -> None:
    job = await _agent_job(orch, "claudish")
    reply = await http.call(job, "GET", "job")
    assert reply.status == 200, reply.text
    agent = reply.body["agent"]
    assert reply.body["mode"] == "agent"
    assert agent["base_url"] == f"{orch.manager.orchestrator_url}/worker/{job.job_id}/anthropic"
    assert agent["command"] == ["some-agent", "--model", "{model}", "{task}"]
    assert (agent["key_env"], agent["base_url_env"]) == (["ANTHROPIC_API_KEY"], ["X_BASE"])
    assert "image" not in agent  # the container's business, not the agent's
    assert ANTHROPIC_KEY not in reply.text
    assert OPENAI_KEY not in reply.text


async def test_the_llm_key_opens_the_anthropic_route_of_an_anthropic_agent(
    orch: Any, http: WorkerHttp, anthropic_fake: FakeAnthropic
) -> None:
    job = await _agent_job(orch, "claudish")
    key = llm_key_for(job.token, job.job_id)
    anthropic_fake.enqueue_text("WRITE hello.txt hi", input_tokens=13, output_tokens=6)
    base = f"{http.base_url}/worker/{job.job_id}/anthropic"
    async with anthropic.AsyncAnthropic(api_key=key, base_url=base, max_retries=0) as sdk:
        async with sdk.messages.stream(
            model="claude-sonnet-5-5",
            max_tokens=64,
            messages=[{"role": "user", "content": "go"}],
        ) as stream:
            text = await stream.get_final_text()
        assert text == "WRITE hello.txt hi"
        with pytest.raises(anthropic.PermissionDeniedError) as refused:
            await sdk.messages.create(
                model="claude-opus-9-9", max_tokens=8, messages=[{"role": "user", "content": "x"}]
            )
    # The provider's error, as the provider's SDK reads it; nothing of it went upstream.
    assert refused.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
    assert len(anthropic_fake.requests) == 1
    assert anthropic_fake.requests[0].api_key == ANTHROPIC_KEY
    assert orch.manager.get_job(job.job_id).usage == LlmUsage(1, 13, 6)


async def test_the_llm_key_opens_the_openai_route_of_an_openai_agent(
    orch: Any, http: WorkerHttp, openai_upstream: FakeOpenAI
) -> None:
    job = await _agent_job(orch, "gptish")
    key = llm_key_for(job.token, job.job_id)
    info = (await http.call(job, "GET", "job")).body["agent"]
    assert info["base_url"] == f"{orch.manager.orchestrator_url}/worker/{job.job_id}/openai/v1"
    openai_upstream.enqueue_text("done", prompt_tokens=17, completion_tokens=3)
    base = f"{http.base_url}/worker/{job.job_id}/openai/v1"
    async with openai.AsyncOpenAI(api_key=key, base_url=base, max_retries=0) as sdk:
        answer = await sdk.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "go"}]
        )
    assert answer.choices[0].message.content == "done"
    assert openai_upstream.requests[-1].headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert orch.manager.get_job(job.job_id).usage == LlmUsage(1, 17, 3)


async def test_an_agent_s_key_may_complete_its_job_and_nothing_else(
    orch: Any, http: WorkerHttp, jobs: Any
) -> None:
    job = await _agent_job(orch, "claudish")
    key = llm_key_for(job.token, job.job_id)
    for method, route in (("GET", "job"), ("GET", "credentials"), ("POST", "status")):
        body = {"message": "forged", "iteration": 1} if method == "POST" else None
        reply = await http.call(job, method, route, body, token=key)
        assert reply.status == 401, (route, reply.text)
    # Another job's key, or a worker job's own, completes nothing.
    other = await _agent_job(orch, "claudish")
    reply = await http.call(
        job,
        "POST",
        "complete",
        {"success": True, "message": "x"},
        token=llm_key_for(other.token, other.job_id),
    )
    assert reply.status == 401
    worker = await jobs.create(orch)
    worker_key = llm_key_for(worker.token, worker.job_id)
    reply = await http.call(
        worker, "POST", "complete", {"success": True, "message": "x"}, token=worker_key
    )
    assert reply.status == 401
    assert orch.manager.get_job(worker.job_id).state is not JobState.STOPPED

    reply = await http.call(
        job, "POST", "complete", {"success": True, "message": "reported by the agent"}, token=key
    )
    assert reply.status == 200, reply.text
    await wait_for(lambda: orch.manager.get_job(job.job_id).state.is_terminal, what="the end")
    result = orch.manager.get_job(job.job_id).result
    assert result is not None
    assert (result.reason, result.message) == (TerminalReason.COMPLETED, "reported by the agent")
    await orch.manager.stop_job(other.job_id)
