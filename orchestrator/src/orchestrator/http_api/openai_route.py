"""The per-job OpenAI-compatible routes: any OpenAI client in a job's container points its base
URL at ``<orchestrator>/worker/<job_id>/openai/v1`` (``GET /job`` says so) and uses the job's
worker token or its LLM key as the API key; the real key stays in the orchestrator.

* ``POST .../chat/completions`` (streaming or not) and ``POST .../responses`` are forwarded to
  the configured OpenAI-compatible upstream (``LLM_BASE_URL``, else OpenAI) with
  ``OPENAI_API_KEY``. The body passes through byte for byte, except the model (resolved
  against ``LLM_MODEL`` and ``LLM_MODEL_ALLOWLIST``; missing means the default), the output
  caps (``max_tokens``, ``max_completion_tokens``, ``max_output_tokens``: capped to what the
  ledger granted, added when absent) and, for a chat stream, ``stream_options.include_usage``
  (forced, so the last chunk's usage settles the call; taken out again for a client that did
  not ask for it). The Responses API is forwarded wherever the upstream serves it; one that
  does not answers its own 404, passed on.
* ``GET .../models``: the models the job may use, in OpenAI's list shape.

Every call is reserved on the job's ledger before it goes upstream (``jobs/ledger.py``, the
same ledger as ``llm/complete`` and the Anthropic route) and settled with the usage the answer
reports. A stream whose text runs past what was granted is cut with an error event of its
protocol and charged its whole reservation. A refused call never reaches the upstream and is
answered with OpenAI's error shape ``{"error": {"message", "type", "param", "code"}}``
(``code``: the refusal's, ``ironclaw_contract.worker_api.Refusal``) and ``x-should-retry:
false``, which OpenAI's SDKs obey instead of retrying a 429. Upstream answers keep their status
except 401/403, which concern the orchestrator's key and become 502. No header and no key is
ever logged or echoed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from yarl import URL

from ironclaw_contract.worker_api import OPENAI_CHAT_COMPLETIONS, OPENAI_MODELS, OPENAI_RESPONSES
from orchestrator.errors import ModelNotAllowed, OrchestratorError, ProviderNotConfigured
from orchestrator.http_api.bodies import read_body
from orchestrator.http_api.header_filter import pick_headers
from orchestrator.http_api.openai_body import (
    CHAT,
    CHAT_COMPAT,
    RESPONSES,
    Api,
    OpenAIRequest,
    parse_openai_request,
    upstream_body,
)
from orchestrator.http_api.openai_meter import OpenAIMeter, openai_error_body
from orchestrator.http_api.sse import SseSplitter
from orchestrator.jobs.ledger import Reservation
from orchestrator.jobs.manager import ContainerJobManager
from orchestrator.llm.http_upstream import UpstreamHttp, describe_failure
from orchestrator.logging import get_logger
from orchestrator.secrets import Secret

log = get_logger(__name__)

OPENAI_API_URL = "https://api.openai.com/v1"
# The job's id, if the request carries its worker token or LLM key (else Unauthenticated).
Authenticate = Callable[[web.Request], str]

_FORWARDED_REQUEST_HEADERS = frozenset({"accept", "openai-beta", "user-agent"})
_FORWARDED_REQUEST_PREFIXES = ("x-stainless-",)
_FORWARDED_RESPONSE_HEADERS = frozenset(
    {
        "content-type",
        "openai-processing-ms",
        "openai-version",
        "retry-after",
        "retry-after-ms",
        "x-request-id",
        "x-should-retry",
    }
)
_FORWARDED_RESPONSE_PREFIXES = ("x-ratelimit-",)

# OpenAI's error type for each status the orchestrator answers with itself.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_denied",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "insufficient_quota",
}
_ERROR_CODES = {401: "invalid_api_key", 413: "request_too_large", 503: "no_provider"}


def openai_error(
    status: int, error_type: str, message: str, code: str | None, *, retry: bool | None = None
) -> web.Response:
    """OpenAI's error document; ``retry=False`` tells the client not to retry."""
    headers = {} if retry is None else {"x-should-retry": "true" if retry else "false"}
    return web.json_response(
        {"error": openai_error_body(message, error_type, code)}, status=status, headers=headers
    )


