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


def test_worker_api_connection_settings_have_defaults_and_follow_the_descriptor_limit() -> None:
    from orchestrator.http_api.connection_limits import connection_limits

    settings = Settings.from_env({})
    limits = connection_limits(settings, fd_limit=1024)
    assert (limits.max_connections, limits.max_per_source) == (448, 64)
    assert (limits.header_timeout_s, limits.body_timeout_s, limits.idle_timeout_s) == (10, 60, 60)
    assert connection_limits(settings, fd_limit=1 << 20).max_connections == 4096
    explicit = Settings.from_env(
        {
            "ORCHESTRATOR_HTTP_MAX_CONNECTIONS": "300",
            "ORCHESTRATOR_HTTP_MAX_CONNECTIONS_PER_SOURCE": "8",
            "ORCHESTRATOR_HTTP_HEADER_TIMEOUT_S": "2.5",
        }
    )
    limits = connection_limits(explicit, fd_limit=1024)
    assert (limits.max_connections, limits.max_per_source, limits.header_timeout_s) == (300, 8, 2.5)
    # A cap the descriptor limit cannot carry would not protect anything: refused, with the fix.
    with pytest.raises(ConfigError, match=r"ORCHESTRATOR_HTTP_MAX_CONNECTIONS=300.*LimitNOFILE"):
        connection_limits(explicit, fd_limit=512)
    with pytest.raises(ConfigError, match="ORCHESTRATOR_HTTP_HEADER_TIMEOUT_S"):
        Settings.from_env({"ORCHESTRATOR_HTTP_HEADER_TIMEOUT_S": "0"})
    with pytest.raises(ConfigError, match="ORCHESTRATOR_HTTP_MAX_CONNECTIONS_PER_SOURCE"):
        Settings.from_env({"ORCHESTRATOR_HTTP_MAX_CONNECTIONS_PER_SOURCE": "many"})
