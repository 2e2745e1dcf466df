"""The control plane as an operator meets it: grpcurl via reflection, health, the admin token,
and the `ironclaw job` CLI, all against a real orchestrator on free ports."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ironclaw_client.api.v1 import jobs_pb2 as pb
from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc
from tests.helpers import wait_for

pytestmark = pytest.mark.docker
GRPCURL = str(Path(sys.executable).parent / "grpcurl")


async def _run(*argv: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Any:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(
        proc.communicate(stdin.encode() if stdin is not None else None), timeout=120
    )
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def orch(start_orch: Any, make_settings: Any, test_agent_image: str) -> Any:
    return await start_orch(make_settings(WORKER_IMAGE=test_agent_image))


async def test_grpcurl_lists_describes_and_calls_through_reflection(orch: Any) -> None:
    target = f"127.0.0.1:{orch.grpc_port}"
    code, out, err = await _run(GRPCURL, "-plaintext", target, "list")
    assert code == 0, err
    services = out.split()
    assert "ironclaw.orchestrator.v1.JobService" in services
    assert "grpc.health.v1.Health" in services

    code, out, err = await _run(
        GRPCURL, "-plaintext", target, "describe", "ironclaw.orchestrator.v1.JobService"
    )
    assert code == 0, err
    assert "rpc CreateJob" in out
    assert "rpc WatchJob" in out

    code, out, err = await _run(
        GRPCURL, "-plaintext", target, "describe", "ironclaw.orchestrator.v1.JobService.CreateJob"
    )
    assert code == 0, err
    assert "ironclaw.orchestrator.v1.JobService.CreateJob is a method" in out

    code, out, err = await _run(
        GRPCURL,
        "-plaintext",
        "-d",
        json.dumps({"task": "complete OK from grpcurl", "mode": "JOB_MODE_WORKER"}),
        target,
        "ironclaw.orchestrator.v1.JobService/CreateJob",
    )
    assert code == 0, err
    job = json.loads(out)["job"]
    assert job["state"] in ("JOB_STATE_RUNNING", "JOB_STATE_STOPPED")

    code, out, err = await _run(GRPCURL, "-plaintext", target, "grpc.health.v1.Health/Check")
    assert code == 0, err
    assert json.loads(out)["status"] == "SERVING"


async def test_grpcurl_bad_enum_is_a_clear_invalid_argument(orch: Any) -> None:
    code, _, err = await _run(
        GRPCURL,
        "-plaintext",
        "-d",
        json.dumps({"task": "x", "mode": 9}),
        f"127.0.0.1:{orch.grpc_port}",
        "ironclaw.orchestrator.v1.JobService/CreateJob",
    )
    assert code != 0
    assert "InvalidArgument" in err
    assert "mode 9 is unknown" in err


async def test_admin_token_guards_every_rpc_but_health(
    start_orch: Any, make_settings: Any, test_agent_image: str
) -> None:
    orch = await start_orch(
        make_settings(WORKER_IMAGE=test_agent_image, ORCHESTRATOR_ADMIN_TOKEN="admin-s3cret")
    )
    async with aio.insecure_channel(f"127.0.0.1:{orch.grpc_port}") as channel:
        stub = pb_grpc.JobServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            await stub.ListJobs(pb.ListJobsRequest())
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "admin-s3cret" not in (info.value.details() or "")
        with pytest.raises(grpc.RpcError) as info:
            await stub.ListJobs(pb.ListJobsRequest(), metadata=(("authorization", "Bearer wrong"),))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            async for _ in stub.WatchJob(pb.WatchJobRequest(job_id="x")):
                pass
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = await stub.ListJobs(
            pb.ListJobsRequest(), metadata=(("authorization", "Bearer admin-s3cret"),)
        )
        assert list(ok.jobs) == []
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest())
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_turns_not_serving_on_shutdown(orch: Any) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{orch.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        await orch.control_plane.set_serving(False)
        answer = await health.Check(health_pb2.HealthCheckRequest())
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_cli_creates_waits_lists_and_reports_json(orch: Any, base_dir: Path) -> None:
    env = {
        "IRONCLAW_ORCHESTRATOR": f"127.0.0.1:{orch.grpc_port}",
        "DEMO_GH": "ghp_cli_secret_value_1234",
    }
    ironclaw = str(Path(sys.executable).parent / "ironclaw")
    code, out, err = await _run(
        ironclaw,
        "job",
        "create",
        "--grant",
        "github=DEMO_GH",
        "--wait",
        "--json",
        "complete OK cli works",
        env=env,
    )
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert "snapshot" in lines[0]
    final = lines[-1]
    assert "result" in final
    assert "ghp_cli_secret_value_1234" not in out + err

    code, out, err = await _run(ironclaw, "job", "list", "--json", env=env)
    assert code == 0, err
    jobs = [json.loads(line) for line in out.splitlines()]
    assert jobs[0]["state"] == "Stopped"
    assert jobs[0]["credential_names"] == ["github"]
    assert jobs[0]["result"]["reason"] == "COMPLETED"

    code, out, err = await _run(ironclaw, "job", "get", jobs[0]["job_id"], env=env)
    assert code == 0
    assert "COMPLETED: cli works" in out

    code, _, err = await _run(ironclaw, "job", "get", "nope", env=env)
    assert code == 1
    assert "not a UUID" in err
    assert "Traceback" not in err

    code, _, err = await _run(
        ironclaw, "job", "create", "--grant", "github=UNSET_VAR_X", "x", env=env
    )
    assert code == 2
    assert "UNSET_VAR_X is not set" in err


async def test_cli_grants_catalogue_tools_and_explains_unknown_ones(
    orch: Any, base_dir: Path
) -> None:
    (base_dir / "mcp-servers.json").write_text(
        json.dumps({"mcpServers": {"local": {"command": "local-mcp"}}})
    )
    (base_dir / "wasm-tools").mkdir()
    (base_dir / "wasm-tools" / "noop.wat").write_text('(module (func (export "_start")))')
    (base_dir / "wasm-tools" / "noop.json").write_text(
        json.dumps({"description": "does nothing", "module": "noop.wat"})
    )
    env = {"IRONCLAW_ORCHESTRATOR": f"127.0.0.1:{orch.grpc_port}"}
    ironclaw = str(Path(sys.executable).parent / "ironclaw")
    code, out, err = await _run(
        ironclaw,
        "job",
        "create",
        "--mcp-server",
        "local",
        "--wasm-tool",
        "noop",
        "--json",
        "complete OK tools granted",
        env=env,
    )
    assert code == 0, err
    created = json.loads(out)
    assert (created["mcp_servers"], created["wasm_tools"]) == (["local"], ["noop"])
    code, out, err = await _run(ironclaw, "job", "get", created["job_id"], env=env)
    assert code == 0, err
    assert "tools:    mcp:local, wasm:noop" in out

    code, _, err = await _run(ironclaw, "job", "create", "--mcp-server", "nope", "x", env=env)
    assert code == 1
    assert "MCP server 'nope' is not in the catalogue" in err
    assert "known: local" in err
    assert "INVALID_ARGUMENT" in err
    assert "Traceback" not in err


async def test_cli_explains_an_unreachable_orchestrator() -> None:
    ironclaw = str(Path(sys.executable).parent / "ironclaw")
    code, _, err = await _run(ironclaw, "job", "list", env={"IRONCLAW_ORCHESTRATOR": "127.0.0.1:1"})
    assert code == 1
    assert "cannot reach the orchestrator at 127.0.0.1:1" in err


async def test_cli_logs_prompt_stop_and_cleanup(orch: Any) -> None:
    env = {"IRONCLAW_ORCHESTRATOR": f"127.0.0.1:{orch.grpc_port}"}
    ironclaw = str(Path(sys.executable).parent / "ironclaw")
    code, out, err = await _run(ironclaw, "job", "create", "--json", "sleep", env=env)
    assert code == 0, err
    job_id = json.loads(out)["job_id"]

    async def logged() -> bool:
        code, out, _ = await _run(ironclaw, "job", "logs", job_id, env=env)
        return code == 0 and "test agent: sleep" in out

    await wait_for(logged, what="the container log")
    code, out, err = await _run(ironclaw, "job", "prompt", job_id, "also run the linter", env=env)
    assert code == 0, err
    prompt = orch.manager.next_prompt(job_id)
    assert prompt is not None
    assert prompt.content == "also run the linter"
    code, _, err = await _run(ironclaw, "job", "cleanup", job_id, env=env)
    assert code == 1
    assert "stop it before cleaning it up" in err
    code, out, err = await _run(ironclaw, "job", "stop", "--json", job_id, env=env)
    assert code == 0, err
    assert json.loads(out)["state"] == "Stopped"
    # The dead container's log tail stays with the job and is what `logs` shows.
    code, out, err = await _run(ironclaw, "job", "logs", job_id, env=env)
    assert code == 0, err
    assert "test agent: sleep" in out
    code, out, err = await _run(ironclaw, "job", "cleanup", job_id, env=env)
    assert code == 0, err
    code, _, err = await _run(ironclaw, "job", "get", job_id, env=env)
    assert code == 1
    assert "not found" in err


async def test_stream_logs_follows_until_the_container_ends(orch: Any) -> None:
    from orchestrator.domain.jobs import CreateJobRequest

    created = await orch.manager.create_job(CreateJobRequest(task="sleep"))
    job_id = created.job.job_id
    async with aio.insecure_channel(f"127.0.0.1:{orch.grpc_port}") as channel:
        stub = pb_grpc.JobServiceStub(channel)
        chunks: list[bytes] = []

        async def follow() -> None:
            async for chunk in stub.StreamLogs(pb.StreamLogsRequest(job_id=job_id, follow=True)):
                chunks.append(chunk.data)

        follower = asyncio.create_task(follow())
        await wait_for(lambda: b"test agent: sleep" in b"".join(chunks), what="log output")
        await stub.StopJob(pb.StopJobRequest(job_id=job_id))
        await asyncio.wait_for(follower, timeout=20)
