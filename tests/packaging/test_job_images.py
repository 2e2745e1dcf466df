"""The job images carry the agent and the contract, nothing of the orchestrator: seen from a
container of each image, in its venv /opt/ironclaw.

The installed distributions must be exactly what ironclaw-worker[custom-tools] (and, in the
Claude image, ironclaw-claude-bridge) require, computed from their metadata, plus the venv's own
pip and setuptools. pydantic is among them only because the custom tools' MCP SDK needs it: it
is checked to come with that extra and nothing else.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.docker

# The server side: the orchestrator's package and what only it uses.
ORCHESTRATOR_ONLY = (
    "orchestrator",
    "ironclaw_client",
    "grpc",
    "grpc_health",
    "google.protobuf",
    "docker",
    "anthropic",
    "openai",
    "aiohttp",
    "structlog",
    "yaml",
    "prometheus_client",
)
VENV_TOOLS = {"pip", "setuptools", "wheel"}

# Run by the venv's interpreter in the container: what it can import, what is installed (with
# the requirements each declares) and the values environment markers are evaluated against
# (the same as packaging.markers.default_environment, from the standard library).
PROBE = r"""
import importlib, importlib.metadata as md, json, os, platform, sys

def importable(name):
    try:
        importlib.import_module(name)
        return True
    except ImportError:
        return False

impl = sys.implementation
version = "{0.major}.{0.minor}.{0.micro}".format(impl.version)
if impl.version.releaselevel != "final":
    version += impl.version.releaselevel[0] + str(impl.version.serial)
print(json.dumps({
    "prefix": sys.prefix,
    "imports": {name: importable(name) for name in sys.argv[1:]},
    "ironclaw_command": os.path.exists(os.path.join(sys.prefix, "bin", "ironclaw")),
    "distributions": {d.metadata["Name"]: d.requires or [] for d in md.distributions()},
    "environment": {
        "implementation_name": impl.name,
        "implementation_version": version,
        "os_name": os.name,
        "platform_machine": platform.machine(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_full_version": platform.python_version(),
        "platform_python_implementation": platform.python_implementation(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "sys_platform": sys.platform,
    },
}))
"""


def _probe(docker_engine: Any, image: str, instance: str, modules: list[str]) -> dict[str, Any]:
    container = docker_engine.containers.create(
        image,
        entrypoint=["/opt/ironclaw/bin/python", "-I", "-c", PROBE, *modules],
        user="1000:1000",
        network_mode="none",
        labels={"ironclaw.instance": instance},
    )
    try:
        container.start()
        status = container.wait(timeout=120)
        output = container.logs(stdout=True, stderr=False).decode()
        errors = container.logs(stdout=False, stderr=True).decode()
        assert status["StatusCode"] == 0, errors
        return dict(json.loads(output))
    finally:
        container.remove(force=True)


def _closure(
    roots: list[str], requires: dict[str, list[str]], environment: dict[str, str]
) -> set[str]:
    """The distributions ``roots`` (requirements, extras allowed) need, transitively."""
    needed: set[str] = set()
    pending = [Requirement(root) for root in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        needed.add(name)
        assert name in requires, f"{name} is required but not installed"
        for line in requires[name]:
            child = Requirement(line)
            extras = requirement.extras or {""}
            if child.marker is None or any(
                child.marker.evaluate({**environment, "extra": extra}) for extra in extras
            ):
                pending.append(child)
    return needed


def _check_image(docker_engine: Any, image: str, instance: str, roots: list[str]) -> set[str]:
    agent = ["worker", "ironclaw_contract", "mcp", "wasmtime", "bridge"]
    seen = _probe(docker_engine, image, instance, [*ORCHESTRATOR_ONLY, *agent, "pydantic"])

    assert seen["prefix"] == "/opt/ironclaw"
    assert {m for m in ORCHESTRATOR_ONLY if seen["imports"][m]} == set()
    assert not seen["ironclaw_command"]
    requires = {canonicalize_name(k): v for k, v in seen["distributions"].items()}
    installed = set(requires)
    assert not {"ironclaw-orchestrator", "ironclaw-client"} & installed
    needed = _closure(roots, requires, seen["environment"])
    assert installed - VENV_TOOLS == needed  # nothing more, nothing less
    # pydantic: only as a dependency of the custom tools' MCP SDK.
    assert seen["imports"]["pydantic"]
    assert "pydantic" in _closure(["mcp"], requires, seen["environment"])
    plain = [r.replace("[custom-tools]", "") for r in roots]
    assert "pydantic" not in _closure(plain, requires, seen["environment"])
    return {m for m in agent if seen["imports"][m]}


def test_the_worker_image_holds_the_agent_and_nothing_of_the_orchestrator(
    docker_engine: Any, worker_image: str, test_instance: str
) -> None:
    importable = _check_image(
        docker_engine, worker_image, test_instance, ["ironclaw-worker[custom-tools]"]
    )

    assert importable == {"worker", "ironclaw_contract", "mcp", "wasmtime"}


def test_the_claude_image_adds_the_bridge_and_nothing_of_the_orchestrator(
    docker_engine: Any, claude_image: str, test_instance: str
) -> None:
    importable = _check_image(
        docker_engine,
        claude_image,
        test_instance,
        ["ironclaw-worker[custom-tools]", "ironclaw-claude-bridge"],
    )

    assert importable == {"worker", "ironclaw_contract", "mcp", "wasmtime", "bridge"}
