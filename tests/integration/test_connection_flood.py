"""One job floods the worker API with 1,100 slow connections (a header line every 2 s, each
connection the server closes opened again) while the orchestrator runs as its own process
under a 1,024-descriptor limit, as systemd and Docker start it by default. Meanwhile another
job's worker-API calls succeed, gRPC ``CreateJob`` and ``GetJob`` succeed, the slow connections
are refused at once or cut off at the header timeout, the orchestrator's descriptors stay well
below the limit and its log stays small. Both job network modes: in ``isolated`` the flood
goes through the job's relay, which has its own cap."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.attacks.slow_connections import fd_soft_limit, flood_snippet, last_report, open_fds
from ironclaw_client.api.v1 import jobs_pb2 as pb
from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc
from orchestrator.containers.docker_network import relay_name
from tests.helpers import wait_for

pytestmark = pytest.mark.docker

FD_LIMIT = 1024
CONNECTIONS = 1100
FLOOD_S = 30.0
HEADER_TIMEOUT_S = 3.0
PER_SOURCE = 64
TERMINAL = (pb.JOB_STATE_STOPPED, pb.JOB_STATE_FAILED)
# Far more than a flood that is handled needs (a few throttled lines an interval), far fewer
# than one line per refused connection or failed accept.
MAX_LOG_LINES_DURING_FLOOD = 60

# The other job: calls the worker API all through the flood, then reports how it went.
VICTIM = textwrap.dedent(
    """
    import json, time
    ok, failed, slowest, start = 0, [], 0.0, time.monotonic()
    while time.monotonic() - start < {seconds}:
        began = time.monotonic()
        try:
            call("POST", "/status", {{"message": "still here", "iteration": ok}})
            call("GET", "/job")
            ok += 1
        except Exception as exc:
            failed.append(type(exc).__name__ + ": " + str(exc)[:100])
        slowest = max(slowest, time.monotonic() - began)
        time.sleep(0.2)
    print("victim " + json.dumps({{"ok": ok, "failed": failed[:5], "failures": len(failed),
                                   "slowest_s": round(slowest, 2)}}), flush=True)
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _limit_descriptors() -> None:
    # In the child before exec, as `prlimit --nofile=1024:1024` would: soft and hard, so the
    # orchestrator cannot raise it.
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


class Orchestrator:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, env: dict[str, str]) -> None:
        self.proc = proc
        self.log = log
        self.target = f"127.0.0.1:{env['ORCHESTRATOR_PORT']}"
        self.metrics_url = f"http://127.0.0.1:{env['METRICS_PORT']}/metrics"
        self.mode = env["JOB_NETWORK"]

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def metric(self, name: str, **labels: str) -> float:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            text = response.read().decode()
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        prefix = f"{name}{{{want}}} " if want else f"{name} "
        for line in text.splitlines():
            if line.startswith(prefix):
                return float(line.split()[-1])
        return 0.0


@pytest.fixture
def base(tmp_path: Path) -> Path:
    base = tmp_path / "ironclaw"
    (base / "projects").mkdir(parents=True)
    return base


@pytest.fixture
async def orchestrator(
    request: pytest.FixtureRequest,
    docker_engine: Any,
    test_agent_image: str,
    test_instance: str,
    base: Path,
    tmp_path: Path,
) -> AsyncIterator[Orchestrator]:
    env = {
        "IRONCLAW_BASE_DIR": str(base),
        "ORCHESTRATOR_INSTANCE": test_instance,
        "ORCHESTRATOR_PORT": str(_free_port()),
        "ORCHESTRATOR_HTTP_PORT": str(_free_port()),
        "METRICS_PORT": str(_free_port()),
        "WORKER_IMAGE": test_agent_image,
        "JOB_RELAY_IMAGE": test_agent_image,
        "JOB_NETWORK": request.param,
        "WORKER_MEMORY_MB": "256",
        "STOP_GRACE_S": "1",
        "LLM_PROVIDER": "none",
        "LOG_FORMAT": "json",
        "ORCHESTRATOR_HTTP_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "ORCHESTRATOR_HTTP_MAX_CONNECTIONS_PER_SOURCE": str(PER_SOURCE),
    }
    log = tmp_path / "orchestrator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli.main", "serve", "--drain"],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_limit_descriptors,
        )
    orch = Orchestrator(proc, log, env)
    try:
        await wait_for(lambda: _serving(orch), timeout=60, what="the orchestrator to serve")
        yield orch
    finally:
        if proc.poll() is None:
            proc.terminate()  # --drain: its jobs' containers, relays and networks go with it
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=60)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        _remove_leftovers(docker_engine, test_instance)
        print("--- orchestrator log (tail) ---")
        print("\n".join(orch.log_lines()[-40:]))


async def _serving(orch: Orchestrator) -> bool:
    if orch.proc.poll() is not None:
        raise AssertionError("orchestrator exited:\n" + "\n".join(orch.log_lines()[-30:]))
    try:
        async with aio.insecure_channel(orch.target) as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        return answer.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def _remove_leftovers(docker_engine: Any, instance: str) -> None:
    for label in ("ironclaw.instance", "ironclaw.network.instance"):
        for row in docker_engine.api.containers(all=True, filters={"label": f"{label}={instance}"}):
            with contextlib.suppress(Exception):
                docker_engine.api.remove_container(row["Id"], force=True)
    for net in docker_engine.api.networks(
        filters={"label": f"ironclaw.network.instance={instance}"}
    ):
        with contextlib.suppress(Exception):
            docker_engine.api.remove_network(net["Id"])


@contextlib.asynccontextmanager
async def _stub(orch: Orchestrator) -> AsyncIterator[Any]:
    async with aio.insecure_channel(orch.target) as channel:
        yield pb_grpc.JobServiceStub(channel)


