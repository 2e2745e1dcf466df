from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.settings import Settings


def test_defaults_match_the_documented_table() -> None:
    s = Settings.from_env({})
    assert (s.grpc_port, s.grpc_bind, s.http_port, s.http_bind) == (50051, "127.0.0.1", 50052, None)
    assert s.worker_image == "ironclaw-worker:latest"
    assert (s.worker_memory_mb, s.worker_cpu_shares, s.worker_pids_limit) == (2048, 1024, 1024)
    assert s.worker_timeout_s == 3600
    assert s.claude_image == "ironclaw-claude:latest"
    assert (s.claude_memory_mb, s.claude_max_turns, s.claude_model) == (4096, 50, "sonnet")
    assert s.claude_allowed_tools == ("Bash", "Read", "Write")
    assert s.base_dir == (Path.home() / ".ironclaw").resolve()
    assert s.llm_provider == "none"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ORCHESTRATOR_PORT": "abc"}, "ORCHESTRATOR_PORT"),
        ({"ORCHESTRATOR_PORT": "70000"}, "ORCHESTRATOR_PORT"),
        ({"WORKER_MEMORY_MB": "-1"}, "WORKER_MEMORY_MB"),
        ({"CLAUDE_CODE_ALLOWED_TOOLS": "bash,telepathy"}, "CLAUDE_CODE_ALLOWED_TOOLS"),
        ({"LLM_PROVIDER": "magic"}, "LLM_PROVIDER"),
        ({"LLM_PROVIDER": "scripted"}, "LLM_SCRIPT"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"ORCHESTRATOR_INSECURE": "maybe"}, "ORCHESTRATOR_INSECURE"),
        ({"LLM_SCRIPT": "/no/such/file"}, "LLM_SCRIPT"),
        ({"ORCHESTRATOR_BIND": "0.0.0.0"}, "ORCHESTRATOR_ADMIN_TOKEN"),
        (
            {"ORCHESTRATOR_BIND": "0.0.0.0", "ORCHESTRATOR_ADMIN_TOKEN": "t"},
            "ORCHESTRATOR_TLS_CERT",
        ),
    ],
)
def test_bad_values_are_startup_errors_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


def test_claude_tools_are_mapped_case_insensitively() -> None:
    s = Settings.from_env({"CLAUDE_CODE_ALLOWED_TOOLS": "bash, READ,Glob,grep"})
    assert s.claude_allowed_tools == ("Bash", "Read", "Glob", "Grep")


def test_non_loopback_bind_with_token_and_insecure_opt_in_is_accepted() -> None:
    s = Settings.from_env(
        {
            "ORCHESTRATOR_BIND": "0.0.0.0",
            "ORCHESTRATOR_ADMIN_TOKEN": "admin-secret",
            "ORCHESTRATOR_INSECURE": "1",
        }
    )
    assert s.grpc_bind == "0.0.0.0"
    assert "admin-secret" not in repr(s)


def test_secrets_never_show_in_repr() -> None:
    s = Settings.from_env({"ANTHROPIC_API_KEY": "sk-ant-xyz", "OPENAI_API_KEY": "sk-abc"})
    assert "sk-ant-xyz" not in repr(s)
    assert "sk-abc" not in repr(s)


def test_instance_is_derived_from_the_base_dir(tmp_path: Path) -> None:
    a = Settings.from_env({"IRONCLAW_BASE_DIR": str(tmp_path / "a")})
    b = Settings.from_env({"IRONCLAW_BASE_DIR": str(tmp_path / "b")})
    assert a.instance != b.instance
    assert a.instance == Settings.from_env({"IRONCLAW_BASE_DIR": str(tmp_path / "a")}).instance
