"""`ironclaw-worker` configuration, and the job metadata the agent relies on."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from worker.agent import JobSpec, build_system_prompt, parse_deadline
from worker.main import main
from worker.tools import ToolContext, ToolRegistry

JOB = "0d5e2c1a-4b7f-4c11-9a55-2f1e3d4c5b6a"
TOKEN = "irc_" + "B" * 43


@pytest.fixture
def worker_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in [
        "IRONCLAW_WORKER_TOKEN",
        "IRONCLAW_JOB_ID",
        "IRONCLAW_ORCHESTRATOR_URL",
        "IRONCLAW_WORKSPACE",
    ]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("IRONCLAW_WORKER_TOKEN", TOKEN)
    monkeypatch.setenv("IRONCLAW_JOB_ID", JOB)
    monkeypatch.setenv("IRONCLAW_ORCHESTRATOR_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("IRONCLAW_WORKSPACE", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(
    "var", ["IRONCLAW_WORKER_TOKEN", "IRONCLAW_JOB_ID", "IRONCLAW_ORCHESTRATOR_URL"]
)
def test_missing_variable_is_named_and_exits_2(
    var: str,
    worker_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv(var)
    assert main([]) == 2
    err = capsys.readouterr().err
    assert f"{var} is not set" in err
    assert TOKEN not in err


@pytest.mark.parametrize("value", ["zero", "0", "-3"])
def test_bad_max_iterations_is_named(
    value: str, worker_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--max-iterations", value]) == 2
    assert "--max-iterations must be a positive integer" in capsys.readouterr().err


def test_missing_workspace_is_named(
    worker_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IRONCLAW_WORKSPACE", str(worker_env / "nope"))
    assert main([]) == 2
    assert "IRONCLAW_WORKSPACE" in capsys.readouterr().err


def test_bad_url_is_refused_without_the_token(
    worker_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IRONCLAW_ORCHESTRATOR_URL", "host.docker.internal:50052")
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "IRONCLAW_ORCHESTRATOR_URL" in err
    assert TOKEN not in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "IRONCLAW_WORKER_TOKEN" in capsys.readouterr().out


def test_worker_process_is_made_undumpable() -> None:
    # PR_GET_DUMPABLE (3) reads back what make_undumpable set; run apart so this process keeps
    # its own setting.
    code = (
        "import ctypes; from worker.main import make_undumpable; make_undumpable(); "
        "print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "0"


def test_job_spec_reads_the_fields_the_agent_needs() -> None:
    spec = JobSpec.from_api(
        {
            "job_id": JOB,
            "task_description": "Fix the failing test",
            "project_dir": "/workspace",
            "mode": "worker",
            "max_iterations": 7,
            "deadline": "2030-01-02T03:04:05Z",
        }
    )
    assert spec == JobSpec(
        JOB, "Fix the failing test", 7, datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    )


@pytest.mark.parametrize("limit", [None, 0, -1, True, "5"])
def test_job_spec_ignores_unusable_max_iterations(limit: object) -> None:
    spec = JobSpec.from_api({"task_description": "t", "max_iterations": limit})
    assert spec.max_iterations is None


def test_job_spec_requires_a_task() -> None:
    with pytest.raises(ValueError, match="task_description"):
        JobSpec.from_api({"job_id": JOB, "task_description": "  "})


def test_parse_deadline_forms() -> None:
    assert parse_deadline(None) is None
    assert parse_deadline("") is None
    naive = parse_deadline("2030-01-02T03:04:05")
    assert naive == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    offset = parse_deadline("2030-01-02T05:04:05+02:00")
    assert offset == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert offset is not None
    assert offset.utcoffset() == timedelta(hours=2)
    assert offset.tzinfo == timezone(timedelta(hours=2))
    with pytest.raises(ValueError, match="Invalid isoformat"):
        parse_deadline("next tuesday")


def test_system_prompt_names_workspace_tools_and_credentials(tmp_path: Path) -> None:
    registry = ToolRegistry(ToolContext(workspace=tmp_path))
    prompt = build_system_prompt(tmp_path, registry, ["GITHUB_TOKEN"])
    assert str(tmp_path) in prompt
    for name in registry.names:
        assert f"- {name}: " in prompt
    assert "GITHUB_TOKEN" in prompt
    assert "without calling any tool" in prompt
