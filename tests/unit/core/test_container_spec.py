"""The container spec of a job: hardened, and its environment is its identity only."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from ironclaw_contract import container_env
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
TOKEN = "irc_secret_token_value"


def _spec(mode: JobMode = JobMode.WORKER, settings: Settings | None = None) -> ContainerSpec:
    settings = settings or Settings.from_env({"ORCHESTRATOR_INSTANCE": "unit"})
    return build_container_spec(
        settings=settings,
        job_id="8c5c1f3e-0000-4000-8000-000000000001",
        mode=mode,
        limits=LIMITS,
        created_at=NOW,
        token=TOKEN,
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


IDENTITY = {
    "IRONCLAW_JOB_ID": "8c5c1f3e-0000-4000-8000-000000000001",
    "IRONCLAW_ORCHESTRATOR_URL": "http://host.docker.internal:50052",
    "IRONCLAW_WORKER_TOKEN": TOKEN,
    "IRONCLAW_WORKSPACE": "/workspace",
}
# Every setting that could put something of the job, or a secret, into its container.
LOADED = {
    "ANTHROPIC_API_KEY": "sk-ant-real-key",
    "OPENAI_API_KEY": "sk-openai-real",
    "CLAUDE_CODE_MODEL": "opus",
    "CLAUDE_CODE_MAX_TURNS": "9",
    "CLAUDE_CODE_ALLOWED_TOOLS": "bash,grep",
    "WORKER_MAX_ITERATIONS": "7",
}


@pytest.mark.parametrize("mode", list(JobMode))
@pytest.mark.parametrize("opt_in", [False, True])
def test_the_environment_is_the_identity_and_there_is_no_command(
    mode: JobMode, opt_in: bool
) -> None:
    settings = Settings.from_env({**LOADED, "CLAUDE_CODE_KEY_IN_CONTAINER": "1" if opt_in else "0"})
    spec = _spec(mode, settings)
    assert spec.env == IDENTITY
    assert set(spec.env) == set(container_env.ALL)
    assert spec.command == ()  # the image's entrypoint, which reads the rest from GET /job
    assert spec.secret_env_keys == {"IRONCLAW_WORKER_TOKEN"}


def test_the_claude_container_differs_only_in_name_and_image() -> None:
    worker = _spec(JobMode.WORKER)
    claude = _spec(JobMode.CLAUDE_CODE)
    assert claude.name == "ironclaw-claude-8c5c1f3e-0000-4000-8000-000000000001"
    assert claude.image == "ironclaw-claude:latest"
    assert replace(claude, name=worker.name, image=worker.image, labels=worker.labels) == worker


def test_repr_masks_the_token() -> None:
    text = repr(_spec(JobMode.CLAUDE_CODE, Settings.from_env({"ANTHROPIC_API_KEY": "k"})))
    assert TOKEN not in text


def test_runtime_and_limits_come_from_settings() -> None:
    settings = replace(
        Settings.from_env({}), worker_runtime="runsc", worker_cpu_shares=512, worker_pids_limit=99
    )
    spec = _spec(settings=settings)
    assert spec.runtime == "runsc"
    assert spec.cpu_shares == 512
    assert spec.pids_limit == 99
    assert Secret("x") != Secret("y")
