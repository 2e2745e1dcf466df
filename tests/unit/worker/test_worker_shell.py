"""The shell tool: environment, timeout, process-group kill and output cap."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from worker.credentials import credential_env
from worker.tools import ToolContext, ToolRegistry, tool_environment
from worker.tools.shell import run_command


def _running(pid: int) -> bool:
    """Whether ``pid`` is alive (a zombie, killed but not yet reaped by its new parent, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _gone(pid: int, within_s: float = 5.0) -> bool:
    """Whether ``pid`` stops running within ``within_s``. SIGKILL is delivered asynchronously:
    the process may still be on its way out when the tool returns."""
    deadline = time.monotonic() + within_s
    while _running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_environment_has_credentials_but_no_worker_token(workspace: Path) -> None:
    worker_env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/home/sandbox",
        "IRONCLAW_WORKER_TOKEN": "irc_should_never_leak",
        "IRONCLAW_JOB_ID": "0d5e2c1a-0000-4000-8000-000000000000",
        "AWS_SECRET_ACCESS_KEY": "not-on-the-allowlist",
        "NPM_CONFIG_REGISTRY": "https://registry.example",
    }
    env = tool_environment(worker_env, credential_env({"github": "ghp_granted_value"}))
    registry = ToolRegistry(ToolContext(workspace=workspace, env=env))
    result = registry.call("shell", {"command": "env | sort"})
    assert not result.is_error, result.output
    lines = result.output.splitlines()
    assert "GITHUB_TOKEN=ghp_granted_value" in lines
    assert "HOME=/home/sandbox" in lines
    assert "NPM_CONFIG_REGISTRY=https://registry.example" in lines
    assert "irc_should_never_leak" not in result.output
    assert "IRONCLAW_" not in result.output
    assert "AWS_SECRET_ACCESS_KEY" not in result.output


def test_credential_env_name_cannot_reintroduce_ironclaw_vars() -> None:
    env = tool_environment({"PATH": "/bin"}, {"IRONCLAW_WORKER_TOKEN": "irc_x"})
    assert "IRONCLAW_WORKER_TOKEN" not in env


def test_runs_in_the_workspace_and_reports_exit_code(
    registry: ToolRegistry, workspace: Path
) -> None:
    (workspace / "sub").mkdir()
    ok = registry.call("shell", {"command": "pwd"})
    assert ok.output == f"{workspace.resolve()}\n[exit code 0]"
    assert not ok.is_error
    failed = registry.call("shell", {"command": "echo oops >&2; exit 3", "workdir": "sub"})
    assert failed.is_error
    assert failed.output == "oops\n[exit code 3]"


def test_timeout_kills_the_whole_process_group(registry: ToolRegistry, workspace: Path) -> None:
    started = time.monotonic()
    result = registry.call(
        "shell",
        {"command": "sleep 300 & echo $! > bg.pid; echo started; sleep 300", "timeout": 1},
    )
    elapsed = time.monotonic() - started
    assert result.is_error
    assert "started" in result.output
    assert "timed out after 1 s" in result.output
    assert elapsed < 10
    assert _gone(int((workspace / "bg.pid").read_text()))


def test_background_processes_stop_when_the_command_ends(
    registry: ToolRegistry, workspace: Path
) -> None:
    started = time.monotonic()
    result = registry.call("shell", {"command": "sleep 300 & echo $! > bg.pid; echo done"})
    assert time.monotonic() - started < 10
    assert result.output == "done\n[exit code 0]"
    assert _gone(int((workspace / "bg.pid").read_text()))


def test_output_is_capped_keeping_head_and_tail(registry: ToolRegistry) -> None:
    result = registry.call(
        "shell",
        {"command": "echo START; head -c 100000 /dev/zero | tr '\\0' x; echo; echo END"},
    )
    assert not result.is_error
    assert result.output.startswith("START\n")
    assert result.output.endswith("END\n[exit code 0]")
    assert "…[truncated 70011 bytes]…" in result.output
    assert len(result.output) < 30_100


def test_timeout_is_clamped_and_validated(registry: ToolRegistry) -> None:
    assert "exit code 0" in registry.call("shell", {"command": "true", "timeout": 10_000}).output
    bad = registry.call("shell", {"command": "true", "timeout": 0})
    assert bad.is_error
    assert "at least 1" in bad.output


def test_empty_command_is_an_error(registry: ToolRegistry) -> None:
    result = registry.call("shell", {"command": "  "})
    assert result.is_error


@pytest.mark.parametrize("size", [0, 10, 29_999])
def test_small_outputs_are_untouched(workspace: Path, size: int) -> None:
    outcome = run_command(
        f"head -c {size} /dev/zero | tr '\\0' y",
        cwd=workspace,
        env={"PATH": "/usr/bin:/bin"},
        timeout_s=30,
    )
    assert outcome.output == "y" * size
    assert outcome.exit_code == 0
    assert not outcome.timed_out
