"""The control plane's catch-all and its reflection, against a real gRPC server on a free port
with a job manager that fails in ways no servicer maps (no Docker engine needed)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from structlog.testing import capture_logs

from ironclaw_client.api.v1 import jobs_pb2 as pb
from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc
from orchestrator.grpc_api.error_mapping import INTERNAL_MESSAGE
from orchestrator.grpc_api.server import ControlPlane, start_control_plane
from orchestrator.settings import Settings
from tests.helpers import job_record

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
TOKEN = "irc_" + "S" * 43
ERROR_TEXT = f"engine said /var/lib/secret-path with {TOKEN}"


class BrokenManager:
    """Answers every call with an exception the servicer does not map (a bug, an engine
    surprise); WatchJob's stream breaks after its first item."""

    def __init__(self) -> None:
        self.job = job_record()

    async def create_job(self, request: Any) -> Any:
        raise RuntimeError(ERROR_TEXT)

    def get_job(self, job_id: str) -> Any:
        raise KeyError(ERROR_TEXT)

    def list_jobs(self, *args: Any) -> Any:
        raise ZeroDivisionError(ERROR_TEXT)

    async def watch(self, job_id: str, after: int, from_start: bool) -> AsyncIterator[Any]:
        yield self.job.snapshot()
        raise OSError(ERROR_TEXT)


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    settings = Settings.from_env({"IRONCLAW_BASE_DIR": str(tmp_path), "METRICS_ENABLED": "0"})
    control = await start_control_plane(settings, BrokenManager(), port=0)  # type: ignore[arg-type]
    yield control
    await control.server.stop(None)


@pytest.fixture
async def stub(plane: ControlPlane) -> AsyncIterator[Any]:
    async with aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        yield pb_grpc.JobServiceStub(channel)


def _assert_internal(error: grpc.RpcError) -> None:
    assert error.code() == grpc.StatusCode.INTERNAL  # type: ignore[attr-defined]
    assert error.details() == INTERNAL_MESSAGE  # type: ignore[attr-defined]


def _logged_once(logs: list[dict[str, Any]], method: str) -> None:
    lines = [line for line in logs if line["event"] == "unexpected error in an RPC"]
    assert len(lines) == 1, logs
    assert lines[0]["method"] == f"/ironclaw.orchestrator.v1.JobService/{method}"
    assert lines[0]["log_level"] == "error"
    assert lines[0]["exc_info"] is True  # rendered (and masked) by the logging setup


@pytest.mark.parametrize(
    ("method", "request_message"),
    [
        ("CreateJob", pb.CreateJobRequest(task="x")),
        ("GetJob", pb.GetJobRequest(job_id="x")),
        ("ListJobs", pb.ListJobsRequest()),
    ],
)
async def test_an_unexpected_exception_in_a_unary_rpc_is_internal_without_its_text(
    stub: Any, method: str, request_message: Any
) -> None:
    with capture_logs() as logs, pytest.raises(grpc.RpcError) as info:
        await getattr(stub, method)(request_message)
    _assert_internal(info.value)
    assert TOKEN not in str(info.value)
    assert "secret-path" not in str(info.value)
    _logged_once(logs, method)


async def test_a_watch_that_breaks_after_its_snapshot_ends_internal(stub: Any) -> None:
    received: list[Any] = []

    async def watch() -> None:
        async for update in stub.WatchJob(pb.WatchJobRequest(job_id="x")):
            received.append(update)

    with capture_logs() as logs, pytest.raises(grpc.RpcError) as info:
        await watch()
    assert len(received) == 1  # the snapshot went out before the break
    _assert_internal(info.value)
    assert TOKEN not in str(info.value)
    _logged_once(logs, "WatchJob")


async def test_stream_logs_failing_before_its_first_chunk_is_internal(stub: Any) -> None:
    async def read_all() -> None:
        async for _ in stub.StreamLogs(pb.StreamLogsRequest(job_id="x")):
            pass

    with capture_logs() as logs, pytest.raises(grpc.RpcError) as info:
        await read_all()
    _assert_internal(info.value)
    _logged_once(logs, "StreamLogs")


async def test_health_and_reflection_still_answer(plane: ControlPlane) -> None:
    code, out, err = await _grpcurl(plane, "list")
    assert code == 0, err
    assert "ironclaw.orchestrator.v1.JobService" in out.split()


async def _grpcurl(plane: ControlPlane, *argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        GRPCURL,
        "-plaintext",
        f"127.0.0.1:{plane.port}",
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(
    ("symbol", "expected"),
    [
        (
            "ironclaw.orchestrator.v1.JobService.CreateJob",
            "rpc CreateJob ( .ironclaw.orchestrator.v1.CreateJobRequest ) returns "
            "( .ironclaw.orchestrator.v1.CreateJobResponse );",
        ),
        (
            "ironclaw.orchestrator.v1.JobService.WatchJob",
            "returns ( stream .ironclaw.orchestrator.v1.JobUpdate );",
        ),
        ("grpc.health.v1.Health.Check", "rpc Check ( .grpc.health.v1.HealthCheckRequest )"),
        ("ironclaw.orchestrator.v1.JobService", "rpc StreamLogs"),
        ("ironclaw.orchestrator.v1.CreateJobRequest", "string task = 1;"),
    ],
)
async def test_grpcurl_describes_methods_services_and_messages(
    plane: ControlPlane, symbol: str, expected: str
) -> None:
    code, out, err = await _grpcurl(plane, "describe", symbol)
    assert code == 0, err
    assert expected in out


async def test_grpcurl_describing_an_unknown_method_says_so(plane: ControlPlane) -> None:
    code, _, err = await _grpcurl(plane, "describe", "ironclaw.orchestrator.v1.JobService.Nope")
    assert code != 0
    assert "Symbol not found" in err
