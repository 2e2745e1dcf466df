"""Shared test fixtures: Docker availability, locally built images, orchestrators on free ports.

Tests that need Docker skip locally without an engine but fail under CI (CI=true). Every
container a test starts carries a test-only ``ironclaw.instance`` label and is removed by that
label afterwards, also when the test fails; its log is printed first so a failure explains
itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

# The Swarm cluster's fixtures (swarm_cluster, swarm_settings, ...) and the Kubernetes cluster's
# (kubernetes_cluster, where KUBECONFIG names one), for every suite that needs them.
pytest_plugins = ("tests.swarm.fixtures", "tests.kubernetes.fixtures")

ROOT = Path(__file__).resolve().parents[1]
# Unique per test session, so a session only ever cleans up its own containers even when
# several sessions share the engine.
TEST_INSTANCE_PREFIX = f"test-{uuid.uuid4().hex[:8]}-"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# The tag of every image the tests build and run (deploy/scripts/build-images.sh reads it too):
# checkouts sharing one engine never run each other's images.
IMAGE_TAG = os.environ.get("IRONCLAW_IMAGE_TAG", "latest")
_IMAGE_REPOSITORIES = {
    "worker": "ironclaw-worker",
    "claude": "ironclaw-claude",
    "orchestrator": "ironclaw-orchestrator",
    "test": "ironclaw-test-agent",
}


def image_name(target: str) -> str:
    """The image build-images.sh makes for ``target`` (worker, claude, orchestrator, test)."""
    return f"{_IMAGE_REPOSITORIES[target]}:{IMAGE_TAG}"


def _docker_client() -> Any:
    import docker

    return docker.from_env(timeout=30)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Any]:
    """A docker client; skips without an engine locally, fails under CI."""
    try:
        client = _docker_client()
        client.ping()
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"CI=true but no Docker engine is reachable: {exc}")
        pytest.skip(f"no Docker engine: {exc}")
    yield client
    _remove_test_containers(client, prefix=TEST_INSTANCE_PREFIX)
    client.close()


# Job and slot containers carry the instance label; the relays and networks of isolated jobs
# carry the network one. An orchestrator that stops leaves its jobs (and their relays) running
# for the next one to adopt, so a test's cleanup must remove all of them.
_INSTANCE_LABELS = ("ironclaw.instance", "ironclaw.network.instance")


def _remove_test_containers(client: Any, prefix: str = "", instance: str = "") -> None:
    def ours(labels: dict[str, str] | None, key: str) -> bool:
        label = (labels or {}).get(key, "")
        return bool((instance and label == instance) or (prefix and label.startswith(prefix)))

    # The low-level listing returns labels without inspecting each container, so a container
    # that disappears meanwhile cannot break the cleanup.
    for key in _INSTANCE_LABELS:
        for row in client.api.containers(all=True, filters={"label": key}):
            if ours(row.get("Labels"), key):
                with contextlib.suppress(Exception):
                    client.api.remove_container(row["Id"], force=True)
    # Networks last: one still has its relay attached until the relay is gone.
    with contextlib.suppress(Exception):
        for net in client.api.networks(filters={"label": "ironclaw.network.instance"}):
            if ours(net.get("Labels"), "ironclaw.network.instance"):
                with contextlib.suppress(Exception):
                    client.api.remove_network(net["Id"])


def build_image(target: str) -> None:
    result = subprocess.run(
        [str(ROOT / "deploy/scripts/build-images.sh"), target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    if result.returncode != 0:
        pytest.fail(f"building the {target} image failed:\n{result.stderr[-4000:]}")


TEST_IMAGES = ROOT / "tests" / "images"
# The label that says what a test image on top of a project image was built from.
TEST_SOURCE_LABEL = "ironclaw.test.source"


def build_test_image(
    docker_engine: Any, tag: str, dockerfile: str, files: tuple[str, ...], parent: str, arg: str
) -> str:
    """Builds tests/images/``dockerfile`` as ``tag`` on the project image of target
    ``parent`` (passed as build arg ``arg``), unless the image there was built from the same
    parent and the same ``files``."""
    build_image(parent)
    parent_id = docker_engine.images.get(image_name(parent)).id
    digest = hashlib.sha256()
    for name in (dockerfile, *files):
        digest.update((TEST_IMAGES / name).read_bytes())
    source = f"{parent_id}:{digest.hexdigest()}"
    try:
        labels = docker_engine.images.get(tag).attrs["Config"].get("Labels") or {}
    except Exception:
        labels = {}
    if labels.get(TEST_SOURCE_LABEL) == source:
        return tag
    built = subprocess.run(
        [
            "docker",
            "build",
            "--label",
            f"{TEST_SOURCE_LABEL}={source}",
            "--build-arg",
            f"{arg}={image_name(parent)}",
            "-f",
            str(TEST_IMAGES / dockerfile),
            "-t",
            tag,
            str(TEST_IMAGES),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if built.returncode != 0:
        pytest.fail(f"building {tag} failed:\n{built.stdout[-3000:]}{built.stderr[-3000:]}")
    return tag


@pytest.fixture(scope="session")
def fake_cli_image(docker_engine: Any) -> str:
    """tests/images/Dockerfile.test-claude (the Claude Code image with a stand-in CLI that a
    test scripts through a fake upstream) on this checkout's Claude Code image."""
    return build_test_image(
        docker_engine,
        f"ironclaw-test-claude:{IMAGE_TAG}",
        "Dockerfile.test-claude",
        ("fake_claude.py",),
        "claude",
        "CLAUDE_IMAGE",
    )


