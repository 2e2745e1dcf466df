"""Fixtures for the end-to-end tests: a real orchestrator whose scripted model drives the real
worker image, and the projects and images the jobs work with."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from grpc import aio

from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc
from tests.conftest import ROOT, _remove_test_containers
from tests.e2e.support import SCRIPTS

DEMO_PROJECT = ROOT / "deploy" / "demo" / "project"
DEMO_SCRIPT = ROOT / "deploy" / "demo" / "fix-the-tests.yaml"
CUSTOM_DOCKERFILE = ROOT / "deploy" / "examples" / "Dockerfile.custom-worker"
CUSTOM_IMAGE = "ironclaw-worker-custom:test"
# The custom image is rebuilt only when the worker image it was built FROM changed.
PARENT_LABEL = "ironclaw.test.parent-image-id"


# Not "test-": when any pytest session sharing this engine ends, its docker_engine fixture removes
# every container whose instance starts with "test-", which kills the jobs of the sessions still
# running. This session's containers carry a prefix of their own.
SESSION_INSTANCE_PREFIX = f"e2e-{uuid.uuid4().hex[:8]}-"


@pytest.fixture
def test_instance() -> str:
    return f"{SESSION_INSTANCE_PREFIX}{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session", autouse=True)
def _remove_session_containers(docker_engine: Any) -> Iterator[None]:
    yield
    _remove_test_containers(docker_engine, prefix=SESSION_INSTANCE_PREFIX)


@dataclass(frozen=True)
class Running:
    """An orchestrator started for one test and a control-plane stub connected to it."""

    orch: Any
    stub: Any


@pytest.fixture
async def e2e(
    start_orch: Any, make_settings: Any, worker_image: str
) -> AsyncIterator[Callable[..., Any]]:
    """Starts an orchestrator whose scripted model replays ``script`` (a file name under
    tests/e2e/scripts, or a path) to jobs in the worker image; settings can be overridden."""
    channels: list[aio.Channel] = []

    async def start(script: str | Path, provider: Any = None, **overrides: Any) -> Running:
        path = script if isinstance(script, Path) else SCRIPTS / script
        env = {
            "WORKER_IMAGE": worker_image,
            "LLM_PROVIDER": "scripted",
            "LLM_SCRIPT": str(path),
            **overrides,
        }
        settings = make_settings(**env)
        extra = {"provider": provider} if provider is not None else {}
        orch = await start_orch(settings, **extra)
        channel = aio.insecure_channel(f"127.0.0.1:{orch.grpc_port}")
        channels.append(channel)
        return Running(orch, pb_grpc.JobServiceStub(channel))

    yield start
    for channel in channels:
        await channel.close()


def _chown_tree(root: Path, uid: int = 1000) -> None:
    os.chown(root, uid, uid)
    for current, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(Path(current, name), uid, uid, follow_symlinks=False)


@pytest.fixture
def sandbox_project(base_dir: Path) -> Callable[[str], Path]:
    """An empty project directory under the base, owned by the sandbox user (uid 1000)."""

    def make(name: str) -> Path:
        path = base_dir / "projects" / name
        path.mkdir()
        _chown_tree(path)
        return path

    return make


@pytest.fixture
def demo_project(base_dir: Path) -> Path:
    """A copy of deploy/demo/project (one bug, two failing tests) the sandbox user can write."""
    path = base_dir / "projects" / "demo"
    shutil.copytree(DEMO_PROJECT, path, ignore=shutil.ignore_patterns("__pycache__"))
    _chown_tree(path)
    return path


def _image_attrs(docker_engine: Any, tag: str) -> Any:
    import docker

    try:
        return docker_engine.images.get(tag).attrs
    except docker.errors.ImageNotFound:
        return None


@pytest.fixture(scope="session")
def custom_worker_image(docker_engine: Any, worker_image: str) -> str:
    """deploy/examples/Dockerfile.custom-worker built as ironclaw-worker-custom:test; reused while
    it was built on the current worker image."""
    parent_id = docker_engine.images.get(worker_image).id
    existing = _image_attrs(docker_engine, CUSTOM_IMAGE)
    if existing and (existing["Config"].get("Labels") or {}).get(PARENT_LABEL) == parent_id:
        return CUSTOM_IMAGE
    result = subprocess.run(
        [
            "docker",
            "build",
            "--label",
            f"{PARENT_LABEL}={parent_id}",
            "--build-arg",
            f"WORKER_IMAGE={worker_image}",
            "-f",
            str(CUSTOM_DOCKERFILE),
            "-t",
            CUSTOM_IMAGE,
            str(CUSTOM_DOCKERFILE.parent),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        pytest.fail(
            f"building {CUSTOM_IMAGE} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return CUSTOM_IMAGE
