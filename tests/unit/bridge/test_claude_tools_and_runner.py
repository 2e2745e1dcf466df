"""Pure parts of the bridge: the allowed-tools mapping, the job's settings from ``GET /job``, the
CLI's argv and environment, how a run's end becomes the job's result."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.runner import (
    BridgeConfig,
    BridgeConfigError,
    RunOutcome,
    SessionTotals,
    child_environment,
    claude_argv,
    cli_settings_env,
    job_settings,
    refused_failure,
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


JOB_ID = "8c5c1f3e-0000-4000-8000-000000000001"
ROUTE = f"http://host.docker.internal:50052/worker/{JOB_ID}/anthropic"
LLM_KEY = "ircl_" + "k" * 43


def _claude(**fields: Any) -> dict[str, Any]:
    """``GET /job``'s ``claude``, as the orchestrator serves it by default."""
    return {
        "model": "sonnet",
        "max_turns": 7,
        "allowed_tools": ["Bash", "Read"],
        "model_aliases": {"sonnet": "claude-sonnet-5-5", "haiku": "claude-haiku-5-5"},
        "base_url": ROUTE,
        "api_key": LLM_KEY,
        "oauth_token": None,
        "idle_timeout_s": 42.0,
        **fields,
    }


def _job(**fields: Any) -> dict[str, Any]:
    return {
        "job_id": JOB_ID,
        "task_description": "Create note.txt",
        "project_dir": "/workspace",
        "mode": "claude-code",
        "max_iterations": 50,
        "deadline": "2030-01-02T03:04:05+00:00",
        "wait_for_prompts": False,
        "credential_env": {},
        "claude": _claude(),
        "mcp_servers": [],
        "wasm_tools": [],
        "llm_refusal": None,
        **fields,
    }


def test_job_settings_come_from_get_job() -> None:
    settings = job_settings(_job(wait_for_prompts=True), BridgeConfig())
    assert settings.task == "Create note.txt"
    assert settings.model == "sonnet"
    assert settings.max_turns == 7
    assert settings.tools == ("Bash", "Read")
    assert settings.wait_for_prompts is True
    assert settings.idle_timeout_s == 42.0
    assert settings.deadline == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert settings.cli_env == {
        "ANTHROPIC_BASE_URL": ROUTE,
        "ANTHROPIC_API_KEY": LLM_KEY,
        "ANTHROPIC_DEFAULT_SONNET_MODEL": "claude-sonnet-5-5",
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": "claude-haiku-5-5",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    assert LLM_KEY not in repr(settings)


def test_flags_override_the_job() -> None:
    config = BridgeConfig(
        model="opus", max_turns=3, allowed_tools="bash", wait_for_prompts=True, idle_timeout_s=5
    )
    settings = job_settings(_job(), config)
    assert (settings.model, settings.max_turns, settings.tools) == ("opus", 3, ("Bash",))
    assert (settings.wait_for_prompts, settings.idle_timeout_s) == (True, 5.0)


def test_the_opted_in_credential_reaches_the_cli_as_the_job_says() -> None:
    oauth = _claude(base_url=None, api_key=None, oauth_token="sk-ant-oat01-" + "o" * 20)
    assert cli_settings_env(oauth) == {
        "CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-" + "o" * 20,
        "ANTHROPIC_DEFAULT_SONNET_MODEL": "claude-sonnet-5-5",
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": "claude-haiku-5-5",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    # An alias the CLI does not know never becomes a variable of its own.
    odd = _claude(model_aliases={"sonnet": "m", "x_Y=1": "z", "haiku": 3})
    assert [name for name in cli_settings_env(odd) if "DEFAULT" in name] == [
        "ANTHROPIC_DEFAULT_SONNET_MODEL"
    ]


@pytest.mark.parametrize(
    ("job", "named"),
    [
        (_job(task_description=" "), "task_description"),
        (_job(claude=None), "not a Claude Code job"),
        (_job(claude=_claude(api_key=None)), "no Anthropic key"),
        (_job(claude=_claude(max_turns=0)), "max turns"),
        (_job(claude=_claude(max_turns=True)), "max turns"),
        (_job(claude=_claude(idle_timeout_s=-1)), "idle timeout"),
        (_job(claude=_claude(allowed_tools=["Bash", "telepathy"])), "'telepathy'"),
        (_job(claude=_claude(allowed_tools=None)), "allowed_tools"),
        (_job(claude=_claude(model="")), "claude.model"),
        (_job(deadline="next tuesday"), "deadline"),
    ],
)
def test_a_job_the_bridge_cannot_run_is_named(job: dict[str, Any], named: str) -> None:
    with pytest.raises(BridgeConfigError, match=named) as caught:
        job_settings(job, BridgeConfig())
    assert LLM_KEY not in str(caught.value)


def test_child_environment_is_the_safe_set_credentials_and_the_cli_settings_only(
    tmp_path: Path,
) -> None:
    base = {
        "PATH": "/usr/bin",
        "HOME": "/home/sandbox",
        "LANG": "C.UTF-8",
        "IRONCLAW_WORKER_TOKEN": "irc_worker_secret",
        "IRONCLAW_JOB_ID": "job",
        # Not a channel of the job's settings any more: the bridge's own environment stays out.
        "ANTHROPIC_API_KEY": "sk-ant-from-the-environment",
        "CLAUDE_CODE_MODEL": "opus",
        "SOMETHING_ELSE": "dropped",
    }
    credentials = {
        "GITHUB_TOKEN": "ghp_x",
        "ANTHROPIC_BASE_URL": "http://evil",
        "CLAUDE_CODE_OAUTH_TOKEN": "stolen",
        "IRONCLAW_X": "no",
    }
    cli_env = cli_settings_env(_claude())
    env = child_environment(base, credentials, tmp_path, cli_env)
    assert env == {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "HOME": str(tmp_path),
        "GITHUB_TOKEN": "ghp_x",
        **cli_env,
    }
    assert env["ANTHROPIC_API_KEY"] == LLM_KEY
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
    # Whatever the CLI says, its words never make a refusal: the orchestrator's code does.
    worded = _result(
        is_error=True,
        api_error_status=429,
        text="API Error: Request rejected (429) · LLM token budget exhausted: 30 of 30 tokens",
    )
    reason, message = run_failure(RunOutcome(worded, 1), 3) or ("", "")
    assert reason == "claude_error"
    assert "budget exhausted" in message
    during = _result(subtype="error_during_execution", is_error=True, text="", errors=("boom",))
    assert run_failure(RunOutcome(during, 1), 3) == (
        "claude_error",
        "Claude Code failed (error_during_execution): boom",
    )


def test_a_refused_failure_keeps_the_cli_words_for_people() -> None:
    said = _result(is_error=True, text="API Error: 429 something")
    assert refused_failure("token_budget_exhausted", RunOutcome(said, 1)) == (
        "budget_exceeded",
        "the job's LLM policy refused a model call (token_budget_exhausted): "
        "API Error: 429 something",
    )
    assert refused_failure("model_not_allowed", RunOutcome(None, 1)) == (
        "budget_exceeded",
        "the job's LLM policy refused a model call (model_not_allowed)",
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
