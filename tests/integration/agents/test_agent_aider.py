"""A second real third-party agent from PyPI, aider, as deploy/agents/agents.json runs it: its
image built offline on the worker image, its model calls streamed through the job's Anthropic
route to a fake upstream that answers in aider's whole-file edit format. It edits a file in
/workspace and the job completes; no real key is in the container, and the job's usage is what
the upstream served, to the token."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.domain.jobs import LlmUsage, TerminalReason
from tests.conftest import IMAGE_TAG, ROOT, build_image
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.integration.agents.conftest import UPSTREAM_KEY, run_agent_job, wait_until_ended

pytestmark = pytest.mark.docker

AIDER_IMAGE = f"ironclaw-agent-aider-chat:{IMAGE_TAG}"


@pytest.fixture(scope="session")
def aider_image(docker_engine: Any) -> str:
    build_image("aider-chat")
    return AIDER_IMAGE


async def test_aider_edits_the_workspace_through_the_streamed_anthropic_route(
    agents_orch: Callable[..., Any],
    aider_image: str,
    upstream: FakeAnthropic,
    project: Callable[[str], Path],
    docker_engine: Any,
) -> None:
    catalogue = json.loads((ROOT / "deploy" / "agents" / "agents.json").read_text())
    entry = {**catalogue["agents"]["aider"], "image": aider_image}
    orch = await agents_orch({"aider": entry}, WORKER_MEMORY_MB="1024")
    workdir = project("aider")
    # aider's whole-file edit format: the file's path, then its content, fenced.
    upstream.enqueue_text(
        "I will write the file.\n\nhello.txt\n```\nhello, edited by aider\n```\n",
        input_tokens=640,
        output_tokens=21,
    )
    job_id, _ = await run_agent_job(
        orch, "aider", "Write hello.txt saying it was edited by aider", workdir
    )
    inspected = docker_engine.api.inspect_container(f"ironclaw-agent-{job_id}")
    assert UPSTREAM_KEY not in json.dumps(inspected)
    final = await wait_until_ended(orch, job_id, timeout=240)
    assert final.result is not None
    assert final.result.reason is TerminalReason.COMPLETED, (final.result.message, final.log_tail)
    assert (workdir / "hello.txt").read_text() == "hello, edited by aider\n"
    assert "Applied edit to hello.txt" in final.result.message
    [served] = upstream.requests
    assert served.api_key == UPSTREAM_KEY
    assert served.body["stream"] is True
    assert served.body["model"] == "claude-sonnet-5-5"
    assert "Write hello.txt" in json.dumps(served.body["messages"])
    assert final.usage == LlmUsage(calls=1, input_tokens=640, output_tokens=21)
