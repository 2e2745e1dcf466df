"""WorkerApiClient over real HTTP against the fake worker API."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import pytest

from tests.fakes.fake_worker_api import FakeWorkerApi, text_answer
from worker.client import (
    BudgetExhausted,
    FollowUpPrompt,
    RateLimited,
    RetryPolicy,
    TokenRejected,
    WorkerApiClient,
    WorkerApiError,
    WorkerConnectionError,
)

MakeClient = Callable[..., WorkerApiClient]


async def test_calls_share_one_keep_alive_connection(
    fake_api: FakeWorkerApi, make_client: MakeClient
) -> None:
    client = make_client()

    def calls() -> None:
        client.get_job()
        client.post_status("iteration 1", 1)
        client.post_event("message", {"role": "assistant", "content": "hi"})
        client.get_prompt()

    await asyncio.to_thread(calls)

    peers = {r.peer for r in fake_api.requests}
    assert len(fake_api.requests) == 4
    assert len(peers) == 1


async def test_routes_and_bodies_match_the_spec(
    fake_api: FakeWorkerApi, make_client: MakeClient
) -> None:
    fake_api.script = [text_answer("4")]
    fake_api.credentials = {"github": "ghp_x"}
    client = make_client()

    def calls() -> tuple[dict[str, object], dict[str, object], dict[str, object]]:
        job = client.get_job()
        creds = client.get_credentials()
        answer = client.complete([{"role": "user", "content": "2+2?"}], max_tokens=16)
        client.post_status("running tests", 5, state="running")
        client.complete_job(True, "All good", iterations=5, details={"k": "v"})
        return job, creds, answer

    job, creds, answer = await asyncio.to_thread(calls)

    assert job["job_id"] == fake_api.job_id
    assert creds == {"github": "ghp_x"}
    assert answer["content"] == "4"
    assert fake_api.to("llm/complete")[0].body == {
        "messages": [{"role": "user", "content": "2+2?"}],
        "max_tokens": 16,
    }
    assert fake_api.to("status")[0].body == {
        "message": "running tests",
        "iteration": 5,
        "state": "running",
    }
    assert fake_api.completions == [
        {"success": True, "message": "All good", "iterations": 5, "details": {"k": "v"}}
    ]


async def test_get_prompt(fake_api: FakeWorkerApi, make_client: MakeClient) -> None:
    fake_api.prompts.append({"content": "next", "done": True})
    client = make_client()
    first, second = await asyncio.to_thread(lambda: (client.get_prompt(), client.get_prompt()))
    assert first == FollowUpPrompt(content="next", done=True)
    assert second is None


async def test_generic_request_reaches_server_routes(
    fake_api: FakeWorkerApi, make_client: MakeClient
) -> None:
    client = make_client()
    health = await asyncio.to_thread(client.request, "GET", "/health")
    job = await asyncio.to_thread(client.request, "GET", "job")
    assert health == {"status": "ok"}
    assert job["task_description"] == fake_api.task


async def test_401_raises_token_rejected_without_retrying(
    fake_api: FakeWorkerApi, make_client: MakeClient
) -> None:
    client = make_client()
    fake_api.revoke_on("job")
    with pytest.raises(TokenRejected) as info:
        await asyncio.to_thread(client.get_job)
    assert "invalid_token" in str(info.value)
    assert fake_api.token not in str(info.value)
    assert len(fake_api.requests) == 1


async def test_wrong_token_is_rejected(fake_api: FakeWorkerApi) -> None:
    client = WorkerApiClient(fake_api.url, fake_api.job_id, "irc_not_the_right_one")
    with pytest.raises(TokenRejected):
        await asyncio.to_thread(client.get_job)
    client.close()


async def test_a_budget_refusal_raises_budget_exhausted_by_its_code(
    fake_api: FakeWorkerApi, make_client: MakeClient
) -> None:
    fake_api.fail(
        "llm/complete_with_tools",
        429,
        error="budget_exceeded",
        message="calls: 10/10",
        refusal="call_budget_exhausted",
    )
    client = make_client()
    with pytest.raises(BudgetExhausted) as info:
        await asyncio.to_thread(client.complete_with_tools, [{"role": "user", "content": "x"}], [])
    assert (info.value.status, info.value.code, info.value.message, info.value.refusal) == (
        429,
        "budget_exceeded",
        "calls: 10/10",
        "call_budget_exhausted",
    )
    assert len(fake_api.requests) == 1


async def test_other_4xx_raise_api_error_once(
    fake_api: FakeWorkerApi, make_client: MakeClient
) -> None:
    client = make_client()
    with pytest.raises(WorkerApiError) as info:
        await asyncio.to_thread(client.post_event, "bogus", {})
    assert (info.value.status, info.value.code) == (422, "invalid_body")
    assert "bogus" in info.value.message
    assert len(fake_api.requests) == 1


async def test_503_is_retried_a_bounded_number_of_times(
    fake_api: FakeWorkerApi, make_client: MakeClient
) -> None:
    fake_api.fail("job", 503, times=10, error="unavailable", message="restarting")
    client = make_client(retry=RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02))
    with pytest.raises(WorkerApiError) as info:
        await asyncio.to_thread(client.get_job)
    assert (info.value.status, info.value.message) == (503, "restarting")
    assert len(fake_api.to("job")) == 3


async def test_502_then_success(fake_api: FakeWorkerApi, make_client: MakeClient) -> None:
    fake_api.fail("job", 502, times=1, error="provider_failed")
    client = make_client()
    job = await asyncio.to_thread(client.get_job)
    assert job["job_id"] == fake_api.job_id
    assert [r.status for r in fake_api.to("job")] == [502, 200]


async def test_read_timeout_is_retried_then_reported(
    fake_api: FakeWorkerApi, make_client: MakeClient
) -> None:
    fake_api.hold_llm()
    client = make_client(
        llm_timeout=0.2,
        retry=RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02),
    )
    started = time.monotonic()
    with pytest.raises(WorkerConnectionError, match="2 attempt"):
        await asyncio.to_thread(client.complete, [{"role": "user", "content": "x"}])
    assert time.monotonic() - started < 5


class _DroppingServer:
    """Accepts connections and closes them at once, counting them."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()


