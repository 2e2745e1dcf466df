"""The real worker API cuts off a body that stops arriving, quietly: its handler, left waiting
for the body, neither answers nor logs a traceback; the job's next call is served."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
import structlog

from orchestrator.domain.jobs import CreateJobRequest
from tests.helpers import wait_for

pytestmark = pytest.mark.docker


async def test_a_body_that_stops_arriving_is_cut_off_without_a_traceback(
    start_orch: Any, make_settings: Any, test_agent_image: str
) -> None:
    orch = await start_orch(
        make_settings(WORKER_IMAGE=test_agent_image, ORCHESTRATOR_HTTP_BODY_TIMEOUT_S="1")
    )
    created = await orch.manager.create_job(CreateJobRequest(task="sleep"))
    job_id = created.job.job_id
    head = (
        f"POST /worker/{job_id}/status HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {created.token}\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n"
    ).encode()
    with structlog.testing.capture_logs() as logs:
        reader, writer = await asyncio.open_connection(orch.http_host, orch.http_port)
        writer.write(head + b'{"message": "')
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), timeout=30) == b""  # closed, unanswered
        writer.close()
        assert orch.metrics is not None
        await wait_for(
            lambda: orch.metrics.registry.get_sample_value(
                "ironclaw_worker_api_connections_timed_out_total", {"reason": "body_timeout"}
            ),
            what="the body timeout to be counted",
        )
        # The handler that waited for the body has given up by now, without a traceback.
        await wait_for(
            lambda: orch.metrics.registry.get_sample_value(
                "ironclaw_worker_api_requests_total",
                {"route": "/worker/{job_id}/status", "method": "POST", "code": "500"},
            ),
            what="the abandoned request to end",
        )
    assert [e for e in logs if e["log_level"] in ("error", "critical")] == []
    assert not any("exc_info" in e or "exception" in e for e in logs)
    # The job's next call, on a new connection, is served.
    reader, writer = await asyncio.open_connection(orch.http_host, orch.http_port)
    body = b'{"message": "still here", "iteration": 1}'
    writer.write(head.replace(b"Content-Length: 1000", b"Content-Length: %d" % len(body)) + body)
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    writer.close()
    await orch.manager.stop_job(job_id)