def error_for(exc: OrchestratorError) -> web.Response:
    """An OrchestratorError in OpenAI's shape: a refusal's code as ``code``."""
    status = exc.kind.value.http_status
    code = exc.refusal.value if exc.refusal is not None else _ERROR_CODES.get(status)
    return openai_error(
        status,
        _ERROR_TYPES.get(status, "api_error"),
        exc.message,
        code or exc.kind.value.http_code,
        retry=False if status < 500 or status == 503 else None,
    )


class OpenAIRoutes:
    """Serves ``/worker/{job_id}/openai/v1/...``."""

    def __init__(
        self, manager: ContainerJobManager, authenticate: Authenticate, http: UpstreamHttp
    ) -> None:
        settings = manager.settings
        self._manager = manager
        self._authenticate = authenticate
        self._http = http
        self._configured = settings.llm_provider == "openai"
        self._base = (settings.llm_base_url or OPENAI_API_URL).rstrip("/")
        official = urlsplit(self._base).hostname == "api.openai.com"
        # Parsed once: aiohttp would parse a string URL again on every call.
        self._urls = {
            api.upstream_path: URL(self._base + api.upstream_path) for api in (CHAT, RESPONSES)
        }
        self._chat_api = CHAT if official else CHAT_COMPAT
        self._key: Secret | None = settings.openai_api_key or None
        self._default_model = settings.llm_model
        self._allowlist = settings.llm_model_allowlist
        self._max_body = settings.http_max_body_bytes

    @property
    def allowed_models(self) -> list[str]:
        names = [self._default_model, *self._allowlist]
        return [name for name in dict.fromkeys(names) if name]

    async def models(self, request: web.Request) -> web.Response:
        """``GET .../models``: the job's allowlist."""
        try:
            self._authenticate(request)
            self._check_configured()
        except OrchestratorError as exc:
            return error_for(exc)
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "ironclaw"}
            for name in self.allowed_models
        ]
        return web.json_response({"object": "list", "data": data})

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, self._chat_api)

    async def responses(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, RESPONSES)

    def _check_configured(self) -> None:
        if not self._configured:
            raise ProviderNotConfigured(
                "no OpenAI-compatible provider is configured on the orchestrator: set "
                "LLM_PROVIDER=openai with OPENAI_API_KEY and/or LLM_BASE_URL"
            )

    async def _handle(self, request: web.Request, api: Api) -> web.StreamResponse:
        ledger = self._manager.ledger
        try:
            job_id = self._authenticate(request)
            self._check_configured()
            raw = await read_body(request, self._max_body)
            try:
                parsed = parse_openai_request(
                    raw, api, default_model=self._default_model, allowlist=self._allowlist
                )
            except ModelNotAllowed as exc:
                ledger.note_refusal(job_id, exc.refusal)
                raise
            # The worst case is held before anything goes upstream: a refused call never
            # reaches it, and calls in flight together can never pass the budgets.
            reservation = ledger.reserve(
                job_id, request_bytes=len(raw), max_tokens=parsed.max_tokens
            )
            try:
                body = upstream_body(parsed, reservation.max_tokens)
            except OrchestratorError:
                ledger.release(reservation)
                raise
        except OrchestratorError as exc:
            return error_for(exc)
        return await self._forward(request, reservation, parsed, body)

    async def _forward(
        self,
        request: web.Request,
        reservation: Reservation,
        parsed: OpenAIRequest,
        body: bytes,
    ) -> web.StreamResponse:
        job_id = reservation.job_id
        meter = OpenAIMeter(parsed.api, client_wants_usage=parsed.client_wants_usage)
        status = 0
        answered = False  # a complete answer (or a whole stream) came back
        cut = False
        started = time.monotonic()
        try:
            async with self._http.session().post(
                self._urls[parsed.api.upstream_path],
                data=body,
                headers=self._upstream_headers(request.headers),
            ) as upstream:
                status = upstream.status
                if status >= 400:
                    return self._upstream_error(
                        job_id, status, upstream.headers, await upstream.read()
                    )
                if upstream.content_type != "text/event-stream":
                    data = await upstream.read()
                    meter.read_json(data)
                    answered = True
                    return web.Response(
                        body=self._scrub(data),
                        status=status,
                        headers=_response_headers(upstream.headers),
                    )
                response = web.StreamResponse(
                    status=status, headers=_response_headers(upstream.headers)
                )
                await response.prepare(request)
                answered, cut = await self._relay(upstream, response, meter, reservation)
                if answered or cut:
                    await response.write_eof()
                return response
        except (TimeoutError, aiohttp.ClientError) as exc:
            reason = describe_failure(exc, self._http)
            log.warning("openai upstream unreachable", job_id=job_id, error=reason)
            return openai_error(
                502,
                "api_error",
                f"the OpenAI-compatible upstream could not be reached ({reason})",
                "upstream_unreachable",
            )
        finally:
            self._settle(reservation, parsed, meter, status, answered=answered, cut=cut)
            self._account(job_id, parsed, meter, status, time.monotonic() - started)

    async def _relay(
        self,
        upstream: aiohttp.ClientResponse,
        response: web.StreamResponse,
        meter: OpenAIMeter,
        reservation: Reservation,
    ) -> tuple[bool, bool]:
        """Passes a stream on, event by event; (complete, cut). A stream past its grant is
        ended with the protocol's error event; one the upstream or the client broke off just
        ends (a client that sees no end of stream treats the answer as failed)."""
        splitter = SseSplitter()
        granted = reservation.max_tokens
        try:
            async for chunk in upstream.content.iter_any():
                out = bytearray()
                for event in splitter.feed(chunk):
                    if meter.read_event(event):
                        out += event
                    if meter.past(granted):
                        message = (
                            f"the answer ran past the {granted} output tokens the job's LLM "
                            "budget granted this call: the stream was cut"
                        )
                        out += meter.cut_event(message, "token_budget_exhausted")
                        await response.write(self._scrub(bytes(out)))
                        log.warning(
                            "openai stream cut past its grant",
                            job_id=reservation.job_id,
                            granted=granted,
                        )
                        return False, True
                if out:
                    await response.write(self._scrub(bytes(out)))
            rest = splitter.rest()
            if rest and meter.read_event(rest):
                await response.write(self._scrub(rest))
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            log.warning(
                "openai stream broke off", job_id=reservation.job_id, error=type(exc).__name__
            )
            return False, False
        return True, False

    def _settle(
        self,
        reservation: Reservation,
        parsed: OpenAIRequest,
        meter: OpenAIMeter,
        status: int,
        *,
        answered: bool,
        cut: bool,
    ) -> None:
        ledger = self._manager.ledger
        if not status:
            ledger.release(reservation)  # never reached the upstream
        elif cut:
            ledger.settle_cut(reservation)
        elif meter.reported:
            ledger.settle(reservation, meter.input_tokens, meter.output_tokens)
        elif status >= 400:
            ledger.settle(reservation, 0, 0)  # answered with an error: a call, no tokens
        else:
            # No usage in the answer (some local servers, or a stream broken off): an
            # estimate, as the provider makes one, so the job's budget counts something.
            estimate_in = max(1, len(parsed.raw) // 4)
            ledger.settle(
                reservation, estimate_in, max(1 if answered else 0, meter.text_chars // 4)
            )

    def _account(
        self, job_id: str, parsed: OpenAIRequest, meter: OpenAIMeter, status: int, elapsed: float
    ) -> None:
        # Debug, not info: one line a call would be a large share of the hot path's CPU; the
        # job's usage and the metrics below keep the account.
        log.debug(
            "openai passthrough",
            job_id=job_id,
            api=parsed.api.name,
            model=parsed.model,
            stream=parsed.stream,
            status=status,
            input_tokens=meter.input_tokens,
            output_tokens=meter.output_tokens,
        )
        metrics = self._manager.metrics
        if metrics is None:
            return
        if 200 <= status < 400:
            metrics.llm_call(
                "openai-route", parsed.model, elapsed, meter.input_tokens, meter.output_tokens
            )
        else:
            metrics.llm_error(
                "openai-route", parsed.model, f"http_{status}" if status else "unreachable"
            )

    def _upstream_error(
        self, job_id: str, status: int, headers: Mapping[str, str], raw: bytes
    ) -> web.Response:
        if status in (401, 403):
            # About the orchestrator's key, not the job's: retrying cannot help, and the
            # agent must not be told its own key is wrong.
            log.error("upstream refused the OpenAI key", job_id=job_id, status=status)
            return openai_error(
                502,
                "api_error",
                f"the upstream refused the orchestrator's OpenAI key (HTTP {status}); fix "
                "OPENAI_API_KEY on the orchestrator",
                "upstream_credential_refused",
                retry=False,
            )
        return web.Response(
            body=self._scrub(raw), status=status, headers=_response_headers(headers)
        )

    def _upstream_headers(self, incoming: Mapping[str, str]) -> dict[str, str]:
        headers = pick_headers(incoming, _FORWARDED_REQUEST_HEADERS, _FORWARDED_REQUEST_PREFIXES)
        headers["Content-Type"] = "application/json"
        # Plain bytes from the upstream: they are passed on exactly as they come.
        headers["Accept-Encoding"] = "identity"
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key.reveal()}"
        return headers

    def _scrub(self, data: bytes) -> bytes:
        secret = self._key.reveal().encode() if self._key else b""
        return data.replace(secret, b"***") if secret and secret in data else data


def _response_headers(upstream: Mapping[str, str]) -> dict[str, str]:
    return pick_headers(upstream, _FORWARDED_RESPONSE_HEADERS, _FORWARDED_RESPONSE_PREFIXES)


def add_openai_routes(
    app: web.Application,
    manager: ContainerJobManager,
    authenticate: Authenticate,
    http: UpstreamHttp,
) -> OpenAIRoutes:
    """Adds the per-job OpenAI routes to the worker API ``app``."""
    routes = OpenAIRoutes(manager, authenticate, http)
    prefix = "/worker/{job_id}/"
    app.router.add_post(prefix + OPENAI_CHAT_COMPLETIONS, routes.chat_completions)
    app.router.add_post(prefix + OPENAI_RESPONSES, routes.responses)
    app.router.add_get(prefix + OPENAI_MODELS, routes.models)
    return routes


def openapi_paths() -> dict[str, Any]:
    """The routes' part of the worker API's OpenAPI document."""
    error = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {
                        "type": ["string", "null"],
                        "description": "a refusal's code (403, 429), or the error's",
                    },
                },
            }
        },
    }
    errors = {
        "400": "Malformed path or body",
        "401": "Invalid API key (the job's worker token or LLM key, as bearer or x-api-key)",
        "403": "A model the job may not use (code model_not_allowed)",
        "413": "Request body too large",
        "429": "The job's LLM budget is exhausted (code call_budget_exhausted or "
        "token_budget_exhausted; the message has the numbers)",
        "502": "The upstream failed or refused the orchestrator's key",
        "503": "No OpenAI-compatible provider configured",
    }
    parameters = [
        {
            "name": "job_id",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "format": "uuid"},
        }
    ]
    security: list[dict[str, list[str]]] = [{"bearer": []}, {"llm_key": []}]

    def error_responses(codes: list[str]) -> dict[str, Any]:
        return {
            code: {"description": errors[code], "content": {"application/json": {"schema": error}}}
            for code in codes
        }

    def post(summary: str) -> dict[str, Any]:
        answer = {
            "description": "The upstream's answer, passed through (SSE when the request streams)",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/event-stream": {"schema": {"type": "string"}},
            },
        }
        return {
            "summary": summary,
            "security": security,
            "parameters": parameters,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "properties": {"model": {"type": "string"}}}
                    }
                },
            },
            "responses": {"200": answer, **error_responses(list(errors))},
        }

    models = {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "object", "created", "owned_by"],
                    "properties": {
                        "id": {"type": "string"},
                        "object": {"const": "model"},
                        "created": {"type": "integer"},
                        "owned_by": {"type": "string"},
                    },
                },
            },
        },
    }
    return {
        f"{prefix_of(OPENAI_CHAT_COMPLETIONS)}": {
            "post": post("OpenAI Chat Completions (metered on the job)")
        },
        f"{prefix_of(OPENAI_RESPONSES)}": {"post": post("OpenAI Responses (metered on the job)")},
        f"{prefix_of(OPENAI_MODELS)}": {
            "get": {
                "summary": "The models the job may use (its allowlist)",
                "security": security,
                "parameters": parameters,
                "responses": {
                    "200": {
                        "description": "OpenAI's model list",
                        "content": {"application/json": {"schema": models}},
                    },
                    **error_responses(["400", "401", "503"]),
                },
            }
        },
    }


def prefix_of(route: str) -> str:
    return "/worker/{job_id}/" + route


__all__ = ["OpenAIRoutes", "add_openai_routes", "error_for", "openai_error", "openapi_paths"]
