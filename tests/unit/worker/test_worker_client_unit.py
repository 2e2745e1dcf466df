"""WorkerApiClient pieces that need no server: repr, validation, bounding, backoff."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable

import pytest

from worker.client import (
    BudgetExhausted,
    RetryPolicy,
    TokenRejected,
    WorkerApiClient,
    WorkerApiError,
    WorkerConnectionError,
    bound_json,
    truncate_text,
)

TOKEN = "irc_" + "A" * 43
JOB = "0d5e2c1a-4b7f-4c11-9a55-2f1e3d4c5b6a"


def test_repr_never_shows_the_token() -> None:
    client = WorkerApiClient("http://host.docker.internal:50052", JOB, TOKEN)
    assert TOKEN not in repr(client)
    assert TOKEN not in str(client)
    assert repr(client) == (
        f"WorkerApiClient(base_url='http://host.docker.internal:50052', job_id='{JOB}')"
    )


@pytest.mark.parametrize("token", ["", "irc_with space", "irc_new\nline", "irc_tab\t"])
def test_invalid_token_is_refused_without_echoing_it(token: str) -> None:
    with pytest.raises(ValueError, match="worker token") as info:
        WorkerApiClient("http://localhost:1", JOB, token)
    if token:
        assert token not in str(info.value)


@pytest.mark.parametrize("url", ["ftp://x", "localhost:50052", "http://", ""])
def test_invalid_base_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="orchestrator URL"):
        WorkerApiClient(url, JOB, TOKEN)


def test_exception_hierarchy() -> None:
    budget = BudgetExhausted(429, "budget_exceeded", "token budget 100 exceeded")
    assert isinstance(budget, WorkerApiError)
    assert (budget.status, budget.code, budget.message) == (
        429,
        "budget_exceeded",
        "token budget 100 exceeded",
    )
    # A handler for API errors must not swallow a revoked token.
    assert not issubclass(TokenRejected, WorkerApiError)


def test_truncate_text_marks_what_was_dropped() -> None:
    assert truncate_text("abcdef", 10) == "abcdef"
    assert truncate_text("abcdefghij" * 3, 10) == "abcdefghij…[truncated 20 chars]"


def test_bound_json_truncates_nested_strings() -> None:
    data = {"output": "x" * 100, "nested": [{"input": "y" * 100}], "n": 5, "ok": True}
    bounded = bound_json(data, max_string=10, max_total=10_000)
    assert bounded == {
        "output": "x" * 10 + "…[truncated 90 chars]",
        "nested": [{"input": "y" * 10 + "…[truncated 90 chars]"}],
        "n": 5,
        "ok": True,
    }


def test_bound_json_shrinks_until_the_total_fits() -> None:
    data = {f"k{i}": "z" * 5000 for i in range(40)}
    bounded = bound_json(data)
    assert len(json.dumps(bounded, ensure_ascii=False)) <= 64_000
    assert all(v.startswith("z") and "truncated" in v for v in bounded.values())


def test_backoff_grows_is_jittered_and_capped() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=8.0)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        delays = {policy.delay(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1


def test_an_upload_whose_producer_fails_stops_at_once_not_at_the_timeout() -> None:
    # A server that reads the body and never answers, as the orchestrator waits for the end
    # of a chunked body that would never come.
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        accepted: list[socket.socket] = []

        def serve() -> None:
            conn, _ = server.accept()
            accepted.append(conn)
            with contextlib.suppress(OSError):
                while conn.recv(65536):
                    pass

        threading.Thread(target=serve, daemon=True).start()
        client = WorkerApiClient(f"http://127.0.0.1:{port}", JOB, TOKEN)

        def produce(emit: Callable[[bytes], None]) -> None:
            emit(b"some of the archive")
            raise PermissionError(13, "Permission denied", "/workspace/locked")

        started = time.monotonic()
        with pytest.raises(WorkerConnectionError, match="Permission denied"):
            client.upload("workspace", produce, timeout=30)
        assert time.monotonic() - started < 10
        for conn in accepted:
            conn.close()
