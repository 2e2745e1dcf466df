"""The per-job OpenAI-compatible routes, spoken to by the real ``openai`` SDK, in front of the
fake OpenAI server (``tests/fakes/fake_openai.py``): Chat Completions (streamed and not), the
Responses API (streamed and not), the model list, the job's key as the API key, the caps and
the ledger, and OpenAI's error shape for every refusal."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import openai
import pytest

from ironclaw_contract.job_keys import llm_key_for
from ironclaw_contract.worker_api import OPENAI, job_route
from orchestrator.domain.jobs import JobLimitOverrides
from tests.fakes.fake_openai import FakeOpenAI, RunawayReply, answer_to_the_cap
from tests.integration.worker_api.conftest import Job, WorkerHttp

ASK = [{"role": "user", "content": "What is 2+2?"}]


def base_url(api: WorkerHttp, job: Job) -> str:
    return api.base_url + job_route(job.job_id, OPENAI)


@pytest.fixture
async def client_for(
    api: WorkerHttp,
) -> AsyncIterator[Callable[..., openai.AsyncOpenAI]]:
    """``client_for(job, key=None)``: the real SDK pointed at the job's route, the job's token
    (or ``key``) as its API key, no retries (a refusal must be final by itself)."""
    made: list[openai.AsyncOpenAI] = []

    def make(job: Job, key: str | None = None, **kwargs: Any) -> openai.AsyncOpenAI:
        kwargs.setdefault("max_retries", 0)
        client = openai.AsyncOpenAI(
            api_key=key or job.token, base_url=base_url(api, job), timeout=30, **kwargs
        )
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


def new_requests(fake: FakeOpenAI, before: int) -> list[Any]:
    return fake.requests[before:]


# -- Chat Completions -----------------------------------------------------------------------


async def test_a_chat_completion_goes_upstream_with_the_real_key_and_is_metered(
    shared_orch: Any, jobs: Any, openai_fake: FakeOpenAI, openai_key: str, client_for: Any
) -> None:
    job = await jobs.create(shared_orch)
    openai_fake.enqueue_text("2 + 2 = 4", prompt_tokens=21, completion_tokens=7)
    before = len(openai_fake.requests)
    answer = await client_for(job).chat.completions.create(
        model="gpt-4o", messages=ASK, max_tokens=100_000, temperature=0.25
    )
    assert answer.choices[0].message.content == "2 + 2 = 4"
    assert answer.usage is not None
    assert answer.usage.total_tokens == 28
    (sent,) = new_requests(openai_fake, before)
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {openai_key}"
    assert job.token not in json.dumps(dict(sent.headers))
    # Passed through but for the cap: the job's per-call limit (8192), not what was asked.
    assert sent.body == {
        "model": "gpt-4o",
        "messages": ASK,
        "max_tokens": 8192,
        "temperature": 0.25,
    }
    usage = shared_orch.manager.get_job(job.job_id).usage
    assert (usage.input_tokens, usage.output_tokens, usage.calls) == (21, 7, 1)


async def test_a_body_within_the_caps_is_passed_on_byte_for_byte(
    api: WorkerHttp, shared_orch: Any, jobs: Any, openai_fake: FakeOpenAI
) -> None:
    job = await jobs.create(shared_orch)
    openai_fake.enqueue_text("ok")
    before = len(openai_fake.requests)
    # Odd spacing and key order, an unknown field: all of it must arrive as it was sent.
    raw = (
        b'{ "messages":[{"role":"user","content":"hi"}],  "model" : "gpt-4o-mini",'
        b' "max_tokens": 64, "x_vendor": {"a": [1, 2]} }'
    )
    reply = await api.call(job, "POST", f"{OPENAI}/chat/completions", data=raw)
    assert reply.status == 200, reply.text
    assert reply.body["choices"][0]["message"]["content"] == "ok"
    (sent,) = new_requests(openai_fake, before)
    assert sent.body == json.loads(raw)


async def test_a_missing_model_is_the_default_and_a_missing_cap_is_added(
    shared_orch: Any, jobs: Any, openai_fake: FakeOpenAI, api: WorkerHttp
) -> None:
    job = await jobs.create(shared_orch, limits=JobLimitOverrides(llm_max_tokens_per_call=300))
    openai_fake.enqueue_text("ok")
    before = len(openai_fake.requests)
    reply = await api.call(job, "POST", f"{OPENAI}/chat/completions", {"messages": ASK})
    assert reply.status == 200, reply.text
    (sent,) = new_requests(openai_fake, before)
    assert sent.body["model"] == "gpt-4o-mini"
    assert sent.body["max_tokens"] == 300


async def test_a_stream_passes_through_and_its_usage_chunk_settles_the_call(
    shared_orch: Any, jobs: Any, openai_fake: FakeOpenAI, client_for: Any
) -> None:
    job = await jobs.create(shared_orch)
    openai_fake.enqueue_text("one two three four", prompt_tokens=13, completion_tokens=4)
    before = len(openai_fake.requests)
    stream = await client_for(job).chat.completions.create(
        model="gpt-4o-mini", messages=ASK, stream=True
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    # The client did not ask for usage: the chunk asked for on its behalf is not shown to it.
    assert all(chunk.choices for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    (sent,) = new_requests(openai_fake, before)
    assert sent.body["stream_options"] == {"include_usage": True}
    usage = shared_orch.manager.get_job(job.job_id).usage
    assert (usage.input_tokens, usage.output_tokens, usage.calls) == (13, 4, 1)


async def test_a_stream_that_asks_for_its_usage_gets_it(
    shared_orch: Any, jobs: Any, openai_fake: FakeOpenAI, client_for: Any
) -> None:
    job = await jobs.create(shared_orch)
    openai_fake.enqueue_text("hello", prompt_tokens=9, completion_tokens=1)
    stream = await client_for(job).chat.completions.create(
        model="gpt-4o-mini", messages=ASK, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (9, 1)
    assert shared_orch.manager.get_job(job.job_id).usage.total_tokens == 10


async def test_a_stream_running_past_its_grant_is_cut_with_an_error_event(
    shared_orch: Any, jobs: Any, openai_fake: FakeOpenAI, client_for: Any
) -> None:
    budget = 6000
    job = await jobs.create(
        shared_orch,
        limits=JobLimitOverrides(llm_max_tokens_per_call=200, llm_token_budget=budget),
    )
    # An upstream that ignores max_tokens and would stream 20,000 words.
    openai_fake.enqueue(RunawayReply(words=20_000))
    stream = await client_for(job).chat.completions.create(
        model="gpt-4o-mini", messages=ASK, stream=True
    )
    received: list[str] = []

    async def drain() -> None:
        async for chunk in stream:
            received.extend(c.delta.content or "" for c in chunk.choices)

    with pytest.raises(openai.APIError) as caught:
        await drain()
    assert "budget" in caught.value.message
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "token_budget_exhausted"
    assert 0 < len("".join(received)) <= 6 * 200 + len("word ")
    usage = shared_orch.manager.get_job(job.job_id).usage
    # Charged its whole reservation (the worst case), which the budget had room for.
    assert usage.calls == 1
    assert usage.output_tokens == 200
    assert usage.total_tokens <= budget


# -- the Responses API ----------------------------------------------------------------------


async def test_a_response_is_forwarded_and_settled_from_its_usage(
    shared_orch: Any, jobs: Any, openai_fake: FakeOpenAI, client_for: Any
) -> None:
    job = await jobs.create(shared_orch, limits=JobLimitOverrides(llm_max_tokens_per_call=512))
    openai_fake.enqueue_text("Paris", prompt_tokens=30, completion_tokens=2)
    before = len(openai_fake.requests)
    response = await client_for(job).responses.create(
        model="gpt-4o", input="Capital of France?", max_output_tokens=4096
    )
    assert response.output_text == "Paris"
    (sent,) = new_requests(openai_fake, before)
    assert sent.path == "/v1/responses"
    assert sent.body == {"model": "gpt-4o", "input": "Capital of France?", "max_output_tokens": 512}
    usage = shared_orch.manager.get_job(job.job_id).usage
    assert (usage.input_tokens, usage.output_tokens, usage.calls) == (30, 2, 1)


async def test_a_response_stream_is_settled_from_its_completed_event(
    shared_orch: Any, jobs: Any, openai_fake: FakeOpenAI, client_for: Any
) -> None:
    job = await jobs.create(shared_orch)
    openai_fake.enqueue_text("the quick brown fox", prompt_tokens=11, completion_tokens=4)
    stream = await client_for(job).responses.create(
        model="gpt-4o-mini", input="Say something", stream=True
    )
    events = [event async for event in stream]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "the quick brown fox"
    assert events[-1].type == "response.completed"
    usage = shared_orch.manager.get_job(job.job_id).usage
    assert (usage.input_tokens, usage.output_tokens, usage.calls) == (11, 4, 1)


async def test_a_response_stream_past_its_grant_ends_with_an_error_event(
    shared_orch: Any, jobs: Any, openai_fake: FakeOpenAI, client_for: Any
) -> None:
    job = await jobs.create(shared_orch, limits=JobLimitOverrides(llm_max_tokens_per_call=100))
    openai_fake.enqueue(RunawayReply(words=10_000))
    stream = await client_for(job).responses.create(
        model="gpt-4o-mini", input="Go on forever", stream=True
    )
    events = [event async for event in stream]
    last = events[-1]
    assert last.type == "error"
    assert last.code == "token_budget_exhausted"
    # Numbered after the last event the upstream sent, as the protocol numbers them.
    assert last.sequence_number == events[-2].sequence_number + 1
    assert not any(e.type == "response.completed" for e in events)
    assert shared_orch.manager.get_job(job.job_id).usage.output_tokens == 100


# -- models, keys, refusals -----------------------------------------------------------------


async def test_models_lists_what_the_job_may_use(
    shared_orch: Any, jobs: Any, client_for: Any
) -> None:
    job = await jobs.create(shared_orch)
    models = [model.id async for model in client_for(job).models.list()]
    assert models == ["gpt-4o-mini", "gpt-4o"]


async def test_the_llm_key_and_x_api_key_open_the_route_and_nothing_else_does(
    api: WorkerHttp, shared_orch: Any, jobs: Any, openai_fake: FakeOpenAI, client_for: Any
) -> None:
    job = await jobs.create(shared_orch)
    other = await jobs.create(shared_orch)
    llm_key = llm_key_for(job.token, job.job_id)
    assert [m.id async for m in client_for(job, key=llm_key).models.list()]
    by_header = await api.call(
        job, "GET", f"{OPENAI}/models", token=None, headers={"x-api-key": job.token}
    )
    assert by_header.status == 200, by_header.text
    # The LLM key opens the LLM routes only: never the job's other routes.
    (await api.call(job, "GET", "credentials", token=llm_key)).expect_error(401)
    before = len(openai_fake.requests)
    for key in (other.token, llm_key_for(other.token, other.job_id), "irc_" + "x" * 43):
        with pytest.raises(openai.AuthenticationError) as caught:
            await client_for(job, key=key).chat.completions.create(
                model="gpt-4o-mini", messages=ASK
            )
        assert caught.value.body == {
            "message": "Invalid API key: use the job's worker token or its LLM key",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    assert len(openai_fake.requests) == before


async def test_a_model_not_allowed_is_refused_before_the_upstream_and_not_retried(
    api: WorkerHttp, shared_orch: Any, jobs: Any, openai_fake: FakeOpenAI, client_for: Any
) -> None:
    job = await jobs.create(shared_orch)
    before = len(openai_fake.requests)
    # Retries allowed: x-should-retry false must stop the SDK by itself.
    client = client_for(job, max_retries=3)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await client.chat.completions.create(model="gpt-5-ultra", messages=ASK)
    assert caught.value.body["code"] == "model_not_allowed"
    assert caught.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(openai.PermissionDeniedError):
        await client.responses.create(model="o9-pro", input="hi")
    assert len(openai_fake.requests) == before
    reply = await api.call(job, "GET", "job")
    assert reply.body["llm_refusal"] == "model_not_allowed"
    assert shared_orch.manager.get_job(job.job_id).usage.calls == 0


async def test_a_malformed_body_is_an_openai_shaped_400(
    api: WorkerHttp, shared_orch: Any, jobs: Any, openai_fake: FakeOpenAI
) -> None:
    job = await jobs.create(shared_orch)
    before = len(openai_fake.requests)
    for raw in (b"{not json", b"[1, 2]", b'{"messages": [], "max_tokens": "lots"}'):
        reply = await api.call(job, "POST", f"{OPENAI}/chat/completions", data=raw)
        assert reply.status == 400, reply.text
        assert set(reply.body) == {"error"}
        assert reply.body["error"]["type"] == "invalid_request_error"
        assert reply.body["error"]["message"]
    assert len(openai_fake.requests) == before
    assert shared_orch.manager.get_job(job.job_id).usage.calls == 0


async def test_the_upstream_refusing_the_orchestrators_key_is_a_502_without_the_key(
    api: WorkerHttp, shared_orch: Any, jobs: Any, openai_fake: FakeOpenAI, openai_key: str
) -> None:
    job = await jobs.create(shared_orch)
    openai_fake.enqueue_error(
        401, f"Incorrect API key provided: {openai_key}.", error_type="invalid_request_error"
    )
    reply = await api.call(job, "POST", f"{OPENAI}/chat/completions", {"messages": ASK})
    assert reply.status == 502, reply.text
    assert reply.body["error"]["code"] == "upstream_credential_refused"
    openai_fake.enqueue_error(
        429, f"Rate limit reached for key {openai_key}", error_type="requests"
    )
    limited = await api.call(job, "POST", f"{OPENAI}/chat/completions", {"messages": ASK})
    assert limited.status == 429
    api.assert_never_returned(openai_key)
    assert shared_orch.manager.get_job(job.job_id).usage.calls == 2


async def test_get_job_advertises_the_openai_base_url_that_works(
    api: WorkerHttp, shared_orch: Any, jobs: Any, openai_fake: FakeOpenAI
) -> None:
    job = await jobs.create(shared_orch)
    info = (await api.call(job, "GET", "job")).body["openai"]
    assert info["models"] == ["gpt-4o-mini", "gpt-4o"]
    assert info["base_url"].endswith(f"/worker/{job.job_id}/openai/v1")
    # The advertised URL names the address containers use; the path is what matters here.
    path = info["base_url"].split("/worker/", 1)[1]
    openai_fake.enqueue_text("hi")
    async with openai.AsyncOpenAI(
        api_key=job.token, base_url=f"{api.base_url}/worker/{path}", max_retries=0
    ) as client:
        answer = await client.chat.completions.create(model="gpt-4o-mini", messages=ASK)
    assert answer.choices[0].message.content == "hi"


async def test_without_an_openai_provider_the_routes_answer_503(
    start_orch: Any,
    tmp_path: Any,
    test_instance: str,
    jobs: Any,
    api_for: Any,
) -> None:
    from orchestrator.settings import Settings

    (tmp_path / "projects").mkdir()
    settings = Settings.from_env(
        {"IRONCLAW_BASE_DIR": str(tmp_path), "ORCHESTRATOR_INSTANCE": test_instance}
    )
    orch = await start_orch(settings)
    api = api_for(orch)
    job = await jobs.create(orch)
    for method, route, body in (
        ("POST", "chat/completions", {"messages": ASK}),
        ("POST", "responses", {"input": "hi"}),
        ("GET", "models", None),
    ):
        kwargs = {} if body is None else {"json_body": body}
        reply = await api.call(job, method, f"{OPENAI}/{route}", **kwargs)
        assert reply.status == 503, reply.text
        assert reply.body["error"]["code"] == "no_provider"
        assert "LLM_PROVIDER=openai" in reply.body["error"]["message"]
    assert (await api.call(job, "GET", "job")).body["openai"] is None


# -- one ledger under concurrency ----------------------------------------------------------

CALLS = 100
CALL_BUDGET = 10


async def _one_call(client: openai.AsyncOpenAI, kind: str, index: int) -> str:
    """One call of ``kind``; "ok" or the refusal's code."""
    try:
        if kind == "chat":
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"call {index}"}]
            )
        elif kind == "chat-stream":
            stream = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"call {index}"}],
                stream=True,
            )
            async for _ in stream:
                pass
        elif kind == "responses":
            await client.responses.create(model="gpt-4o-mini", input=f"call {index}")
        else:
            stream = await client.responses.create(
                model="gpt-4o-mini", input=f"call {index}", stream=True
            )
            async for _ in stream:
                pass
    except openai.RateLimitError as exc:
        # Refused for good: the SDK is told not to retry.
        retry = exc.response.headers["x-should-retry"]
        return str(exc.body["code"]) + ("" if retry == "false" else f" (x-should-retry {retry})")
    return "ok"


