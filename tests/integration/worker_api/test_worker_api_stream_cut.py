"""A Claude Code job's Anthropic stream that runs past what its reservation granted (an upstream
that ignores ``max_tokens``) is cut with Anthropic's ``error`` event, read by the real
``anthropic`` SDK, and charged its whole reservation, which the budget had room for."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest

from ironclaw_contract.job_keys import llm_key_for
from ironclaw_contract.worker_api import ANTHROPIC, job_route
from orchestrator.domain.jobs import CreateJobRequest, JobLimitOverrides, JobMode
from tests.fakes.fake_anthropic import FakeAnthropic

UPSTREAM_KEY = "sk-ant-upstream-" + "u" * 24


@pytest.fixture
async def upstream() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key=UPSTREAM_KEY) as server:
        yield server


async def test_an_anthropic_stream_past_its_grant_is_cut_with_an_error_event(
    start_orch: Any, tmp_path: Any, test_instance: str, upstream: FakeAnthropic
) -> None:
    from orchestrator.settings import Settings

    (tmp_path / "projects").mkdir()
    orch = await start_orch(
        Settings.from_env(
            {
                "IRONCLAW_BASE_DIR": str(tmp_path),
                "ORCHESTRATOR_INSTANCE": test_instance,
                "ANTHROPIC_API_KEY": UPSTREAM_KEY,
                "ANTHROPIC_BASE_URL": upstream.url,
                "LLM_PROVIDER": "none",
            }
        )
    )
    budget = 8000
    created = await orch.manager.create_job(
        CreateJobRequest(
            task="write",
            mode=JobMode.CLAUDE_CODE,
            limits=JobLimitOverrides(llm_max_tokens_per_call=300, llm_token_budget=budget),
        )
    )
    job_id, token = created.job.job_id, created.token
    assert token is not None
    # 40,000 characters of text, whatever max_tokens said.
    upstream.enqueue_text("word " * 8000, output_tokens=8000)
    base_url = f"http://{orch.http_host}:{orch.http_port}" + job_route(job_id, ANTHROPIC)
    texts: list[str] = []
    async with anthropic.AsyncAnthropic(
        api_key=llm_key_for(token, job_id), base_url=base_url, max_retries=0
    ) as client:

        async def drain() -> None:
            async with client.messages.stream(
                model=orch.settings.claude_model_aliases.get("sonnet", "claude-sonnet-4-5"),
                max_tokens=32_000,
                messages=[{"role": "user", "content": "Write forever"}],
            ) as stream:
                async for text in stream.text_stream:
                    texts.append(text)

        with pytest.raises(anthropic.APIStatusError) as caught:
            await drain()
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["refusal"] == "token_budget_exhausted"
    assert 0 < len("".join(texts)) <= 6 * 300 + 100
    assert upstream.last.body["max_tokens"] == 300  # what the ledger granted was asked for
    usage = orch.manager.get_job(job_id).usage
    assert usage.calls == 1
    assert usage.output_tokens == 300
    assert usage.total_tokens <= budget
