"""No secret reaches the orchestrator's output: a job with credential grants goes through every
worker API route (and a provider failure that echoes the key) with JSON logging at DEBUG, and
neither a job token, nor a credential value, nor the provider key is printed."""

from __future__ import annotations

import contextlib
import logging
import secrets
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from ironclaw_contract.job_keys import llm_key_for
from orchestrator.domain.jobs import JobState
from orchestrator.logging import configure_logging

pytestmark = pytest.mark.docker


@contextlib.contextmanager
def production_logging() -> Iterator[None]:
    """Production logging (JSON, DEBUG) on file descriptor 2, which ``capfd`` captures.

    structlog keeps the stream it was configured with (loggers cache it on first use), so it
    is given one bound to the descriptor rather than capfd's temporary file, which is closed
    after the test. Used inside the test body so the stdlib root handlers it replaces are put
    back within the same test phase that pytest manages its own handlers in.
    """
    root = logging.getLogger()
    saved_handlers, saved_level, saved_stderr = root.handlers[:], root.level, sys.stderr
    sys.stderr = open(2, "w", closefd=False, buffering=1, encoding="utf-8")  # noqa: SIM115
    try:
        configure_logging("DEBUG", "json")
        # Loggers that cached this configuration would keep it after the test, past
        # reset_defaults(), and later tests' capture_logs would never see their lines.
        structlog.configure(cache_logger_on_first_use=False)
    finally:
        sys.stderr = saved_stderr
    try:
        yield
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.reset_defaults()


async def test_no_token_credential_or_key_is_ever_logged(
    capfd: pytest.CaptureFixture[str],
    start_orch: Any,
    make_settings: Any,
    test_agent_image: str,
    shared_settings_env: dict[str, str],
    openai_fake: Any,
    openai_key: str,
    jobs: Any,
    api_for: Any,
) -> None:
    github = "ghp_" + secrets.token_hex(18)
    # A value no redaction pattern knows: it must simply never be logged.
    plain = "plain-" + secrets.token_hex(18)
    ask = {"messages": [{"role": "user", "content": "What is 2+2?"}]}

    with production_logging():
        orch = await start_orch(
            make_settings(
                WORKER_IMAGE=test_agent_image,
                LOG_LEVEL="DEBUG",
                LOG_FORMAT="json",
                **shared_settings_env,
            )
        )
        api = api_for(orch)
        job = await jobs.create(orch, grants={"github": github, "deploy": plain}, ready=True)
        other = await jobs.create(orch)

        assert (await api.call(job, "GET", "job")).status == 200
        credentials = await api.call(job, "GET", "credentials")
        assert credentials.body == {"github": github, "deploy": plain}
        status = await api.call(job, "POST", "status", {"message": "working", "iteration": 2})
        assert status.status == 200
        event = {"event_type": "tool_use", "data": {"tool_name": "shell", "input": {"c": "ls"}}}
        assert (await api.call(job, "POST", "event", event)).status == 200
        assert (await api.call(job, "GET", "prompt")).status == 204
        openai_fake.enqueue_text("2 + 2 = 4")
        assert (await api.call(job, "POST", "llm/complete", ask)).status == 200
        openai_fake.enqueue_error(
            401, f"Incorrect API key provided: {openai_key}.", code="invalid_api_key"
        )
        (await api.call(job, "POST", "llm/complete", ask)).expect_error(502, "provider_failed")
        # The OpenAI-compatible route, with the token, with the LLM key, streamed, and an
        # upstream that echoes the orchestrator's key in its refusal.
        llm_key = llm_key_for(job.token, job.job_id)
        openai_fake.enqueue_text("4")
        chat = await api.call(job, "POST", "openai/v1/chat/completions", ask)
        assert chat.status == 200, chat.text
        openai_fake.enqueue_text("four")
        streamed = await api.call(
            job, "POST", "openai/v1/chat/completions", {**ask, "stream": True}, token=llm_key
        )
        assert streamed.status == 200, streamed.text
        assert "four" in streamed.text
        openai_fake.enqueue_error(
            401, f"Incorrect API key provided: {openai_key}.", code="invalid_api_key"
        )
        refused = await api.call(job, "POST", "openai/v1/responses", {"input": "2+2?"})
        assert refused.status == 502, refused.text
        # Refused calls: another job's token, a malformed header, a bad body.
        foreign = await api.call(job, "GET", "credentials", token=other.token)
        foreign.expect_error(401)
        basic = await api.call(
            job, "GET", "job", headers={"Authorization": f"Basic {job.token}"}, token=None
        )
        basic.expect_error(401)
        bad = await api.call(job, "POST", "status", {"message": job.token, "bogus": github})
        bad.expect_error(422)
        done = await api.call(job, "POST", "complete", {"success": True, "message": "done"})
        assert done.status == 200
        assert orch.manager.get_job(job.job_id).state is JobState.STOPPED
        await orch.manager.stop_job(other.job_id)
        out, err = capfd.readouterr()

    # The logs were captured (JSON lines naming the job), so their silence about secrets counts.
    assert '"event": "job created"' in err, err[-2000:]
    assert job.job_id in err
    printed = out + err
    for name, secret in {
        "job token": job.token,
        "other job's token": other.token,
        "github credential": github,
        "plain credential": plain,
        "provider key": openai_key,
        "job's LLM key": llm_key,
    }.items():
        assert secret not in printed, f"the {name} was printed"
    api.assert_never_returned(job.token, other.token, openai_key, llm_key)
