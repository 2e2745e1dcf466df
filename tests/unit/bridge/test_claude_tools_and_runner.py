"""Pure parts of the bridge: the allowed-tools mapping, the CLI's argv and environment, how a
run's end becomes the job's result."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bridge.runner import (
    RunOutcome,
    SessionTotals,
    child_environment,
    claude_argv,
    is_budget_refusal,
    run_failure,
    writable_home,
)
from bridge.stream import SessionResult
from ironclaw_contract.claude import (
    CLAUDE_TOOL_NAMES,
    UnknownToolError,
    map_tool_names,
    parse_tool_list,
)
from orchestrator.settings import CLAUDE_TOOL_NAMES as ORCHESTRATOR_TOOL_NAMES

# -- allowed tools ---------------------------------------------------------------------------


def test_seed_names_map_to_the_cli_names_case_insensitively() -> None:
    assert parse_tool_list("bash,read,write") == ("Bash", "Read", "Write")
    assert parse_tool_list(" Bash, READ glob ,grep") == ("Bash", "Read", "Glob", "Grep")
    assert map_tool_names(["Write", "write", "WRITE", "edit"]) == ("Write", "Edit")
    assert parse_tool_list("ls,multiedit,webfetch,todowrite") == (
        "LS",
        "MultiEdit",
        "WebFetch",
        "TodoWrite",
    )


def test_an_unknown_tool_is_an_error_naming_it() -> None:
    with pytest.raises(UnknownToolError, match=r"'telepathy'.*known: bash"):
        parse_tool_list("bash,telepathy")
    with pytest.raises(UnknownToolError, match="at least one"):
        parse_tool_list(" , ")


def test_the_bridge_and_the_orchestrator_know_the_same_tools() -> None:
    # Two copies (the bridge never imports the orchestrator); they must not drift apart.
    assert CLAUDE_TOOL_NAMES == ORCHESTRATOR_TOOL_NAMES


# -- argv and environment --------------------------------------------------------------------


def test_argv_has_no_shell_and_no_prompt() -> None:
    argv = claude_argv("claude", model="sonnet", max_turns=7, tools=("Bash", "Read"))
    assert argv == [
        "claude",
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--max-turns",
        "7",
        "--model",
        "sonnet",
        "--tools",
        "Bash,Read",
        "--allowedTools",
        "Bash,Read",
    ]
    resumed = claude_argv("claude", model="m", max_turns=1, tools=("Bash",), resume="sid-1")
    assert resumed[-2:] == ["--resume", "sid-1"]


def test_child_environment_keeps_claude_settings_and_credentials_not_the_worker_token(
    tmp_path: Path,
) -> None:
    base = {
        "PATH": "/usr/bin",
        "HOME": "/home/sandbox",
        "LANG": "C.UTF-8",
        "IRONCLAW_WORKER_TOKEN": "irc_worker_secret",
        "IRONCLAW_JOB_ID": "job",
        "ANTHROPIC_BASE_URL": "http://host.docker.internal:1/worker/job/anthropic",
        "ANTHROPIC_API_KEY": "irc_job_token",
        "ANTHROPIC_DEFAULT_SONNET_MODEL": "claude-sonnet-5-5",
        "CLAUDE_CODE_MODEL": "sonnet",
        "SOMETHING_ELSE": "dropped",
    }
    credentials = {
        "GITHUB_TOKEN": "ghp_x",
        "ANTHROPIC_BASE_URL": "http://evil",
        "CLAUDE_CODE_OAUTH_TOKEN": "stolen",
        "IRONCLAW_X": "no",
    }
    env = child_environment(base, credentials, tmp_path)
    assert env["GITHUB_TOKEN"] == "ghp_x"
    assert env["ANTHROPIC_BASE_URL"] == "http://host.docker.internal:1/worker/job/anthropic"
    assert env["ANTHROPIC_API_KEY"] == "irc_job_token"
    assert env["ANTHROPIC_DEFAULT_SONNET_MODEL"] == "claude-sonnet-5-5"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert env["HOME"] == str(tmp_path)
    assert env["PATH"] == "/usr/bin"
    assert "CLAUDE_CODE_OAUTH_TOKEN" not in env
    assert "SOMETHING_ELSE" not in env
    assert not [name for name in env if name.startswith("IRONCLAW_")]
    assert "irc_worker_secret" not in env.values()


def test_writable_home_falls_back_to_a_private_temp_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    assert writable_home({"HOME": str(home)}) == home
    assert (home / ".claude").is_dir()
    if os.getuid() == 0:
        return  # root writes anywhere: the fallback cannot be provoked
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    chosen = writable_home({"HOME": str(locked)})
    assert chosen != locked
    assert (chosen / ".claude").is_dir()


# -- how a run ends --------------------------------------------------------------------------


def _result(**fields: object) -> SessionResult:
    values: dict[str, object] = {
        "session_id": "s",
        "subtype": "success",
        "is_error": False,
        "text": "done",
        "num_turns": 2,
    }
    values.update(fields)
    return SessionResult(**values)  # type: ignore[arg-type]


def test_a_successful_run_is_no_failure() -> None:
    assert run_failure(RunOutcome(_result(), 0), 50) is None


def test_max_turns_budget_and_errors_each_have_a_reason() -> None:
    max_turns = _result(subtype="error_max_turns", is_error=True, text="")
    assert run_failure(RunOutcome(max_turns, 1), 3) == (
        "max_turns",
        "Claude Code reached its maximum of 3 turns",
    )
    budget = _result(
        is_error=True,
        api_error_status=429,
        text="API Error: Request rejected (429) · LLM token budget exhausted: 30 of 30 tokens",
    )
    assert is_budget_refusal(budget)
    assert run_failure(RunOutcome(budget, 1), 3) == ("budget_exceeded", budget.text)
    model = _result(
        is_error=True,
        api_error_status=403,
        text="API Error: 403 model 'claude-opus-5-5' is not allowed for this job (allowed: x)",
    )
    assert run_failure(RunOutcome(model, 1), 3) == ("budget_exceeded", model.text)
    # A rate limit of the real upstream is not the job's budget.
    upstream = _result(is_error=True, api_error_status=429, text="API Error: rate limit")
    assert not is_budget_refusal(upstream)
    reason, message = run_failure(RunOutcome(upstream, 1), 3) or ("", "")
    assert reason == "claude_error"
    assert "rate limit" in message
    during = _result(subtype="error_during_execution", is_error=True, text="", errors=("boom",))
    assert run_failure(RunOutcome(during, 1), 3) == (
        "claude_error",
        "Claude Code failed (error_during_execution): boom",
    )


def test_exits_without_a_result_name_the_code_and_the_stderr() -> None:
    assert run_failure(RunOutcome(None, 1, "line one\nError: bad flag"), 3) == (
        "claude_exit",
        "claude exited with code 1 without a result: Error: bad flag",
    )
    assert run_failure(RunOutcome(None, -9), 3) == (
        "claude_exit",
        "claude exited with signal 9 without a result",
    )
    assert run_failure(RunOutcome(_result(), 2), 3) == (
        "claude_exit",
        "claude reported success but exited with code 2",
    )
    assert run_failure(RunOutcome(None, -15, timed_out=True), 3) == (
        "deadline",
        "the job's deadline passed while Claude Code was working",
    )


def test_totals_sum_the_runs_of_a_job() -> None:
    totals = SessionTotals()
    totals.add(
        _result(
            duration_ms=100,
            total_cost_usd=0.5,
            usage={"input_tokens": 10, "output_tokens": 5},
        )
    )
    totals.add(None)
    totals.add(_result(session_id="s", num_turns=1, text="second", usage={"input_tokens": 1}))
    details = totals.details(ended="done", reason=None)
    assert details == {
        "session_id": "s",
        "num_turns": 3,
        "duration_ms": 100,
        "total_cost_usd": 0.5,
        "usage": {
            "input_tokens": 11,
            "output_tokens": 5,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
        "runs": 3,
        "ended": "done",
    }
    assert totals.last_text == "second"
