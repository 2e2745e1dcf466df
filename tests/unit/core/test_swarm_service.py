"""The Swarm backend's pure parts: a job's service built from its container spec, task and node
states read as exits, OOM kills and lost nodes, placement admitted from a request."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator.containers.exit_notice import exit_event
from orchestrator.containers.spec import build_container_spec, tmpfs_bytes
from orchestrator.containers.swarm_spec import (
    GUARD_ARGV0,
    NO_NEW_PRIVS_EXIT_CODE,
    NO_NEW_PRIVS_GUARD,
    SwarmPlacement,
    build_service,
)
from orchestrator.containers.swarm_tasks import nodes_by_id, service_info
from orchestrator.domain.jobs import CreateJobRequest, JobLimits, JobMode, TerminalReason
from orchestrator.errors import ConfigError, FailedPrecondition, InvalidArgument
from orchestrator.jobs.admission import admit
from orchestrator.jobs.manager import ContainerJobManager
from orchestrator.settings import Settings
from orchestrator.tokens import TokenStore
from tests.fakes.fake_backend import FakeBackend

LIMITS = JobLimits(
    max_iterations=50,
    timeout_seconds=3600,
    memory_mb=256,
    llm_token_budget=0,
    llm_call_budget=0,
    llm_max_tokens_per_call=4096,
    claude_max_turns=50,
    claude_model="sonnet",
)
SWARM_ENV = {"ORCHESTRATOR_INSTANCE": "unit", "CONTAINER_BACKEND": "swarm", "JOB_NETWORK": "bridge"}
JOB_ID = "8c5c1f3e-0000-4000-8000-000000000001"


def _spec(**settings_env: str) -> Any:
    settings = Settings.from_env({**SWARM_ENV, **settings_env})
    return build_container_spec(
        settings=settings,
        job_id=JOB_ID,
        mode=JobMode.WORKER,
        limits=LIMITS,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        token="irc_secret_token_value",
        orchestrator_url="http://10.0.0.1:50052",
        project_dir="/base/projects/p",
        placement=("node.labels.zone==b",),
        binds_host_paths=False,  # as the manager asks for a SwarmBackend
    )


def _service(**kwargs: Any) -> Any:
    options: dict[str, Any] = {
        "placement": SwarmPlacement(("node.role==worker",), 500_000_000, 128 << 20),
        "image_entrypoint": ["ironclaw-worker"],
        "image_cmd": [],
        "guard_no_new_privileges": True,
        "stop_grace_s": 10,
    }
    options.update(kwargs)
    return build_service(_spec(), **options)


def test_one_replica_never_restarted_with_the_job_labels_on_service_and_task() -> None:
    service = _service()
    template = service.task_template
    assert service.mode == {"Replicated": {"Replicas": 1}}
    assert template["RestartPolicy"]["Condition"] == "none"
    assert service.labels["ironclaw.job_id"] == JOB_ID
    assert template["ContainerSpec"]["Labels"] == service.labels
    assert service.name == f"ironclaw-worker-{JOB_ID}"


def test_the_single_host_limits_and_hardening_are_in_the_service() -> None:
    container = _service().task_template["ContainerSpec"]
    resources = _service().task_template["Resources"]
    assert resources["Limits"] == {
        "MemoryBytes": 256 << 20,
        "Pids": 1024,
        "NanoCPUs": 1_000_000_000,
    }
    assert container["CapabilityDrop"] == ["ALL"]
    assert container["CapabilityAdd"] == ["CAP_CHOWN"]
    assert container["User"] == "1000:1000"
    assert container["ReadOnly"] is True
    assert container["Init"] is False
    assert container["Dir"] == "/workspace"
    mounts = {m["Target"]: m for m in container["Mounts"]}
    # The project is no path of the node: an anonymous volume of the task, nothing bound, no
    # driver options (the one kind of volume the node removes with the task's container).
    assert mounts["/workspace"] == {
        "Type": "volume",
        "Target": "/workspace",
        "VolumeOptions": {"NoCopy": False},
    }
    assert not [m for m in container["Mounts"] if m["Type"] == "bind"]
    assert mounts["/tmp"]["TmpfsOptions"]["SizeBytes"] == 512 << 20
    assert mounts["/home/sandbox"]["TmpfsOptions"] == {"Mode": 0o1777, "SizeBytes": 1 << 30}


def test_placement_joins_the_settings_and_the_job_and_reserves_resources() -> None:
    template = _service().task_template
    assert template["Placement"]["Constraints"] == ["node.role==worker", "node.labels.zone==b"]
    assert template["Resources"]["Reservations"] == {
        "NanoCPUs": 500_000_000,
        "MemoryBytes": 128 << 20,
    }


def test_the_agent_runs_behind_the_no_new_privileges_guard_unless_opted_out() -> None:
    guarded = _service().task_template
    assert guarded["ContainerSpec"]["Command"] == ["/bin/sh", "-c", NO_NEW_PRIVS_GUARD, GUARD_ARGV0]
    assert guarded["ContainerSpec"]["Args"] == ["ironclaw-worker"]
    plain = _service(guard_no_new_privileges=False, image_entrypoint=()).task_template
    assert "Command" not in plain["ContainerSpec"]
    assert "Args" not in plain["ContainerSpec"]


@pytest.mark.parametrize(("no_new_privs", "expected"), [("1", 0), ("0", NO_NEW_PRIVS_EXIT_CODE)])
def test_the_guard_runs_the_agent_only_with_no_new_privileges(
    tmp_path: Path, no_new_privs: str, expected: int
) -> None:
    # The guard reads /proc/self/status: run it against a copy with the flag chosen.
    status = tmp_path / "status"
    status.write_text(f"Name:\tsh\nNoNewPrivs:\t{no_new_privs}\n")
    script = NO_NEW_PRIVS_GUARD.replace("/proc/self/status", str(status))
    result = subprocess.run(
        ["/bin/sh", "-c", script, GUARD_ARGV0, "sh", "-c", "echo agent ran"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == expected, result.stderr
    assert ("agent ran" in result.stdout) is (expected == 0)
    if expected:
        assert "no-new-privileges" in result.stderr


def test_what_a_service_cannot_do_is_refused() -> None:
    with pytest.raises(FailedPrecondition, match="WORKER_RUNTIME=runsc"):
        build_service(
            replace(_spec(), runtime="runsc"),
            placement=SwarmPlacement(),
            image_entrypoint=["x"],
            image_cmd=[],
            guard_no_new_privileges=True,
            stop_grace_s=1,
        )
    with pytest.raises(FailedPrecondition, match="neither an entrypoint"):
        _service(image_entrypoint=())


def test_no_secret_in_the_spec_repr() -> None:
    assert "irc_secret_token_value" not in repr(_spec())


@pytest.mark.parametrize(
    ("options", "size"),
    [("rw,size=512m", 512 << 20), ("size=64k,mode=0700", 64 << 10), ("rw", None)],
)
def test_tmpfs_sizes(options: str, size: int | None) -> None:
    assert tmpfs_bytes(options) == size


# ---- task states ------------------------------------------------------------------------

NODES = nodes_by_id(
    [
        {"ID": "n1", "Description": {"Hostname": "alpha"}, "Status": {"State": "ready"}},
        {"ID": "n2", "Description": {"Hostname": "beta"}, "Status": {"State": "down"}},
    ]
)


def _task(state: str, node: str = "n1", exit_code: int | None = None, index: int = 1) -> Any:
    status: dict[str, Any] = {"State": state, "Timestamp": "2026-01-01T00:00:00.5Z"}
    if exit_code is not None:
        status["ContainerStatus"] = {"ExitCode": exit_code, "ContainerID": "c", "PID": 0}
    return {"NodeID": node, "Status": status, "Version": {"Index": index}}


def _svc(replicas: int = 1) -> dict[str, Any]:
    return {
        "ID": "s1",
        "Spec": {
            "Name": "ironclaw-worker-x",
            "Labels": {"ironclaw.job_id": JOB_ID},
            "Mode": {"Replicated": {"Replicas": replicas}},
        },
    }


def test_a_task_before_running_is_created_and_running_is_running() -> None:
    assert service_info(_svc(), [], NODES).status == "created"
    assert not service_info(_svc(), [_task("preparing")], NODES).exited
    running = service_info(_svc(), [_task("running")], NODES)
    assert running.running
    assert running.started_at is not None


def test_an_ended_task_is_an_exit_with_its_code() -> None:
    info = service_info(_svc(), [_task("failed", exit_code=3)], NODES)
    assert info.exited
    assert info.exit_code == 3
    assert not info.oom_killed
    event = exit_event(info)
    assert (event.job_id, event.exit_code, event.lost_node) == (JOB_ID, 3, None)


def test_a_sigkill_of_a_service_still_wanting_its_replica_is_an_oom_kill() -> None:
    assert service_info(_svc(), [_task("failed", exit_code=137)], NODES).oom_killed
    # Stopped by the orchestrator (scaled to zero) first: a kill after the grace period.
    assert not service_info(_svc(replicas=0), [_task("failed", exit_code=137)], NODES).oom_killed


def test_a_running_task_on_a_down_node_is_lost_with_the_node_named() -> None:
    info = service_info(_svc(), [_task("running", node="n2")], NODES)
    assert info.lost_node == "beta"
    assert not info.running
    assert exit_event(info).lost_node == "beta"
    # An ended task stays an exit even once its node is down.
    assert service_info(_svc(), [_task("complete", "n2", 0)], NODES).lost_node is None


def test_the_newest_task_counts() -> None:
    tasks = [_task("failed", exit_code=1, index=5), _task("running", index=9)]
    assert service_info(_svc(), tasks, NODES).running


def test_an_exit_of_the_guard_names_the_node_and_the_fix() -> None:
    tasks = [_task("failed", exit_code=NO_NEW_PRIVS_EXIT_CODE)]
    info = service_info(_svc(), tasks, NODES)
    detail = info.detail
    assert "no-new-privileges is off on node alpha" in detail
    assert "daemon.json" in detail


# ---- admission, settings, manager -------------------------------------------------------


def test_placement_labels_become_constraints_on_swarm_only() -> None:
    request = CreateJobRequest(task="t", placement_node_labels={"zone": "b", "gpu": "yes"})
    admitted = admit(request, Settings.from_env(SWARM_ENV), lambda *_: None)  # type: ignore[arg-type,return-value]
    assert admitted.placement == ("node.labels.gpu==yes", "node.labels.zone==b")
    with pytest.raises(FailedPrecondition, match="CONTAINER_BACKEND=swarm"):
        admit(request, Settings.from_env({}), lambda *_: None)  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize("labels", [{"zone": "a b"}, {"zone": "a,node.role==manager"}, {"-x": "1"}])
def test_a_placement_label_that_would_change_the_constraint_is_refused(
    labels: dict[str, str],
) -> None:
    request = CreateJobRequest(task="t", placement_node_labels=labels)
    with pytest.raises(InvalidArgument, match=r"placement\.node_labels"):
        admit(request, Settings.from_env(SWARM_ENV), lambda *_: None)  # type: ignore[arg-type,return-value]


def test_swarm_settings_are_checked() -> None:
    # Isolated by default on a Swarm too; bridge stays an opt-out.
    assert Settings.from_env({"CONTAINER_BACKEND": "swarm"}).job_network == "isolated"
    with pytest.raises(ConfigError, match="SWARM_PLACEMENT_CONSTRAINTS"):
        Settings.from_env({**SWARM_ENV, "SWARM_PLACEMENT_CONSTRAINTS": "zone=a"})
    settings = Settings.from_env(
        {**SWARM_ENV, "SWARM_PLACEMENT_CONSTRAINTS": "node.labels.pool==jobs, node.role!=manager"}
    )
    assert settings.swarm_constraints == ("node.labels.pool==jobs", "node.role!=manager")


async def test_a_lost_node_fails_the_job_node_lost_naming_the_node(tmp_path: Path) -> None:
    (tmp_path / "projects").mkdir()
    settings = Settings.from_env({"IRONCLAW_BASE_DIR": str(tmp_path), "ORCHESTRATOR_PERSIST": "0"})
    engine = FakeBackend()
    manager = ContainerJobManager(settings, engine, TokenStore(), orchestrator_url="http://x")
    job_id = (await manager.create_job(CreateJobRequest(task="t"))).job.job_id
    container = engine.container_of(job_id)
    info = replace(container.info(), running=False, status="dead", lost_node="beta")
    await manager.handle_container_exit(exit_event(info))
    job = await manager.stop_job(job_id)
    await manager.close()
    assert job.result is not None
    assert job.result.reason is TerminalReason.NODE_LOST
    assert "node beta" in job.result.message


def test_a_command_replaces_the_image_command_never_its_entrypoint() -> None:
    spec = replace(_spec(), command=("--version",))
    options: dict[str, Any] = {"placement": SwarmPlacement(), "stop_grace_s": 1}
    guarded = build_service(
        spec, image_entrypoint=["agent"], image_cmd=["run"], guard_no_new_privileges=True, **options
    ).task_template["ContainerSpec"]
    assert guarded["Args"] == ["agent", "--version"]
    plain = build_service(
        spec,
        image_entrypoint=["agent"],
        image_cmd=["run"],
        guard_no_new_privileges=False,
        **options,
    ).task_template["ContainerSpec"]
    assert plain["Args"] == ["--version"]
    assert "Command" not in plain


def test_a_warm_pool_is_refused_on_swarm() -> None:
    # A slot's container starts before the job (and so its node) is known.
    with pytest.raises(ConfigError, match="WARM_POOL"):
        Settings.from_env({**SWARM_ENV, "WARM_POOL": "worker=1"})
