"""Property-based conformance of the worker API to its own OpenAPI document (schemathesis).

Schemathesis loads ``/openapi.json`` from the live server and, for every operation, generates
requests (valid ones, then invalid ones) with a live job's token, sends them and checks each
answer: no 5xx, a documented status code and content type, a body that matches the documented
schema. ``/complete`` ends its job, so it gets a fresh job whenever the previous one has ended.

The LLM routes are served by a stub provider that accepts anything, and the OpenAI-compatible
routes by a stub upstream that answers anything: what is under test is the worker API, not how
a real provider reacts to generated conversations.

Schemathesis and Hypothesis are synchronous, so they run in a worker thread while the event
loop keeps serving the orchestrator.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from orchestrator.llm.types import CompletionRequest, CompletionResult, ToolCall

schemathesis = pytest.importorskip("schemathesis", reason="needs schemathesis>=4.0")
hypothesis = pytest.importorskip("hypothesis")
jsonschema = pytest.importorskip("jsonschema")

pytestmark = pytest.mark.docker

POSITIVE_EXAMPLES = 30
NEGATIVE_EXAMPLES = 20
COMPLETE_EXAMPLES = 8  # each valid one ends a job, and a new job is a new container
PLACEHOLDER_JOB = "00000000-0000-4000-8000-000000000000"
PLACEHOLDER_TOKEN = "irc_placeholder"


class StubProvider:
    """Answers every request at once, with a tool call when tools were offered."""

    name = "stub"

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        self.calls += 1
        calls = (
            (ToolCall(id="call_1", name=request.tools[0].name, arguments={"x": 1}),)
            if request.tools
            else ()
        )
        return CompletionResult(
            content=None if calls else "ok",
            tool_calls=calls,
            finish_reason="tool_use" if calls else "stop",
            input_tokens=len(request.messages),
            output_tokens=1,
        )

    async def aclose(self) -> None:
        return None


async def _start_stub_upstream() -> tuple[web.AppRunner, str]:
    """An OpenAI-compatible upstream that answers every call with a small, complete answer."""
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "input_tokens": 1, "output_tokens": 1}

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"id": "stub", "object": "stub", "usage": usage})

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v1/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}/v1"


def _describe(exc: BaseException) -> str:
    parts = [f"{type(exc).__name__}: {exc}"]
    for inner in getattr(exc, "exceptions", ()):
        parts.append(f"  - {type(inner).__name__}: {inner}")
    return "\n".join(parts)[:4000]


@dataclass
class Target:
    job_id: str
    token: str


def _fuzz_operation(
    operation: Any,
    *,
    mode: Any,
    max_examples: int,
    base_url: str,
    target: Callable[[], Target],
    body_is_valid: Callable[[Any], bool] = lambda body: False,
) -> None:
    """Runs one operation's generated cases; raises the first failure (already shrunk)."""
    # The job and its token are fixed (so never mutated into invalid ones: the auth tests
    # cover that) as placeholders, swapped for the current target's just before each call.
    strategy = operation.as_strategy(
        generation_mode=mode,
        path_parameters={"job_id": PLACEHOLDER_JOB},
        headers={"Authorization": f"Bearer {PLACEHOLDER_TOKEN}"},
    )

    @hypothesis.settings(
        max_examples=max_examples,
        deadline=10_000,
        database=None,
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate, hypothesis.Phase.shrink],
    )
    @hypothesis.given(case=strategy)
    def run(case: Any) -> None:
        # A negative case mutated out of one branch of a oneOf can land in another (a chat
        # message's role made "tool", with a tool_call_id): it satisfies the document, so it is
        # not a negative case, and the server rightly accepts it.
        hypothesis.assume(not (mode.is_negative and body_is_valid(case.body)))
        current = target()
        assert case.path_parameters["job_id"] == PLACEHOLDER_JOB
        case.path_parameters["job_id"] = current.job_id
        case.headers["Authorization"] = f"Bearer {current.token}"
        case.call_and_validate(base_url=base_url, timeout=30)

    run()


