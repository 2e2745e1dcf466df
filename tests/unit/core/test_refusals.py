"""Refusals carry a machine-readable code from where they are raised to where they are acted on:
the policy's errors, both error renderers of the worker API (its JSON errors and the Anthropic
error document), and the worker's client, which maps them by the code, never by the English."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ironclaw_contract.worker_api import LLM_REFUSALS, Refusal
from orchestrator.errors import (
    BudgetExceeded,
    ErrorKind,
    ModelNotAllowed,
    OrchestratorError,
    Unauthenticated,
)
from orchestrator.http_api.anthropic_route import _error_for, resolve_claude_model
from orchestrator.http_api.app import error_response
from orchestrator.llm.policy import resolve_model
from tests.unit.core.test_ledger import make_ledger
from worker.client import BudgetExhausted, TokenRejected, WorkerApiError, _decode


def _refusal_of(call: Any) -> OrchestratorError:
    with pytest.raises(OrchestratorError) as caught:
        call()
    return caught.value


def test_the_policy_names_each_refusal() -> None:
    by_calls, job, _ = make_ledger(llm_call_budget=1)
    by_calls.reserve(job.job_id, request_bytes=1, max_tokens=None)
    calls = _refusal_of(lambda: by_calls.reserve(job.job_id, request_bytes=1, max_tokens=None))
    by_tokens, other, _ = make_ledger(llm_token_budget=30)
    tokens = _refusal_of(lambda: by_tokens.reserve(other.job_id, request_bytes=1, max_tokens=1))
    model = _refusal_of(lambda: resolve_model("gpt-5-pro", "gpt-4o-mini", ()))
    claude_model = _refusal_of(
        lambda: resolve_claude_model("opus", "sonnet", {"opus": "claude-opus-5-5"}, ())
    )
    assert (calls.refusal, calls.kind) == (Refusal.CALL_BUDGET, ErrorKind.RESOURCE_EXHAUSTED)
    assert (tokens.refusal, tokens.kind) == (Refusal.TOKEN_BUDGET, ErrorKind.RESOURCE_EXHAUSTED)
    for refused in (model, claude_model):
        assert isinstance(refused, ModelNotAllowed)
        assert isinstance(refused, BudgetExceeded)  # a policy refusal, as a budget is
        assert (refused.refusal, refused.kind) == (
            Refusal.MODEL_NOT_ALLOWED,
            ErrorKind.PERMISSION_DENIED,
        )
    assert {calls.refusal, tokens.refusal, model.refusal} == LLM_REFUSALS
    assert Unauthenticated().refusal is None


def _json(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(response.body)
    return body


def test_the_worker_api_error_body_carries_the_code_only_when_there_is_one() -> None:
    refused = BudgetExceeded("LLM call budget exhausted: 5 of 5", refusal=Refusal.CALL_BUDGET)
    response = error_response(refused.kind, refused.message, refused.refusal)
    assert response.status == 429
    assert _json(response) == {
        "error": "budget_exceeded",
        "message": "LLM call budget exhausted: 5 of 5",
        "refusal": "call_budget_exhausted",
    }
    model = ModelNotAllowed("model 'x' is not allowed for this job")
    response = error_response(model.kind, model.message, model.refusal)
    assert response.status == 403
    assert _json(response)["refusal"] == "model_not_allowed"
    plain = error_response(ErrorKind.UNAUTHENTICATED, "Invalid bearer token")
    assert _json(plain) == {"error": "invalid_token", "message": "Invalid bearer token"}


def test_the_anthropic_error_document_carries_the_code_too() -> None:
    budget = _error_for(BudgetExceeded("tokens used up", refusal=Refusal.TOKEN_BUDGET))
    assert budget.status == 429
    assert budget.headers["x-should-retry"] == "false"
    assert _json(budget) == {
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "message": "tokens used up",
            "refusal": "token_budget_exhausted",
        },
    }
    model = _error_for(ModelNotAllowed("no opus for you"))
    assert (model.status, _json(model)["error"]["type"]) == (403, "permission_error")
    assert _json(model)["error"]["refusal"] == "model_not_allowed"
    unauthenticated = _error_for(Unauthenticated("Invalid LLM key"))
    assert unauthenticated.status == 401
    assert _json(unauthenticated)["error"] == {
        "type": "authentication_error",
        "message": "Invalid LLM key",
    }


class _RateLimited(OrchestratorError):
    """The shape any later refusal takes: a kind and a code, nothing else to wire."""

    kind = ErrorKind.RESOURCE_EXHAUSTED
    refusal = Refusal.RATE_LIMITED


def test_any_error_with_a_refusal_renders_it_on_both_doors() -> None:
    error = _RateLimited("too many status lines: wait 2 s")
    assert _json(error_response(error.kind, error.message, error.refusal))["refusal"] == (
        "rate_limited"
    )
    assert _json(_error_for(error))["error"]["refusal"] == "rate_limited"


def _body(**fields: Any) -> bytes:
    return json.dumps({"error": "budget_exceeded", "message": "words", **fields}).encode()


@pytest.mark.parametrize("refusal", sorted(LLM_REFUSALS))
@pytest.mark.parametrize("status", [403, 429])
def test_the_client_maps_an_llm_refusal_by_its_code(status: int, refusal: str) -> None:
    with pytest.raises(BudgetExhausted) as caught:
        _decode(status, _body(refusal=refusal))
    assert (caught.value.status, caught.value.refusal) == (status, refusal)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        # The English of a refusal, without its code, is not one.
        (429, _body(message="LLM token budget exhausted: 30 of 30 tokens used")),
        (403, _body(message="model 'x' is not allowed for this job")),
        # A rate limit is a refusal the caller waits out, not the end of its model calls.
        (429, _body(refusal="rate_limited")),
        # A code from a later orchestrator is kept, not mistaken for a known one.
        (429, _body(refusal="something_new")),
        (429, b"<html>Too Many Requests</html>"),
    ],
)
def test_anything_else_stays_a_plain_api_error(status: int, body: bytes) -> None:
    with pytest.raises(WorkerApiError) as caught:
        _decode(status, body)
    assert not isinstance(caught.value, BudgetExhausted)
    refusal = json.loads(body).get("refusal") if body.startswith(b"{") else None
    assert caught.value.refusal == refusal


def test_a_refusal_code_never_turns_a_401_into_anything_but_the_end() -> None:
    with pytest.raises(TokenRejected):
        _decode(401, _body(error="invalid_token", refusal="call_budget_exhausted"))
