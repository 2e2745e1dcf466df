from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.model_names import model_name_problem
from orchestrator.settings import Settings, configuration_table, setting_specs

ROOT = Path(__file__).resolve().parents[3]


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


def test_dataclass_defaults_are_what_from_env_reads_from_an_empty_environment() -> None:
    # One declaration per setting: a bare Settings() and from_env({}) cannot drift apart, except
    # for the values from_env derives (the instance, from the base dir).
    derived = {"instance"}
    bare, read = Settings(), Settings.from_env({})
    for item in dataclasses.fields(Settings):
        if item.name not in derived:
            assert getattr(bare, item.name) == getattr(read, item.name), item.name


def test_every_field_is_declared_with_its_variable_and_meaning() -> None:
    specs = dict(setting_specs())
    assert set(specs) == {item.name for item in dataclasses.fields(Settings)}
    names = [spec.env for spec in specs.values()]
    assert len(names) == len(set(names))
    assert all(spec.meaning for spec in specs.values())


def _readme_configuration_rows() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        variable = cells[0].strip("`")
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", variable), f"one variable per row: {line}"
        assert variable not in rows, f"{variable} is listed twice"
        rows[variable] = cells[1].replace("`", "")
    return rows


def test_readme_configuration_table_lists_every_variable_with_its_default() -> None:
    rows = _readme_configuration_rows()
    declared = {spec.env: spec.documented_default for _, spec in setting_specs()}
    assert sorted(set(declared) - set(rows)) == [], "settings missing from the README table"
    assert sorted(set(rows) - set(declared)) == [], "README rows that are no setting"
    wrong = {name: (rows[name], default) for name, default in declared.items()}
    assert {k: v for k, v in wrong.items() if v[0] != v[1]} == {}


def test_configuration_table_renders_every_setting() -> None:
    table = configuration_table()
    for _, spec in setting_specs():
        assert f"| `{spec.env}` |" in table


@pytest.mark.parametrize("model", ["claude sonnet@x", "-rm", "so\tnnet", "a" * 129, "m'"])
def test_a_claude_model_that_every_create_job_would_refuse_stops_the_start(model: str) -> None:
    with pytest.raises(ConfigError, match="CLAUDE_CODE_MODEL"):
        Settings.from_env({"CLAUDE_CODE_MODEL": model})


@pytest.mark.parametrize(
    "model", ["sonnet", "claude-sonnet-5-5", "claude-sonnet-4-5@20250929", "opus[1m]"]
)
def test_model_names_follow_one_rule_at_start_and_per_job(model: str) -> None:
    assert Settings.from_env({"CLAUDE_CODE_MODEL": model}).claude_model == model
    assert model_name_problem(model) is None


def test_model_map_targets_follow_the_same_rule() -> None:
    with pytest.raises(ConfigError, match="CLAUDE_CODE_MODEL_MAP"):
        Settings.from_env({"CLAUDE_CODE_MODEL_MAP": "sonnet=claude sonnet"})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WORKER_IMAGE", "My Image"),
        ("WORKER_IMAGE", "worker:"),
        ("CLAUDE_CODE_IMAGE", "Claude:tag"),
        ("JOB_RELAY_IMAGE", "relay image"),
        ("WORKER_NETWORK", "container:abc"),
        ("WORKER_NETWORK", "my net"),
        ("WORKER_CPUS", "0.001"),
        ("WORKER_CPUS", "two"),
        ("WORKER_HOME_MB", "1"),
    ],
)
def test_settings_every_job_derives_from_are_checked_at_start(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


@pytest.mark.parametrize(
    "image",
    [
        "ironclaw-worker:latest",
        "registry.example:5000/team/worker:1.2",
        "worker@sha256:" + "a" * 64,
        "sha256:" + "b" * 64,
        "localhost/my_worker",
    ],
)
def test_real_image_references_are_accepted(image: str) -> None:
    assert Settings.from_env({"WORKER_IMAGE": image}).worker_image == image


def test_sizes_are_read_in_mib_and_kept_in_bytes() -> None:
    s = Settings.from_env({"WORKER_TMP_MB": "64", "ORCHESTRATOR_HTTP_MAX_BODY_MB": "16"})
    assert s.worker_tmp_bytes == 64 << 20
    assert s.http_max_body_bytes == 16 << 20
    assert Settings.from_env({"WORKER_CPUS": "0"}).worker_cpus == 0


@pytest.mark.parametrize(
    "model", ["sonnet", "claude sonnet@x", "vertex@2025", "-x", "a/b:c", "a" * 128, "a" * 129]
)
def test_start_up_and_create_job_accept_exactly_the_same_model_names(model: str) -> None:
    from orchestrator.errors import InvalidArgument
    from orchestrator.jobs.admission import validate_model_name

    try:
        validate_model_name(model)
        per_job = True
    except InvalidArgument:
        per_job = False
    try:
        Settings.from_env({"CLAUDE_CODE_MODEL": model})
        at_start = True
    except ConfigError:
        at_start = False
    assert per_job == at_start