def _container_log(docker_engine: Any, name_or_id: str) -> str:
    return str(docker_engine.api.logs(name_or_id, tail=200).decode(errors="replace"))


def _job_container(docker_engine: Any, job_id: str) -> str | None:
    rows = docker_engine.api.containers(filters={"label": f"ironclaw.job_id={job_id}"})
    return str(rows[0]["Id"]) if rows else None


async def _printed(docker_engine: Any, job_id: str, marker: str) -> str | None:
    container = await asyncio.to_thread(_job_container, docker_engine, job_id)
    if container is None:
        return None
    log = await asyncio.to_thread(_container_log, docker_engine, container)
    return log if marker in log else None


@pytest.mark.parametrize("orchestrator", ["bridge", "isolated"], indirect=True)
async def test_one_job_flooding_the_worker_api_leaves_the_service_serving(
    orchestrator: Orchestrator, docker_engine: Any
) -> None:
    orch = orchestrator
    assert fd_soft_limit(orch.proc.pid) == FD_LIMIT  # the limit really is in force
    async with _stub(orch) as stub:
        victim = (
            await stub.CreateJob(
                pb.CreateJobRequest(task="python " + VICTIM.format(seconds=FLOOD_S + 10)),
                timeout=60,
            )
        ).job
        attacker = (
            await stub.CreateJob(
                pb.CreateJobRequest(
                    task="python "
                    + flood_snippet(CONNECTIONS, line_every_s=2.0, duration_s=FLOOD_S)
                ),
                timeout=60,
            )
        ).job
        await wait_for(
            lambda: _printed(docker_engine, attacker.job_id, '"opened": '),
            timeout=60,
            what="the flood to start",
        )
        log_lines_before = len(orch.log_lines())
        rpcs, rpc_failures, peak_fds = 0, [], 0
        flood_end = time.monotonic() + FLOOD_S - 2
        created = []
        while time.monotonic() < flood_end:
            peak_fds = max(peak_fds, open_fds(orch.proc.pid) or 0)
            try:
                got = await stub.GetJob(pb.GetJobRequest(job_id=victim.job_id), timeout=10)
                assert got.job.state == pb.JOB_STATE_RUNNING
                if len(created) < 3:
                    new = await stub.CreateJob(
                        pb.CreateJobRequest(task="complete OK created during the flood"),
                        timeout=30,
                    )
                    created.append(new.job.job_id)
                rpcs += 1
            except grpc.RpcError as exc:
                rpc_failures.append(f"{exc.code()}: {exc.details()}")
            await asyncio.sleep(0.5)
        log_lines_during = len(orch.log_lines()) - log_lines_before

        flood_log = await wait_for(
            lambda: _printed(docker_engine, attacker.job_id, "slow connections closed"),
            timeout=60,
            what="the flood's figures",
        )
        victim_log = await wait_for(
            lambda: _printed(docker_engine, victim.job_id, "victim "),
            timeout=60,
            what="the other job's figures",
        )
        for job_id in created:
            final = await wait_for(
                lambda job_id=job_id: _terminal(stub, job_id), what="a job created in the flood"
            )
            assert final.state == pb.JOB_STATE_STOPPED, final.result.message
        relay_log = ""
        if orch.mode == "isolated":
            relay_log = await asyncio.to_thread(
                _container_log, docker_engine, relay_name(attacker.job_id)
            )
        header_timeouts = orch.metric(
            "ironclaw_worker_api_connections_timed_out_total", reason="header_timeout"
        )
        refused = orch.metric("ironclaw_worker_api_connections_refused_total", reason="per_source")
        accept_errors = sum(
            orch.metric("ironclaw_accept_errors_total", errno=name) for name in ("EMFILE", "ENFILE")
        )

    flood = last_report(flood_log)
    victim_report = json.loads(victim_log.split("victim ", 1)[1].splitlines()[0])
    print("flood:", flood, "victim:", victim_report, "rpcs:", rpcs, "peak fds:", peak_fds)
    print("log lines during the flood:", log_lines_during, "relay:", relay_log[-500:])
    print("refused at the worker API:", refused, "header timeouts:", header_timeouts)

    # The control plane served throughout, and jobs could still be created.
    assert rpc_failures == []
    assert rpcs >= 10
    assert len(created) == 3
    # The other job's worker-API calls all succeeded.
    assert victim_report["failures"] == 0, victim_report
    assert victim_report["ok"] >= 10
    # The flood really was one: it kept opening connections, and the server closed them, at
    # once over the cap and at the header timeout under it, though it never stopped sending.
    assert flood["opened"] >= CONNECTIONS
    assert flood["refused_at_once"] > 0
    assert flood["cut_off"] > 0
    assert flood["answered"] == 0
    assert flood["lines_sent"] > 0
    assert header_timeouts > 0
    if orch.mode == "bridge":
        # The job's container is the source: the worker API held it to the per-source cap.
        assert refused > 0
    else:
        # Every connection came through the relay, whose own cap held the job first.
        assert "refused=" in relay_log, relay_log[-500:]
    # Descriptors, the shared resource, stayed far from the limit; accept never ran out.
    assert peak_fds < FD_LIMIT // 2, peak_fds
    assert accept_errors == 0
    # The log holds a few throttled lines, not one per connection.
    assert log_lines_during <= MAX_LOG_LINES_DURING_FLOOD, orch.log_lines()[-80:]
    assert "Traceback" not in "\n".join(orch.log_lines())


async def _terminal(stub: Any, job_id: str) -> Any:
    job = (await stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10)).job
    return job if job.state in TERMINAL else None