@pytest.fixture(scope="session")
def test_agents_image(docker_engine: Any) -> str:
    """tests/images/Dockerfile.test-agents (the worker image with a tiny stand-in CLI agent)
    on this checkout's worker image."""
    return build_test_image(
        docker_engine,
        f"ironclaw-test-agents:{IMAGE_TAG}",
        "Dockerfile.test-agents",
        ("tiny_agent.py",),
        "worker",
        "WORKER_IMAGE",
    )


@pytest.fixture(scope="session")
def test_agent_image(docker_engine: Any) -> str:
    build_image("test")
    return image_name("test")


@pytest.fixture(scope="session")
def worker_image(docker_engine: Any) -> str:
    build_image("worker")
    return image_name("worker")


@pytest.fixture(scope="session")
def claude_image(docker_engine: Any) -> str:
    build_image("claude")  # builds the worker image first when it is stale
    return image_name("claude")


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    base = tmp_path / "ironclaw"
    (base / "projects").mkdir(parents=True)
    return base


@pytest.fixture
def test_instance() -> str:
    return f"{TEST_INSTANCE_PREFIX}{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_settings(base_dir: Path, test_instance: str) -> Callable[..., Any]:
    from orchestrator.settings import Settings

    def make(**overrides: Any) -> Settings:
        env = {
            "IRONCLAW_BASE_DIR": str(base_dir),
            "ORCHESTRATOR_INSTANCE": test_instance,
            "WORKER_MEMORY_MB": "256",
            "STOP_GRACE_S": "2",
            "LOG_FORMAT": "console",
            "METRICS_PORT": "0",  # a free port: tests run side by side
            "WORKER_IMAGE": image_name("worker"),
            "CLAUDE_CODE_IMAGE": image_name("claude"),
            # The default is isolated: a network and a relay container per job. Tests about
            # something else run on the host's bridge, lighter and faster; the isolated mode
            # (the demo, Claude Code, egress, isolation and flood suites) names it.
            "JOB_NETWORK": "bridge",
        }
        env.update({k: v for k, v in overrides.items() if k.isupper()})
        settings = Settings.from_env(env)
        fields = {k: v for k, v in overrides.items() if not k.isupper()}
        return replace(settings, **fields) if fields else settings

    return make


@pytest.fixture
async def start_orch(docker_engine: Any, test_instance: str) -> AsyncIterator[Callable[..., Any]]:
    """Starts orchestrators on free ports; stops them and removes their containers after."""
    from orchestrator.service import Orchestrator, start_orchestrator

    started: list[Orchestrator] = []

    async def start(settings: Any, **kwargs: Any) -> Orchestrator:
        orch = await start_orchestrator(
            settings, grpc_port=0, http_port=0, reaper_interval=0.5, **kwargs
        )
        started.append(orch)
        return orch

    try:
        yield start
    finally:
        for orch in started:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(orch.stop(grace=1), timeout=30)
        for row in docker_engine.api.containers(
            all=True, filters={"label": f"ironclaw.instance={test_instance}"}
        ):
            with contextlib.suppress(Exception):
                print(f"--- log of {row['Names'][0]} ---")
                print(docker_engine.api.logs(row["Id"], tail=50).decode(errors="replace"))
        _remove_test_containers(docker_engine, instance=test_instance)
