"""Each distribution's wheel, installed alone in a fresh venv with what it depends on, brings its
command and nothing of the others: the contract needs no third-party package, the client only
grpcio and protobuf, the worker and the bridge only the project's own, the orchestrator
everything `ironclaw` needs."""

from __future__ import annotations

import asyncio
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.packaging.conftest import DISTRIBUTIONS, Installed, Wheelhouse, install

pytestmark = pytest.mark.packaging

# Each wheel's top-level packages: one process, one package (and its py.typed).
TOP_LEVEL = {
    "contract": "ironclaw_contract",
    "client": "ironclaw_client",
    "worker": "worker",
    "bridge": "bridge",
    "orchestrator": "orchestrator",
}


def _top_level(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    return {n.split("/", 1)[0] for n in names if ".dist-info/" not in n}


@pytest.mark.parametrize("distribution", sorted(TOP_LEVEL))
def test_each_wheel_holds_its_own_package_only(project_wheels: Path, distribution: str) -> None:
    (wheel,) = project_wheels.glob(f"{DISTRIBUTIONS[distribution]}-*.whl")
    package = TOP_LEVEL[distribution]

    assert _top_level(wheel) == {package}
    with zipfile.ZipFile(wheel) as archive:
        assert f"{package}/py.typed" in archive.namelist()


def _help(installed: Installed, *command: str) -> str:
    """The help text of a command of the venv, whitespace collapsed (argparse wraps it to the
    terminal's width)."""
    helped = installed.venv.run(installed.venv.bin(command[0]), *command[1:], "--help")
    assert helped.returncode == 0, helped.stderr
    assert helped.stderr == ""
    return " ".join(helped.stdout.split())


def _imports_from_the_venv(installed: Installed, module: str) -> None:
    # -I: no current directory, no PYTHONPATH, no user site: the module must come from the
    # wheel installed in the venv, not from the repository.
    found = installed.venv.run(
        installed.venv.python, "-I", "-c", f"import {module}; print({module}.__file__)"
    )
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).is_relative_to(installed.venv.root)


def _cannot_import(installed: Installed, *modules: str) -> None:
    for module in modules:
        found = installed.venv.run(installed.venv.python, "-I", "-c", f"import {module}")
        assert found.returncode != 0, f"{module} is importable"
        assert f"No module named '{module}'" in found.stderr


def test_the_contract_imports_with_the_standard_library_alone(
    wheelhouse: Wheelhouse, tmp_path: Path
) -> None:
    installed = install(wheelhouse, "contract", tmp_path / "venv")

    assert installed.added == {"ironclaw-contract"}
    _imports_from_the_venv(installed, "ironclaw_contract")
    # Every module of the package imported: nothing outside the standard library gets loaded.
    loaded = installed.venv.run(
        installed.venv.python,
        "-I",
        "-c",
        # What the interpreter loaded at start (site hooks such as setuptools' .pth) is not
        # the contract's doing: only what its imports add counts.
        "import sys\n"
        "started = set(sys.modules)\n"
        "import importlib, pkgutil, ironclaw_contract\n"
        "names = [m.name for m in pkgutil.walk_packages("
        "ironclaw_contract.__path__, 'ironclaw_contract.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "print(len(names))\n"
        "added = {m.split('.')[0] for m in set(sys.modules) - started}\n"
        "print(' '.join(sorted(added - set(sys.stdlib_module_names) - {'ironclaw_contract'})))",
    )
    assert loaded.returncode == 0, loaded.stderr
    count, foreign = [*loaded.stdout.splitlines(), ""][:2]
    assert int(count) >= 7  # container_env, worker_api, env_names, secret_patterns, ...
    assert foreign == ""


def test_the_worker_wheel_brings_ironclaw_worker_and_nothing_of_the_orchestrator(
    wheelhouse: Wheelhouse, tmp_path: Path
) -> None:
    installed = install(wheelhouse, "worker", tmp_path / "venv")

    # The agent loop and its built-in tools use the standard library (custom tools are an extra).
    assert installed.added == {"ironclaw-worker", "ironclaw-contract"}
    _imports_from_the_venv(installed, "worker")
    helped = _help(installed, "ironclaw-worker")
    assert helped.startswith("usage: ironclaw-worker [-h] [--job-id JOB_ID]")
    assert (
        "Run the agent of one job inside a worker container. The bearer token is read from "
        "IRONCLAW_WORKER_TOKEN only." in helped
    )
    for flag in ("--orchestrator-url", "--workspace", "--max-iterations", "--log-level"):
        assert flag in helped
    assert not installed.venv.bin("ironclaw").exists()
    _cannot_import(installed, "orchestrator", "bridge")