def _body_validator(document: dict[str, Any], operation: Any) -> Callable[[Any], bool]:
    """Whether a body satisfies the operation's request schema in the document."""
    method = document["paths"][operation.path][operation.method.lower()]
    content = method.get("requestBody", {}).get("content", {}).get("application/json")
    if content is None:
        return lambda body: False
    validator = jsonschema.Draft202012Validator(
        {**content["schema"], "components": document.get("components", {})}
    )
    return validator.is_valid


# A negative case may be refused for its size before its shape is looked at: a body over the
# route's byte bound is 413 (the document says so), a refusal like any 4xx schemathesis expects.
NEGATIVE_DATA_REJECTED_BY = schemathesis.config.SchemathesisConfig.from_dict(
    {
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [
                    *("400", "401", "403", "404", "405", "406", "409", "413", "415"),
                    *("422", "428", "429", "5xx"),
                ]
            }
        }
    }
)


async def test_every_operation_conforms_to_the_openapi_document(
    start_orch: Any, make_settings: Any, test_agent_image: str, jobs: Any
) -> None:
    provider = StubProvider()
    upstream, upstream_url = await _start_stub_upstream()
    orch = await start_orch(
        make_settings(
            WORKER_IMAGE=test_agent_image,
            JOB_LLM_CALL_BUDGET="0",
            JOB_LLM_TOKEN_BUDGET="0",
            LLM_MODEL="stub-model",
            LLM_PROVIDER="openai",
            LLM_BASE_URL=upstream_url,
        ),
        provider=provider,
    )
    base_url = f"http://{orch.http_host}:{orch.http_port}"
    loop = asyncio.get_running_loop()
    live = await jobs.create(orch)
    live_target = Target(live.job_id, live.token)
    first = await jobs.create(orch)
    completing = [Target(first.job_id, first.token)]

    def complete_target() -> Target:
        # Reading a job's state from this thread is a plain attribute read; creating one must
        # happen on the loop.
        if orch.manager.get_job(completing[-1].job_id).state.is_terminal:
            job = asyncio.run_coroutine_threadsafe(jobs.create(orch), loop).result(60)
            completing.append(Target(job.job_id, job.token))
        return completing[-1]

    def fuzz() -> dict[str, str]:
        schema = schemathesis.openapi.from_url(
            f"{base_url}/openapi.json", config=NEGATIVE_DATA_REJECTED_BY, timeout=10
        )
        failures: dict[str, str] = {}
        for result in schema.get_all_operations():
            operation = result.ok()
            if not operation.path.startswith("/worker/"):
                continue
            is_complete = operation.path == "/worker/{job_id}/complete"
            plans = [(schemathesis.GenerationMode.POSITIVE, POSITIVE_EXAMPLES)]
            # Any bytes are a binary body (PUT workspace): there is no invalid one to generate.
            binary = all(b.media_type == "application/octet-stream" for b in operation.body)
            if operation.body and not binary:
                plans.append((schemathesis.GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES))
            for mode, examples in plans:
                label = f"{operation.label} [{mode.value}]"
                try:
                    _fuzz_operation(
                        operation,
                        mode=mode,
                        max_examples=COMPLETE_EXAMPLES if is_complete else examples,
                        base_url=base_url,
                        target=complete_target if is_complete else (lambda: live_target),
                        body_is_valid=_body_validator(schema.raw_schema, operation),
                    )
                except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup
                    failures[label] = _describe(exc)
        return failures

    try:
        failures = await asyncio.to_thread(fuzz)
    finally:
        await upstream.cleanup()

    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
    # The fuzzing really ran: the live job was reached and /complete ended some jobs.
    assert orch.manager.get_job(live.job_id).state.value == "Running"
    assert orch.manager.get_job(live.job_id).last_sequence > 10
    assert provider.calls > 10
    assert len(completing) > 1