@pytest.mark.parametrize("kind", ["chat", "chat-stream", "responses", "responses-stream"])
async def test_a_hundred_concurrent_calls_against_ten_pass_exactly_ten_upstream(
    kind: str, shared_orch: Any, jobs: Any, openai_fake: FakeOpenAI, client_for: Any
) -> None:
    job = await jobs.create(shared_orch, limits=JobLimitOverrides(llm_call_budget=CALL_BUDGET))
    openai_fake.responder = answer_to_the_cap
    before = len(openai_fake.requests)
    # One connection each: the calls really are in flight together.
    client = client_for(job, http_client=openai.DefaultAioHttpClient(timeout=30))
    try:
        outcomes = await asyncio.gather(*(_one_call(client, kind, i) for i in range(CALLS)))
    finally:
        openai_fake.responder = None
    assert outcomes.count("ok") == CALL_BUDGET
    assert outcomes.count("call_budget_exhausted") == CALLS - CALL_BUDGET
    assert len(new_requests(openai_fake, before)) == CALL_BUDGET
    assert shared_orch.manager.get_job(job.job_id).usage.calls == CALL_BUDGET


async def test_concurrent_calls_on_every_door_never_pass_the_token_budget(
    api: WorkerHttp, shared_orch: Any, jobs: Any, openai_fake: FakeOpenAI, client_for: Any
) -> None:
    budget = 40_000
    job = await jobs.create(shared_orch, limits=JobLimitOverrides(llm_token_budget=budget))
    openai_fake.responder = answer_to_the_cap  # every answer is billed to its cap
    served_before = openai_fake.served_tokens
    client = client_for(job, http_client=openai.DefaultAioHttpClient(timeout=30))
    kinds = ["chat", "chat-stream", "responses", "responses-stream", "llm/complete"]

    async def call(index: int) -> str:
        kind = kinds[index % len(kinds)]
        if kind == "llm/complete":
            body = {"messages": [{"role": "user", "content": f"call {index}"}], "max_tokens": 4096}
            reply = await api.call(job, "POST", kind, body)
            return "ok" if reply.status == 200 else str(reply.body.get("refusal"))
        return await _one_call(client, kind, index)

    try:
        outcomes = await asyncio.gather(*(call(i) for i in range(CALLS)))
    finally:
        openai_fake.responder = None
    served = openai_fake.served_tokens - served_before
    assert set(outcomes) == {"ok", "token_budget_exhausted"}
    assert served <= budget
    usage = shared_orch.manager.get_job(job.job_id).usage
    assert usage.total_tokens == served
    assert usage.calls == outcomes.count("ok")