@pytest.fixture
async def dropping_server() -> AsyncIterator[tuple[_DroppingServer, str]]:
    dropper = _DroppingServer()
    server = await asyncio.start_server(dropper.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield dropper, f"http://127.0.0.1:{port}"
    server.close()
    await server.wait_closed()


async def test_connection_errors_are_retried_then_raised(
    dropping_server: tuple[_DroppingServer, str],
) -> None:
    dropper, url = dropping_server
    client = WorkerApiClient(
        url,
        "job",
        "irc_token",
        retry=RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02),
    )
    with pytest.raises(WorkerConnectionError, match="3 attempt") as info:
        await asyncio.to_thread(client.get_job)
    assert dropper.connections == 3
    assert "irc_token" not in str(info.value)
    client.close()


async def test_total_retry_time_is_bounded(
    dropping_server: tuple[_DroppingServer, str],
) -> None:
    dropper, url = dropping_server
    client = WorkerApiClient(
        url,
        "job",
        "irc_token",
        retry=RetryPolicy(max_attempts=100, base_delay_s=0.05, max_delay_s=0.05, max_total_s=0.2),
    )
    with pytest.raises(WorkerConnectionError):
        await asyncio.to_thread(client.get_job)
    assert 2 <= dropper.connections < 10
    client.close()


