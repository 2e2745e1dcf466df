"""The container spec of a job: hardened, and its environment is its identity only."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from ironclaw_contract import container_env
from orchestrator.containers.backend import ContainerSpec, EngineCapabilities, ScratchWorkspace
from orchestrator.containers.docker_backend import (
    host_config_arguments,
    writable_layer_limit_possible,
)
from orchestrator.containers.engine_checks import EngineCheck, check_engine_capabilities
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


def _spec(
    mode: JobMode = JobMode.WORKER,
    settings: Settings | None = None,
    binds_host_paths: bool = True,
) -> ContainerSpec:
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
        agent_image=AGENT_IMAGE if mode is JobMode.AGENT else None,
        binds_host_paths=binds_host_paths,
    )


AGENT_IMAGE = "ironclaw-agent-mini-swe-agent:latest"


def test_worker_container_is_hardened() -> None:
    spec = _spec()
    assert spec.name == "ironclaw-worker-8c5c1f3e-0000-4000-8000-000000000001"
    s = spec
    assert s.image == "ironclaw-worker:latest"
    assert s.command == ()  # the image's entrypoint, ironclaw-worker
    assert s.cap_drop == ("ALL",)
    assert s.cap_add == ("CHOWN",)
    assert s.security_opt == ("no-new-privileges:true",)
    assert s.tmpfs == {
        "/tmp": "rw,nosuid,nodev,size=512m",
        "/home/sandbox": "rw,nosuid,nodev,exec,size=1024m,uid=1000,gid=1000,mode=0700",
    }
    assert s.read_only_rootfs
    assert s.nano_cpus == 1_000_000_000
    assert s.writable_layer_bytes == 4096 << 20
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
    assert s.scratch_workspace is None
    assert s.labels == {
        "ironclaw.job_id": "8c5c1f3e-0000-4000-8000-000000000001",
        "ironclaw.mode": "worker",
        "ironclaw.created_at": NOW.isoformat(),
        "ironclaw.instance": "unit",
    }


def test_without_host_paths_nothing_is_bound_and_the_workspace_is_the_containers_own() -> None:
    spec = _spec(binds_host_paths=False)
    assert spec.mounts == ()
    assert spec.scratch_workspace == ScratchWorkspace("/workspace")
    assert spec.working_dir == "/workspace"
    assert spec.env["IRONCLAW_WORKSPACE"] == "/workspace"
    # The Docker backend binds host paths: such a spec is a bug there, not a job without files.
    with pytest.raises(ValueError, match="no scratch workspace"):
        host_config_arguments(spec)


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
    # Agent mode runs its runner whatever the image's own entrypoint; the others the image's.
    assert spec.entrypoint == (("ironclaw-agent-run",) if mode is JobMode.AGENT else ())


def test_the_claude_container_differs_only_in_name_and_image() -> None:
    worker = _spec(JobMode.WORKER)
    claude = _spec(JobMode.CLAUDE_CODE)
    assert claude.name == "ironclaw-claude-8c5c1f3e-0000-4000-8000-000000000001"
    assert claude.image == "ironclaw-claude:latest"
    assert replace(claude, name=worker.name, image=worker.image, labels=worker.labels) == worker


def test_the_agent_container_differs_only_in_name_image_and_entrypoint() -> None:
    worker = _spec(JobMode.WORKER)
    agent = _spec(JobMode.AGENT)
    assert agent.name == "ironclaw-agent-8c5c1f3e-0000-4000-8000-000000000001"
    # The image is the catalogue entry's; the caller never names one.
    assert agent.image == AGENT_IMAGE
    assert agent.labels["ironclaw.mode"] == "agent"
    same = replace(agent, name=worker.name, image=worker.image, labels=worker.labels, entrypoint=())
    assert same == worker  # the same hardening, limits, mounts and identity


def test_an_agent_spec_without_its_entry_s_image_is_a_bug_not_a_default() -> None:
    with pytest.raises(ValueError, match="catalogue entry's image"):
        build_container_spec(
            settings=Settings.from_env({}),
            job_id="8c5c1f3e-0000-4000-8000-000000000001",
            mode=JobMode.AGENT,
            limits=LIMITS,
            created_at=NOW,
            token=TOKEN,
            orchestrator_url="http://host.docker.internal:50052",
            project_dir="/base/projects/p",
        )


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


def test_cpu_quota_disk_and_tmpfs_sizes_come_from_settings() -> None:
    settings = Settings.from_env(
        {
            "WORKER_CPUS": "0.5",
            "WORKER_TMP_MB": "64",
            "WORKER_HOME_MB": "128",
            "WORKER_DISK_MB": "512",
            "WORKER_READ_ONLY_ROOTFS": "0",
        }
    )
    for mode in JobMode:
        spec = _spec(mode, replace(settings, anthropic_api_key=Secret("k")))
        assert spec.nano_cpus == 500_000_000
        assert not spec.read_only_rootfs
        assert spec.writable_layer_bytes == 512 << 20
        assert spec.tmpfs["/tmp"].endswith(",size=64m")
        assert ",size=128m," in spec.tmpfs["/home/sandbox"]
    assert _spec(settings=Settings.from_env({"WORKER_CPUS": "0"})).nano_cpus == 0


def test_host_config_carries_the_quota_read_only_root_and_tmpfs() -> None:
    spec = _spec()
    host = host_config_arguments(spec)
    assert host["nano_cpus"] == 1_000_000_000
    assert host["read_only"] is True
    assert host["tmpfs"] == dict(spec.tmpfs)
    # Only where the storage driver can enforce it: an engine that cannot refuses the create.
    assert host["storage_opt"] is None
    limited = host_config_arguments(spec, limit_writable_layer=True)
    assert limited["storage_opt"] == {"size": str(4096 << 20)}
    no_quota = host_config_arguments(replace(spec, nano_cpus=0))
    assert no_quota["nano_cpus"] is None


@pytest.mark.parametrize(
    ("info", "possible"),
    [
        ({"Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "xfs"]]}, True),
        ({"Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "extfs"]]}, False),
        ({"Driver": "fuse-overlayfs", "DriverStatus": None}, False),
        ({"Driver": "btrfs", "DriverStatus": []}, True),
        ({"Driver": "zfs"}, True),
        ({"Driver": "vfs", "DriverStatus": [["Backing Filesystem", "xfs"]]}, True),
        ({}, False),
    ],
)
def test_writable_layer_limit_is_tried_only_on_drivers_that_can_have_one(
    info: dict[str, Any], possible: bool
) -> None:
    assert writable_layer_limit_possible(info) is possible


def _caps(**fields: Any) -> EngineCapabilities:
    base: dict[str, Any] = {"cpus": 2, "cpu_quota": True, "runtimes": frozenset({"runc"})}
    return EngineCapabilities(**{**base, **fields})


def test_a_cpu_quota_the_engine_would_refuse_stops_the_start() -> None:
    too_many = check_engine_capabilities(Settings.from_env({"WORKER_CPUS": "4"}), _caps())
    assert too_many.errors
    assert "WORKER_CPUS=4" in too_many.errors[0]
    assert "2 CPU(s)" in too_many.errors[0]
    no_cfs = check_engine_capabilities(Settings.from_env({}), _caps(cpu_quota=False))
    assert no_cfs.errors
    assert "WORKER_CPUS=0" in no_cfs.errors[0]
    assert (
        check_engine_capabilities(
            Settings.from_env({"WORKER_CPUS": "0"}), _caps(cpus=1, cpu_quota=False)
        ).errors
        == ()
    )
    assert check_engine_capabilities(Settings.from_env({"WORKER_CPUS": "2"}), _caps()).errors == ()
    # An engine that cannot tell is not second-guessed.
    assert (
        check_engine_capabilities(Settings.from_env({"WORKER_CPUS": "64"}), EngineCapabilities())
        == EngineCheck()
    )


def test_what_the_engine_cannot_enforce_is_a_warning() -> None:
    writable = Settings.from_env({"WORKER_READ_ONLY_ROOTFS": "0"})
    [warning] = check_engine_capabilities(writable, _caps(storage_driver="fuse-overlayfs")).warnings
    assert "WORKER_DISK_MB is not enforced" in warning
    assert "fuse-overlayfs" in warning
    assert check_engine_capabilities(writable, _caps(writable_layer_limit=True)).warnings == ()
    # A read-only root leaves the job nothing to write in its writable layer.
    assert check_engine_capabilities(Settings.from_env({}), _caps()).warnings == ()
    runtime = Settings.from_env({"WORKER_RUNTIME": "runsc"})
    [warning] = check_engine_capabilities(runtime, _caps()).warnings
    assert "WORKER_RUNTIME=runsc" in warning
