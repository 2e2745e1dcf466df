"""Fixtures for agent mode's container tests: a fake Anthropic upstream, an orchestrator whose
agent catalogue names the test images, and project directories for the sandbox user."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.domain.jobs import CreateJobRequest, JobLimitOverrides, JobMode, JobSnapshot
from tests.conftest import IMAGE_TAG, ROOT, build_image
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.helpers import wait_for

UPSTREAM_KEY = "sk-ant-upstream-" + "a" * 24
MINI_IMAGE = f"ironclaw-agent-mini-swe-agent:{IMAGE_TAG}"


def tiny_entry(image: str, model: str = "claude-sonnet-5-5") -> dict[str, Any]:
    """The tiny stand-in agent (tests/images/tiny_agent.py) as a catalogue entry."""
    return {
        "image": image,
        "command": ["tiny-agent", "--model", "{model}", "{task}"],
        "api": "anthropic",
        "key_env": "ANTHROPIC_API_KEY",
        "base_url_env": "ANTHROPIC_BASE_URL",
        "model": model,
        "env": {"TINY_AGENT_SETTING": "on"},
    }


def mini_entry() -> dict[str, Any]:
    """mini-swe-agent as deploy/agents/agents.json names it, on this checkout's image."""
    catalogue = json.loads((ROOT / "deploy" / "agents" / "agents.json").read_text())
    entry: dict[str, Any] = catalogue["agents"]["mini-swe-agent"]
    return {**entry, "image": MINI_IMAGE}


@pytest.fixture(scope="session")
def mini_image(docker_engine: Any) -> str:
    """The mini-swe-agent image, built offline by build-images.sh (wheels from the host)."""
    build_image("mini-swe-agent")
    return MINI_IMAGE


@pytest.fixture
async def upstream() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key=UPSTREAM_KEY) as fake:
        yield fake


@pytest.fixture
def project(base_dir: Path) -> Callable[[str], Path]:
    def make(name: str) -> Path:
        path = base_dir / "projects" / name
        path.mkdir(parents=True)
        os.chown(path, 1000, 1000)
        return path

    return make


@pytest.fixture
def agents_orch(
    start_orch: Any, make_settings: Any, base_dir: Path, upstream: FakeAnthropic
) -> Callable[..., Any]:
    """``await agents_orch({name: entry})``: an orchestrator with that agent catalogue whose
    Anthropic route forwards to the fake upstream with the real key."""

    async def start(agents: dict[str, Any], **overrides: str) -> Any:
        (base_dir / "agents.json").write_text(json.dumps({"agents": agents}))
        env = {
            "ANTHROPIC_API_KEY": UPSTREAM_KEY,
            "ANTHROPIC_BASE_URL": upstream.url,
            "LLM_PROVIDER": "none",
            "WORKER_MEMORY_MB": "512",
            **overrides,
        }
        return await start_orch(make_settings(**env))

    return start


async def run_agent_job(
    orch: Any,
    agent: str,
    task: str,
    project_dir: Path,
    timeout: float = 120,
    limits: JobLimitOverrides | None = None,
) -> tuple[str, str]:
    """Creates the job; returns its id and its worker token once the container has started."""
    created = await orch.manager.create_job(
        CreateJobRequest(
            task=task,
            mode=JobMode.AGENT,
            agent=agent,
            project_dir=str(project_dir),
            limits=limits or JobLimitOverrides(),
        )
    )
    assert created.token is not None
    return created.job.job_id, created.token


async def wait_until_ended(orch: Any, job_id: str, timeout: float = 180) -> JobSnapshot:
    await wait_for(
        lambda: orch.manager.get_job(job_id).state.is_terminal,
        timeout=timeout,
        what=f"agent job {job_id} to end",
    )
    snapshot: JobSnapshot = orch.manager.get_job(job_id)
    return snapshot