def test_the_bridge_wheel_brings_ironclaw_claude_bridge_on_the_worker(
    wheelhouse: Wheelhouse, tmp_path: Path
) -> None:
    installed = install(wheelhouse, "bridge", tmp_path / "venv")

    assert installed.added == {"ironclaw-claude-bridge", "ironclaw-worker", "ironclaw-contract"}
    _imports_from_the_venv(installed, "bridge")
    helped = _help(installed, "ironclaw-claude-bridge")
    assert helped.startswith("usage: ironclaw-claude-bridge [-h] [--job-id JOB_ID]")
    assert (
        "Run the Claude Code CLI for one job inside its container. The bearer token is read "
        "from IRONCLAW_WORKER_TOKEN only." in helped
    )
    for flag in ("--max-turns", "--model", "--wait-for-prompts", "--claude-bin"):
        assert flag in helped
    assert not installed.venv.bin("ironclaw").exists()
    _cannot_import(installed, "orchestrator")


def test_the_orchestrator_wheel_brings_ironclaw_and_its_commands(
    orchestrator_installed: Installed,
) -> None:
    installed = orchestrator_installed
    venv = installed.venv

    assert {"ironclaw-orchestrator", "ironclaw-contract", "ironclaw-client"} <= installed.added
    assert not {"ironclaw-worker", "ironclaw-claude-bridge"} & installed.added
    # What `ironclaw serve` imports at start: once, `pip install .` gave a serve without
    # structlog.
    for distribution in ("grpcio", "structlog", "docker", "aiohttp", "pydantic", "anthropic"):
        assert distribution in installed.added
    _imports_from_the_venv(installed, "orchestrator")
    _cannot_import(installed, "worker", "bridge")

    helped = _help(installed, "ironclaw")
    assert helped.startswith("usage: ironclaw [-h] COMMAND ...")
    assert "serve run the orchestrator (gRPC control plane + worker API)" in helped
    assert "job create and manage jobs (a gRPC client)" in helped
    assert "status orchestrator health" in helped
    assert "usage LLM calls, tokens and wall time per job" in helped

    job = _help(installed, "ironclaw", "job")
    assert job.startswith("usage: ironclaw job [-h] [--orchestrator ORCHESTRATOR] ACTION ...")
    for action in ("create a job", "watch follow a job's progress", "stop a job", "logs print"):
        assert action in job
    for action in ("get", "list", "cleanup", "prompt"):
        assert f" {action} " in job

    serve = _help(installed, "ironclaw", "serve")
    assert serve.startswith("usage: ironclaw serve [-h] [--drain]")
    assert "--drain on shutdown, stop running jobs" in serve

    # The agents are other distributions now: the old subcommand says where they went.
    moved = venv.run(venv.bin("ironclaw"), "worker")
    assert moved.returncode == 2
    assert "`ironclaw worker` is now `ironclaw-worker`" in moved.stderr
    assert "Traceback" not in moved.stderr


async def test_the_client_wheel_alone_imports_and_talks_to_an_orchestrator(
    wheelhouse: Wheelhouse, tmp_path: Path, make_settings: Any
) -> None:
    from orchestrator.service import start_orchestrator
    from tests.fakes.fake_backend import FakeBackend

    installed = install(wheelhouse, "client", tmp_path / "venv")

    # grpcio and protobuf (and what they pull in), nothing of the server or the agents.
    assert "ironclaw-client" in installed.added
    assert {"grpcio", "protobuf"} <= installed.added
    assert not {"ironclaw-orchestrator", "ironclaw-contract", "docker", "structlog"} & (
        installed.added
    )
    _imports_from_the_venv(installed, "ironclaw_client")
    _cannot_import(installed, "orchestrator", "worker")
    typed = installed.venv.run(
        installed.venv.python,
        "-I",
        "-c",
        "import ironclaw_client, pathlib; "
        "print((pathlib.Path(ironclaw_client.__file__).parent / 'py.typed').exists())",
    )
    assert typed.stdout.strip() == "True"

    orch = await start_orchestrator(
        make_settings(LLM_PROVIDER="none"), backend=FakeBackend(), grpc_port=0, http_port=0
    )
    try:
        script = (
            "from ironclaw_client import Client\n"
            f"with Client('127.0.0.1:{orch.grpc_port}') as client:\n"
            "    job = client.create_job('from the wheel').job\n"
            "    print(job.job_id, client.get_job(job.job_id).state.value, client.health())\n"
        )
        process = await asyncio.create_subprocess_exec(
            str(installed.venv.python),
            "-I",
            "-c",
            script,
            cwd=installed.venv.cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 0, err.decode()
        job_id, state, health = out.decode().split()
        assert state == "running"
        assert health == "SERVING"
        assert orch.manager.get_job(job_id).task == "from the wheel"
    finally:
        await orch.stop(grace=1)
