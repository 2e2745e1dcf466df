"""Fixtures for agent mode's container tests: a fake Anthropic upstream, an orchestrator whose
agent catalogue names the test images, and project directories for the sandbox user."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.domain.jobs import CreateJobRequest, JobMode, JobSnapshot
from tests.conftest import IMAGE_TAG, ROOT, build_image, image_name
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.helpers import wait_for

UPSTREAM_KEY = "sk-ant-upstream-" + "a" * 24
IMAGES = ROOT / "tests" / "images"
TEST_AGENTS_IMAGE = f"ironclaw-test-agents:{IMAGE_TAG}"
MINI_IMAGE = f"ironclaw-agent-mini-swe-agent:{IMAGE_TAG}"
SOURCE_LABEL = "ironclaw.test.source"


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
def test_agents_image(docker_engine: Any) -> str:
    """tests/images/Dockerfile.test-agents on this checkout's worker image."""
    build_image("worker")
    parent = docker_engine.images.get(image_name("worker")).id
    digest = hashlib.sha256()
    for name in ("Dockerfile.test-agents", "tiny_agent.py"):
        digest.update((IMAGES / name).read_bytes())
    source = f"{parent}:{digest.hexdigest()}"
    try:
        labels = docker_engine.images.get(TEST_AGENTS_IMAGE).attrs["Config"].get("Labels") or {}
    except Exception:
        labels = {}
    if labels.get(SOURCE_LABEL) == source:
        return TEST_AGENTS_IMAGE
    built = subprocess.run(
        [
            "docker",
            "build",
            "--label",
            f"{SOURCE_LABEL}={source}",
            "--build-arg",
            f"WORKER_IMAGE={image_name('worker')}",
            "-f",
            str(IMAGES / "Dockerfile.test-agents"),
            "-t",
            TEST_AGENTS_IMAGE,
            str(IMAGES),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if built.returncode != 0:
        pytest.fail(f"building {TEST_AGENTS_IMAGE} failed:\n{built.stderr[-3000:]}")
    return TEST_AGENTS_IMAGE


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
    orch: Any, agent: str, task: str, project_dir: Path, timeout: float = 120
) -> tuple[str, str]:
    """Creates the job; returns its id and its worker token once the container has started."""
    created = await orch.manager.create_job(
        CreateJobRequest(task=task, mode=JobMode.AGENT, agent=agent, project_dir=str(project_dir))
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
