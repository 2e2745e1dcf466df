"""The request side of the per-job OpenAI routes, as pure functions: parse a Chat Completions or
Responses body, check its model against the job's policy, and produce the bytes that go
upstream (the client's own bytes unless the model, a token cap or the usage option changed).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import InvalidArgument
from orchestrator.http_api.strict_json import loads_strict
from orchestrator.llm import policy


@dataclass(frozen=True)
class Api:
    """One OpenAI API the routes serve: where it lives upstream and which fields cap its
    output (every one present is capped; the first is added when the client sent none)."""

    name: str
    upstream_path: str
    cap_fields: tuple[str, ...]


CHAT = Api("chat.completions", "/chat/completions", ("max_completion_tokens", "max_tokens"))
# Compatible servers (vLLM, Ollama, llama.cpp) know max_tokens; OpenAI's reasoning models
# refuse it, so OpenAI itself gets max_completion_tokens (as the provider does).
CHAT_COMPAT = Api("chat.completions", "/chat/completions", ("max_tokens", "max_completion_tokens"))
RESPONSES = Api("responses", "/responses", ("max_output_tokens",))


@dataclass(frozen=True)
class OpenAIRequest:
    """A body parsed and checked against the job's model policy."""

    api: Api
    raw: bytes
    body: dict[str, Any]
    model: str  # what goes upstream
    model_given: bool  # the client named it (the body keeps it unless it differs)
    max_tokens: int | None  # the smallest cap the client asked for, if any
    stream: bool
    # Chat streams: the client asked for the final usage chunk itself (else it is added for
    # the meter and taken out of what the client sees).
    client_wants_usage: bool


def parse_openai_request(
    raw: bytes, api: Api, *, default_model: str, allowlist: Iterable[str]
) -> OpenAIRequest:
    """Parses a body (strict JSON: no duplicate keys, bounded nesting); raises InvalidArgument
    for a malformed one and ModelNotAllowed for a model the job may not use. A missing model
    is the operator's default (``LLM_MODEL``)."""
    body = loads_strict(raw)
    if not isinstance(body, dict):
        raise InvalidArgument("request body must be a JSON object")
    requested = body.get("model")
    if "model" in body and not isinstance(requested, str):
        raise InvalidArgument("model: must be a string")
    model = policy.resolve_model(requested, default_model, allowlist)
    caps = [whole_number(body[name], name) for name in api.cap_fields if body.get(name) is not None]
    stream = body.get("stream") is True
    options = body.get("stream_options")
    wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    return OpenAIRequest(
        api=api,
        raw=raw,
        body=body,
        model=model,
        model_given=requested == model,
        max_tokens=min(caps) if caps else None,
        stream=stream,
        client_wants_usage=wants_usage,
    )


def upstream_body(request: OpenAIRequest, granted: int) -> bytes:
    """The bytes to send upstream: the client's own, unless something must change: the model
    (a default filled in), an output cap over what the ledger granted (or none at all: the
    upstream must never be asked for more than the budget allows), or a chat stream that
    does not ask for its usage (which settles the call's reservation)."""
    body = request.body
    changes: dict[str, Any] = {}
    if not request.model_given:
        changes["model"] = request.model
    present = [name for name in request.api.cap_fields if body.get(name) is not None]
    for name in present:
        capped = min(whole_number(body[name], name), granted)
        if capped != body[name] or not isinstance(body[name], int):
            changes[name] = capped  # a float 64.0 is made an int too
    if not present:
        changes[request.api.cap_fields[0]] = granted
    if request.api.name == CHAT.name and request.stream and not request.client_wants_usage:
        options = body.get("stream_options")
        changes["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
    if not changes:
        return request.raw
    try:
        text = json.dumps(
            {**body, **changes}, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        )
    except ValueError:  # a number out of float range (1e400) came in as infinity
        raise InvalidArgument("request body has a number out of range") from None
    return text.encode()


def whole_number(value: Any, name: str) -> int:
    """``value`` as a positive int (``64.0`` counts as 64); InvalidArgument otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{name}: must be a whole number")
    if isinstance(value, float):
        if not value.is_integer():
            raise InvalidArgument(f"{name}: must be a whole number, got {value!r}")
        value = int(value)
    count = int(value)
    if count < 1:
        raise InvalidArgument(f"{name}: must be a positive integer, got {count}")
    return count
