"""A real third-party agent from PyPI, mini-swe-agent, as deploy/agents/agents.json runs it: its
image built offline on the worker image, the job's container its only place, the fake upstreams
speaking the real Anthropic and OpenAI protocols behind the job's own routes. It edits a file in
/workspace with its bash tool and the job completes; the container and the agent hold the
job's key only, and the job's usage is what the upstream served, to the token."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.domain.jobs import LlmUsage, TerminalReason
from tests.conftest import ROOT
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.agents.conftest import (
    UPSTREAM_KEY,
    mini_entry,
    run_agent_job,
    wait_until_ended,
)

pytestmark = pytest.mark.docker

OPENAI_KEY = "sk-openai-upstream-" + "m" * 24
EDIT = "printf 'edited by mini-swe-agent\\n' > hello.txt && cat hello.txt"
SUBMIT = "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"


@pytest.fixture
async def openai_upstream() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key=OPENAI_KEY) as fake:
        yield fake


def _no_real_key_in(inspected: Any, *keys: str) -> None:
    text = json.dumps(inspected)
    for key in keys:
        assert key not in text
    names = [entry.split("=", 1)[0] for entry in inspected["Config"]["Env"]]
    assert not [name for name in names if name.startswith(("ANTHROPIC_", "OPENAI_"))]


async def test_mini_swe_agent_over_anthropic_edits_the_workspace(
    agents_orch: Callable[..., Any],
    mini_image: str,
    upstream: FakeAnthropic,
    project: Callable[[str], Path],
    docker_engine: Any,
) -> None:
    orch = await agents_orch({"mini-swe-agent": mini_entry()}, WORKER_MEMORY_MB="1024")
    workdir = project("mini")
    upstream.enqueue_tool_use(
        "bash", {"command": EDIT}, text="Writing the file.", input_tokens=1200, output_tokens=40
    )
    upstream.enqueue_tool_use(
        "bash", {"command": SUBMIT}, text="Done.", input_tokens=1300, output_tokens=12
    )
    job_id, _ = await run_agent_job(orch, "mini-swe-agent", "Write hello.txt", workdir)
    _no_real_key_in(docker_engine.api.inspect_container(f"ironclaw-agent-{job_id}"), UPSTREAM_KEY)
    final = await wait_until_ended(orch, job_id, timeout=240)
    assert final.result is not None
    assert final.result.reason is TerminalReason.COMPLETED, (final.result.message, final.log_tail)
    assert (workdir / "hello.txt").read_text() == "edited by mini-swe-agent\n"
    assert len(upstream.requests) == 2
    assert {r.api_key for r in upstream.requests} == {UPSTREAM_KEY}
    assert {r.body["model"] for r in upstream.requests} == {"claude-sonnet-5-5"}
    # mini-swe-agent sent the task and its bash tool, as it would to Anthropic.
    first = upstream.requests[0].body
    assert "Write hello.txt" in json.dumps(first["messages"])
    assert [tool["name"] for tool in first["tools"]] == ["bash"]
    assert final.usage == LlmUsage(calls=2, input_tokens=2500, output_tokens=52)


async def test_mini_swe_agent_over_the_openai_route_edits_the_workspace(
    agents_orch: Callable[..., Any],
    mini_image: str,
    openai_upstream: FakeOpenAI,
    project: Callable[[str], Path],
    docker_engine: Any,
) -> None:
    catalogue = json.loads((ROOT / "deploy" / "agents" / "agents.json").read_text())
    entry = {**catalogue["agents"]["mini-swe-agent-openai"], "image": mini_image}
    orch = await agents_orch(
        {"mini-openai": entry},
        WORKER_MEMORY_MB="1024",
        LLM_PROVIDER="openai",
        LLM_BASE_URL=openai_upstream.base_url,
        OPENAI_API_KEY=OPENAI_KEY,
        LLM_MODEL="gpt-4o-mini",
        LLM_MAX_RETRIES="0",
    )
    workdir = project("mini-openai")
    openai_upstream.enqueue_tool_calls(
        [{"name": "bash", "arguments": {"command": EDIT}}],
        content="Writing the file.",
        prompt_tokens=900,
        completion_tokens=33,
    )
    openai_upstream.enqueue_tool_calls(
        [{"name": "bash", "arguments": {"command": SUBMIT}}],
        content="Done.",
        prompt_tokens=1000,
        completion_tokens=7,
    )
    job_id, _ = await run_agent_job(orch, "mini-openai", "Write hello.txt", workdir)
    _no_real_key_in(docker_engine.api.inspect_container(f"ironclaw-agent-{job_id}"), OPENAI_KEY)
    final = await wait_until_ended(orch, job_id, timeout=240)
    assert final.result is not None
    assert final.result.reason is TerminalReason.COMPLETED, (final.result.message, final.log_tail)
    assert (workdir / "hello.txt").read_text() == "edited by mini-swe-agent\n"
    assert len(openai_upstream.requests) == 2
    assert {r.headers["authorization"] for r in openai_upstream.requests} == {
        f"Bearer {OPENAI_KEY}"
    }
    assert {r.body["model"] for r in openai_upstream.requests} == {"gpt-4o-mini"}
    assert final.usage == LlmUsage(calls=2, input_tokens=1900, output_tokens=40)