async def test_reconnects_after_the_server_closed_the_connection(
    fake_api: FakeWorkerApi, make_client: MakeClient
) -> None:
    client = make_client(retry=RetryPolicy(max_attempts=1))
    await asyncio.to_thread(client.get_job)
    # Restarting the server drops every idle keep-alive connection; with no retries allowed,
    # the next call works only if the client notices the dead connection and reconnects.
    await fake_api.restart()
    job = await asyncio.to_thread(client.get_job)
    assert job["job_id"] == fake_api.job_id
    assert len({r.peer for r in fake_api.to("job")}) == 2


# -- rate limits: wait and send again, never the end of the job -----------------------------


async def test_a_rate_limited_event_is_sent_again_after_retry_after(
    fake_api: FakeWorkerApi, make_client: MakeClient
) -> None:
    fake_api.fail(
        "event", 429, times=2, error="rate_limited", refusal="rate_limited", retry_after="1"
    )
    client = make_client()
    await asyncio.to_thread(client.post_event, "message", {"role": "assistant", "content": "hi"})
    assert [r.status for r in fake_api.to("event")] == [429, 429, 200]
    assert fake_api.events == [("message", {"role": "assistant", "content": "hi"})]


async def test_a_status_line_still_rate_limited_after_the_retries_is_dropped_and_logged(
    fake_api: FakeWorkerApi, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    fake_api.fail(
        "status", 429, times=10, error="rate_limited", refusal="rate_limited", retry_after="1"
    )
    fake_api.fail(
        "event", 429, times=10, error="rate_limited", refusal="rate_limited", retry_after="1"
    )
    client = make_client(retry=RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02))
    with caplog.at_level(logging.WARNING, logger="worker.client"):
        await asyncio.to_thread(client.post_status, "iteration 3", 3)  # returns: no exception
        await asyncio.to_thread(client.post_event, "message", {"content": "x"})
    assert len(fake_api.to("status")) == 3
    assert len(fake_api.to("event")) == 3
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 2, dropped
    assert fake_api.token not in caplog.text
    # The client goes on working.
    job = await asyncio.to_thread(client.get_job)
    assert job["job_id"] == fake_api.job_id


async def test_a_rate_limit_is_not_a_budget(
    fake_api: FakeWorkerApi, make_client: MakeClient
) -> None:
    fake_api.fail("llm/complete", 429, times=10, error="rate_limited", refusal="rate_limited")
    client = make_client(retry=RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02))
    with pytest.raises(RateLimited) as info:
        await asyncio.to_thread(client.complete, [{"role": "user", "content": "x"}])
    assert not isinstance(info.value, BudgetExhausted)
    assert isinstance(info.value, WorkerApiError)
    assert len(fake_api.to("llm/complete")) == 2
    # A budget 429 is still final at once.
    fake_api._failures["llm/complete"].clear()
    fake_api.fail("llm/complete", 429, error="budget_exceeded", refusal="call_budget_exhausted")
    with pytest.raises(BudgetExhausted):
        await asyncio.to_thread(client.complete, [{"role": "user", "content": "x"}])
    assert len(fake_api.to("llm/complete")) == 3


async def test_a_download_waits_out_a_busy_orchestrator_then_streams(
    fake_api: FakeWorkerApi, make_client: MakeClient
) -> None:
    fake_api.workspace_archive = b"the archive's bytes"
    fake_api.fail(
        "workspace", 429, times=2, error="budget_exceeded", message="4 downloads in progress"
    )
    client = make_client()
    got = await asyncio.to_thread(client.download, "workspace", lambda body: body.read())
    assert got == b"the archive's bytes"
    assert [r.status for r in fake_api.to("workspace")] == [429, 429, 200]


async def test_a_download_refused_for_good_is_not_retried(
    fake_api: FakeWorkerApi, make_client: MakeClient
) -> None:
    fake_api.fail("workspace", 409, error="failed_precondition", message="nothing to fetch")
    client = make_client()
    with pytest.raises(WorkerApiError, match="nothing to fetch") as refused:
        await asyncio.to_thread(client.download, "workspace", lambda body: body.read())
    assert refused.value.status == 409
    assert len(fake_api.to("workspace")) == 1
