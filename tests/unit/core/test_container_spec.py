from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from orchestrator.containers.backend import ContainerSpec
from orchestrator.containers.spec import build_container_spec
from orchestrator.domain.jobs import JobLimits, JobMode
from orchestrator.secrets import Secret
from orchestrator.settings import Settings

LIMITS = JobLimits(
    max_iterations=50,
    timeout_seconds=3600,
    memory_mb=2048,
    llm_token_budget=0,
    llm_call_budget=0,
    llm_max_tokens_per_call=4096,
    claude_max_turns=50,
    claude_model="sonnet",
)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _spec(mode: JobMode = JobMode.WORKER, settings: Settings | None = None) -> ContainerSpec:
    settings = settings or Settings.from_env({"ORCHESTRATOR_INSTANCE": "unit"})
    return build_container_spec(
        settings=settings,
        job_id="8c5c1f3e-0000-4000-8000-000000000001",
        mode=mode,
        limits=LIMITS,
        created_at=NOW,
        deadline=NOW + timedelta(hours=1),
        token="irc_secret_token_value",
        orchestrator_url="http://host.docker.internal:50052",
        project_dir="/base/projects/p",
    )


def test_worker_container_is_hardened() -> None:
    spec = _spec()
    assert spec.name == "ironclaw-worker-8c5c1f3e-0000-4000-8000-000000000001"
    s = spec
    assert s.image == "ironclaw-worker:latest"
    assert s.command == ()  # the image's entrypoint, ironclaw-worker
    assert s.cap_drop == ("ALL",)
    assert s.cap_add == ("CHOWN",)
    assert s.security_opt == ("no-new-privileges:true",)
    assert s.tmpfs == {"/tmp": "rw,nosuid,nodev,size=512m"}
    assert s.memory_bytes == s.memory_swap_bytes == 2048 * 1024 * 1024
    assert s.cpu_shares == 1024
    assert s.pids_limit == 1024
    assert s.user == "1000:1000"
    assert s.working_dir == "/workspace"
    assert s.network == "bridge"
    assert s.extra_hosts == {"host.docker.internal": "host-gateway"}
    assert [(m.host_path, m.container_path, m.read_only) for m in s.mounts] == [
        ("/base/projects/p", "/workspace", False)
    ]
    assert s.labels == {
        "ironclaw.job_id": "8c5c1f3e-0000-4000-8000-000000000001",
        "ironclaw.mode": "worker",
        "ironclaw.created_at": NOW.isoformat(),
        "ironclaw.instance": "unit",
    }


def test_env_carries_job_settings_and_no_provider_secret() -> None:
    settings = Settings.from_env(
        {"ANTHROPIC_API_KEY": "sk-ant-real-key", "OPENAI_API_KEY": "sk-openai-real"}
    )
    env = _spec(settings=settings).env
    assert env["IRONCLAW_WORKER_TOKEN"] == "irc_secret_token_value"
    assert env["IRONCLAW_JOB_ID"] == "8c5c1f3e-0000-4000-8000-000000000001"
    assert env["IRONCLAW_ORCHESTRATOR_URL"] == "http://host.docker.internal:50052"
    assert env["IRONCLAW_WORKSPACE"] == "/workspace"
    assert env["IRONCLAW_MAX_ITERATIONS"] == "50"
    values = " ".join(env.values())
    assert "sk-ant-real-key" not in values
    assert "sk-openai-real" not in values


def test_claude_container_gets_the_orchestrator_route_and_the_job_token_as_key() -> None:
    settings = Settings.from_env({"ANTHROPIC_API_KEY": "sk-ant-real-key"})
    spec = _spec(JobMode.CLAUDE_CODE, settings)
    env = spec.env
    assert spec.name.startswith("ironclaw-claude-")
    assert spec.image == "ironclaw-claude:latest"
    assert spec.command[0] == "--job-id"
    assert env["ANTHROPIC_BASE_URL"] == (
        "http://host.docker.internal:50052/worker/8c5c1f3e-0000-4000-8000-000000000001/anthropic"
    )
    assert env["ANTHROPIC_API_KEY"] == "irc_secret_token_value"
    assert "sk-ant-real-key" not in " ".join(env.values())


def test_repr_masks_the_token() -> None:
    text = repr(_spec(JobMode.CLAUDE_CODE, Settings.from_env({"ANTHROPIC_API_KEY": "k"})))
    assert "irc_secret_token_value" not in text


def test_runtime_and_limits_come_from_settings() -> None:
    settings = replace(
        Settings.from_env({}), worker_runtime="runsc", worker_cpu_shares=512, worker_pids_limit=99
    )
    spec = _spec(settings=settings)
    assert spec.runtime == "runsc"
    assert spec.cpu_shares == 512
    assert spec.pids_limit == 99
    assert Secret("x") != Secret("y")
