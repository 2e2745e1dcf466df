"""The per-job Anthropic Messages route the Claude Code CLI talks to.

The bridge of a Claude Code job reads ``GET /job`` and starts the CLI with
``ANTHROPIC_BASE_URL=<orchestrator>/worker/<job_id>/anthropic`` and the job's LLM key
(``ircl_...``) as ``ANTHROPIC_API_KEY``, so neither the real credential nor the job's worker
token enters the CLI's environment. The CLI then calls ``POST .../v1/messages?beta=true``
(``stream: true``) with the key in ``x-api-key``. This route:

1. checks the LLM key belongs to that job (``x-api-key`` or ``Authorization: Bearer``) and that
   the job is a Claude Code job; the worker token is refused here, and the key everywhere else;
2. maps a model alias (``CLAUDE_CODE_MODEL_MAP``) and refuses a model the job may not use;
3. reserves the call on the job's ledger (one call, the request's input bound and the
   ``max_tokens`` it may have, capped to what the budget still allows), refusing it when calls
   or tokens are used up; ``count_tokens`` reserves a call and no tokens;
4. forwards the request upstream (``ANTHROPIC_BASE_URL`` of the orchestrator, else Anthropic)
   with the orchestrator's API key (``x-api-key``) or OAuth token (``Authorization: Bearer``
   plus the ``oauth-2025-04-20`` beta the CLI itself sends with one);
5. passes the answer back byte for byte, an SSE stream event by event as it arrives, and settles
   the reservation with the tokens of its usage (``message_start`` and ``message_delta``
   events, or the JSON body's ``usage``). A stream that runs past the output tokens granted
   (an upstream that ignored ``max_tokens``) is cut with an ``error`` event and charged its
   whole reservation.

The client is an Anthropic client, so every error is Anthropic's error document
``{"type": "error", "error": {"type", "message", "refusal"?}}``; a refusal by the job's policy
carries its code (``ironclaw_contract.worker_api.Refusal``) and is recorded on the job, where
the bridge reads it (``GET /job``'s ``llm_refusal``) to learn why the CLI stopped. Refusals
carry ``x-should-retry: false``: the CLI honours it and reports the error at once, where it would
otherwise retry a 429 for minutes. Upstream answers are passed through with their status (the
CLI relies on a 400 to fall back from betas an endpoint lacks, and on 429/529 to back off),
except 401/403, which concern the orchestrator's credential, not the job's: those become 502.
No header and no credential is ever logged or echoed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from ironclaw_contract.worker_api import Refusal
from orchestrator.domain.jobs import JobLimits, JobMode, JobSnapshot
from orchestrator.errors import (
    InvalidArgument,
    ModelNotAllowed,
    OrchestratorError,
)
from orchestrator.http_api.bodies import read_body
from orchestrator.http_api.header_filter import pick_headers
from orchestrator.http_api.sse import SseSplitter, encode_event, event_fields, event_json
from orchestrator.http_api.strict_json import loads_strict
from orchestrator.jobs.ledger import CHARS_PER_TOKEN_CEILING, Reservation
from orchestrator.jobs.manager import ContainerJobManager
from orchestrator.llm import policy
from orchestrator.llm.http_upstream import UpstreamHttp
from orchestrator.logging import get_logger
from orchestrator.secrets import Secret

log = get_logger(__name__)

ANTHROPIC_API_URL = "https://api.anthropic.com"
OAUTH_BETA = "oauth-2025-04-20"
ROUTE_PREFIX = "/worker/{job_id}/anthropic"
# The CLI sets its own client timeout to 600 s; an upstream silent for longer is gone.
UPSTREAM_READ_TIMEOUT_S = 600.0
UPSTREAM_CONNECT_TIMEOUT_S = 30.0
# A usage document is small; an SSE line longer than this is not one the meter needs.
_MAX_SSE_LINE = 1 << 20
_MAX_METERED_JSON = 8 << 20

# Request headers the upstream needs; everything else (the job token above all) stays here.
_FORWARDED_REQUEST_HEADERS = frozenset(
    {
        "accept",
        "anthropic-beta",
        "anthropic-dangerous-direct-browser-access",
        "anthropic-version",
        "content-type",
        "user-agent",
        "x-app",
        "x-claude-code-session-id",
    }
)
_FORWARDED_REQUEST_PREFIXES = ("x-stainless-",)
_FORWARDED_RESPONSE_HEADERS = frozenset(
    {"content-type", "request-id", "retry-after", "retry-after-ms", "x-should-retry"}
)
_FORWARDED_RESPONSE_PREFIXES = ("anthropic-ratelimit-",)

# The path's job id, if the request carries that job's live LLM key (else Unauthenticated).
Authenticate = Callable[[web.Request], str]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ---- pure policy helpers ------------------------------------------------------------------


def allowed_claude_models(
    job_model: str, aliases: Mapping[str, str], allowlist: Iterable[str]
) -> list[str]:
    """The upstream model ids a Claude Code job may use: its own model, the CLI's small fast
    model (the ``haiku`` alias, which the CLI uses for background work), and the operator's
    ``LLM_MODEL_ALLOWLIST``; aliases mapped through ``CLAUDE_CODE_MODEL_MAP``."""
    names = [aliases.get(job_model, job_model)]
    if "haiku" in aliases:
        names.append(aliases["haiku"])
    names += [aliases.get(name, name) for name in allowlist]
    return [name for name in dict.fromkeys(names) if name]


def resolve_claude_model(
    requested: str, job_model: str, aliases: Mapping[str, str], allowlist: Iterable[str]
) -> str:
    """The model id to send upstream; raises :class:`ModelNotAllowed` for one the job may not
    use. An alias is mapped (``sonnet`` → ``claude-sonnet-5-5``); a full id is kept."""
    name = requested.strip()
    model = aliases.get(name, name)
    allowed = allowed_claude_models(job_model, aliases, allowlist)
    return policy.resolve_model(model, allowed[0], allowed[1:])


@dataclass(frozen=True)
class MessagesRequest:
    """A Messages (or count_tokens) body, parsed and checked against the job's model policy."""

    raw: bytes
    body: dict[str, Any]
    model: str
    requested_model: str
    normalized: bool = False  # a count given as a float was made an int

    @property
    def max_tokens(self) -> int | None:
        value = self.body.get("max_tokens")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_request_body(
    raw: bytes,
    *,
    limits: JobLimits,
    aliases: Mapping[str, str],
    allowlist: Iterable[str],
) -> MessagesRequest:
    """Parses a Messages (or count_tokens) body and resolves its model against the job's
    policy (ModelNotAllowed for a model the job may not use).

    The body must be strict JSON (no duplicate key, so the upstream reads the same document as
    this check; nesting within ``MAX_JSON_DEPTH``), and ``max_tokens`` (and a thinking budget)
    a whole number: ``64000.0`` counts as 64000, ``64000.5`` or ``"64000"`` is refused (400)."""
    body = loads_strict(raw)
    if not isinstance(body, dict):
        raise InvalidArgument("request body must be a JSON object")
    requested = body.get("model")
    if not isinstance(requested, str) or not requested.strip():
        raise InvalidArgument("model: Field required")
    model = resolve_claude_model(requested, limits.claude_model, aliases, allowlist)
    normalized = False
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and "budget_tokens" in thinking:
        budget, was_float = _whole_number(thinking["budget_tokens"], "thinking.budget_tokens")
        if was_float:
            body["thinking"] = {**thinking, "budget_tokens": budget}
            normalized = True
    if "max_tokens" in body:
        max_tokens, was_float = _whole_number(body["max_tokens"], "max_tokens")
        if was_float:
            body["max_tokens"] = max_tokens
            normalized = True
    return MessagesRequest(
        raw=raw, body=body, model=model, requested_model=requested, normalized=normalized
    )


def upstream_body(request: MessagesRequest, max_tokens: int | None) -> bytes:
    """The bytes to send upstream: the original ones unless something was changed (an alias
    mapped, a count given as a float, or the call may ask for fewer output tokens than it did:
    ``max_tokens`` from the ledger, which caps it to the per-call limit and to what the budget
    still allows); then the checked body itself is serialized and sent."""
    body = request.body
    changed = request.normalized or request.model != request.requested_model
    if request.model != request.requested_model:
        body = {**body, "model": request.model}
    if max_tokens is not None and (request.max_tokens is None or request.max_tokens > max_tokens):
        body = {**body, "max_tokens": max_tokens}
        _fit_thinking_budget(body, max_tokens)
        changed = True
    if not changed:
        return request.raw
    try:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:  # a number out of float range (1e400) came in as infinity
        raise InvalidArgument("request body has a number out of range") from None
    return text.encode()


def prepare_request_body(
    raw: bytes,
    *,
    limits: JobLimits,
    aliases: Mapping[str, str],
    allowlist: Iterable[str],
) -> tuple[bytes, str]:
    """Checks a Messages body against the job's policy alone (no budget): the bytes to send
    and the model, ``max_tokens`` capped to the per-call limit."""
    request = parse_request_body(raw, limits=limits, aliases=aliases, allowlist=allowlist)
    wanted = request.max_tokens
    cap = policy.cap_max_tokens(wanted, limits.llm_max_tokens_per_call) if wanted else None
    return upstream_body(request, cap), request.model


def _whole_number(value: Any, name: str) -> tuple[int, bool]:
    """``value`` as an int, and whether it came as a float (64000.0); raises InvalidArgument
    for anything else (a fraction, a string, a boolean, null, a negative count)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{name}: must be a whole number, got {_json_type(value)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise InvalidArgument(f"{name}: must be a whole number, got {value!r}")
        value_int, was_float = int(value), True
    else:
        value_int, was_float = value, False
    if value_int < 0:
        raise InvalidArgument(f"{name}: must not be negative, got {value_int}")
    return value_int, was_float


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _fit_thinking_budget(body: dict[str, Any], max_tokens: int) -> None:
    # A fixed thinking budget must stay below max_tokens (and at least 1024), or the API
    # refuses the request. Adaptive thinking has no budget and needs nothing.
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or budget < max_tokens:
        return
    if max_tokens > 1024:
        body["thinking"] = {**thinking, "budget_tokens": max_tokens - 1}
    else:
        body.pop("thinking")


class UsageMeter:
    """Reads the token usage of one answer from the bytes passed through.

    For SSE it parses only the ``message_start`` and ``message_delta`` events; counts in later
    events are cumulative, so the largest value seen wins. Cached input counts as input, as it
    does for the worker's provider: the budget is about what was processed.
    """

    _INPUT_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")

    def __init__(self, streaming: bool) -> None:
        self._streaming = streaming
        self._pending = b""
        self._skipping = False
        self._body = bytearray()
        self._usage: dict[str, int] = {}

    @property
    def input_tokens(self) -> int:
        return sum(self._usage.get(key, 0) for key in self._INPUT_KEYS)

    @property
    def output_tokens(self) -> int:
        return self._usage.get("output_tokens", 0)

    def feed(self, chunk: bytes) -> None:
        """Takes the next bytes of the answer."""
        if not self._streaming:
            if len(self._body) + len(chunk) <= _MAX_METERED_JSON:
                self._body += chunk
            return
        data = self._pending + chunk
        lines = data.split(b"\n")
        self._pending = lines.pop()
        for line in lines:
            if self._skipping:
                self._skipping = False  # the rest of an overlong line
                continue
            self._line(line)
        if len(self._pending) > _MAX_SSE_LINE:
            self._pending = b""
            self._skipping = True

    def finish(self) -> None:
        """The answer is complete: reads what is left."""
        if self._streaming:
            if self._pending and not self._skipping:
                self._line(self._pending)
            self._pending = b""
            return
        try:
            document = json.loads(bytes(self._body))
        except (ValueError, RecursionError):
            return
        if isinstance(document, dict):
            self._add(document.get("usage"))

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:") or (
            b"message_start" not in line and b"message_delta" not in line
        ):
            return
        try:
            event = json.loads(line[5:])
        except (ValueError, RecursionError):
            return
        if not isinstance(event, dict):
            return
        if event.get("type") == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                self._add(message.get("usage"))
        elif event.get("type") == "message_delta":
            self._add(event.get("usage"))

    def _add(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        for key in (*self._INPUT_KEYS, "output_tokens"):
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                self._usage[key] = max(self._usage.get(key, 0), value)


# ---- errors -------------------------------------------------------------------------------


def anthropic_error(
    status: int,
    error_type: str,
    message: str,
    *,
    retry: bool | None = None,
    refusal: Refusal | None = None,
) -> web.Response:
    """Anthropic's error document; ``retry=False`` tells the client not to retry. A refusal's
    code goes next to the message (``error.refusal``), where Anthropic clients ignore it."""
    headers = {} if retry is None else {"x-should-retry": "true" if retry else "false"}
    error: dict[str, str] = {"type": error_type, "message": message}
    if refusal is not None:
        error["refusal"] = refusal.value
    return web.json_response({"type": "error", "error": error}, status=status, headers=headers)


# Anthropic's error type for each status the orchestrator answers with itself.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def _error_for(exc: OrchestratorError) -> web.Response:
    status = exc.kind.value.http_status
    return anthropic_error(
        status,
        _ERROR_TYPES.get(status, "api_error"),
        exc.message,
        retry=False if status < 500 else None,
        refusal=exc.refusal,
    )


# ---- the route ----------------------------------------------------------------------------


def _speaks_anthropic(job: JobSnapshot) -> bool:
    """Whether the job's agent is one this route serves: the Claude Code CLI, or a catalogue
    agent whose entry speaks the Anthropic Messages API."""
    if job.mode is JobMode.CLAUDE_CODE:
        return True
    return job.mode is JobMode.AGENT and job.agent is not None and job.agent.api == "anthropic"


class AnthropicPassthrough:
    """Serves ``/worker/{job_id}/anthropic/v1/messages`` and ``.../count_tokens``."""

    def __init__(
        self,
        manager: ContainerJobManager,
        authenticate: Authenticate,
        http: UpstreamHttp | None = None,
    ) -> None:
        settings = manager.settings
        self._manager = manager
        self._authenticate = authenticate
        self._upstream = (settings.anthropic_base_url or ANTHROPIC_API_URL).rstrip("/")
        # The API key wins when both are configured, as it does for the CLI itself.
        self._api_key: Secret | None = settings.anthropic_api_key or None
        self._oauth_token: Secret | None = (
            None if self._api_key else settings.claude_oauth_token or None
        )
        self._aliases = settings.claude_model_aliases
        self._allowlist = settings.llm_model_allowlist
        self._max_body = settings.http_max_body_bytes
        # The worker API's one pooled upstream client (its own when none is given), with this
        # route's timeouts on each request.
        self._http = http or UpstreamHttp(read_timeout_s=UPSTREAM_READ_TIMEOUT_S)
        self._owns_http = http is None
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=UPSTREAM_CONNECT_TIMEOUT_S, sock_read=UPSTREAM_READ_TIMEOUT_S
        )

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """``POST .../v1/messages``: one metered, budgeted model call."""
        return await self._handle(request, "/v1/messages", metered=True)

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        """``POST .../v1/messages/count_tokens``: free upstream, but a call of the job's call
        budget all the same (a job with no calls left gets none)."""
        return await self._handle(request, "/v1/messages/count_tokens", metered=False)

    async def close(self, app: web.Application | None = None) -> None:
        """Closes the upstream connection pool if it is its own (an ``on_cleanup`` hook)."""
        if self._owns_http:
            await self._http.close()

    async def _handle(
        self, request: web.Request, path: str, *, metered: bool
    ) -> web.StreamResponse:
        try:
            job_id = self._authenticate(request)
            job = self._manager.get_job(job_id)
            if not _speaks_anthropic(job):
                return anthropic_error(
                    403,
                    "permission_error",
                    "the Anthropic route serves Claude Code jobs and agents that speak the "
                    "Anthropic API only; workers use /llm/complete",
                    retry=False,
                )
            if self._api_key is None and self._oauth_token is None:
                return anthropic_error(
                    503,
                    "api_error",
                    "no Anthropic credential is configured on the orchestrator: set "
                    "ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN",
                    retry=False,
                )
            raw = await read_body(request, self._max_body)
            try:
                parsed = parse_request_body(
                    raw, limits=job.limits, aliases=self._aliases, allowlist=self._allowlist
                )
            except ModelNotAllowed as exc:
                self._manager.ledger.note_refusal(job_id, exc.refusal)
                raise
            # Every call holds its worst case on the ledger before it goes upstream: a
            # count_tokens call counts as a call and holds no tokens.
            reservation = self._manager.ledger.reserve(
                job_id,
                request_bytes=len(raw),
                max_tokens=parsed.max_tokens,
                generates=metered,
            )
        except OrchestratorError as exc:
            return _error_for(exc)
        body = upstream_body(parsed, reservation.max_tokens if metered else None)
        return await self._forward(request, reservation, path, body, parsed.model, metered=metered)

    async def _forward(
        self,
        request: web.Request,
        reservation: Reservation,
        path: str,
        body: bytes,
        model: str,
        *,
        metered: bool,
    ) -> web.StreamResponse:
        job_id = reservation.job_id
        url = self._upstream + path
        if request.query_string:
            url += "?" + request.query_string
        meter: UsageMeter | None = None
        status = 0
        cut = False
        started = time.monotonic()
        try:
            async with self._http.session().post(
                url,
                data=body,
                headers=self._upstream_headers(request.headers),
                timeout=self._timeout,
            ) as upstream:
                status = upstream.status
                if status >= 400:
                    return self._upstream_error(
                        job_id, status, upstream.headers, await upstream.read()
                    )
                streaming = upstream.content_type == "text/event-stream"
                meter = UsageMeter(streaming)
                response = web.StreamResponse(
                    status=status, headers=_response_headers(upstream.headers)
                )
                await response.prepare(request)
                try:
                    if streaming and metered:
                        cut = await _relay_events(upstream, response, meter, reservation)
                    else:
                        async for chunk in upstream.content.iter_any():
                            meter.feed(chunk)
                            await response.write(chunk)
                except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
                    # The status is already sent: the stream just ends early, and the CLI,
                    # seeing no message_stop, treats the answer as failed and retries.
                    log.warning("answer broke off", job_id=job_id, error=type(exc).__name__)
                    return response
                await response.write_eof()
                return response
        except (TimeoutError, aiohttp.ClientError) as exc:
            reason = self._scrub(f"{type(exc).__name__}: {exc}".rstrip(": "))
            log.warning("upstream unreachable", job_id=job_id, error=reason)
            return anthropic_error(
                502, "api_error", f"the Anthropic upstream could not be reached ({reason})"
            )
        finally:
            ledger = self._manager.ledger
            if cut:
                ledger.settle_cut(reservation)
            elif meter is not None:
                meter.finish()
                ledger.settle(reservation, meter.input_tokens, meter.output_tokens)
            elif status:
                ledger.settle(reservation, 0, 0)  # answered with an error: a call, no tokens
            else:
                ledger.release(reservation)  # never reached the upstream
            log.info(
                "anthropic passthrough",
                job_id=job_id,
                path=path,
                model=model,
                status=status,
                input_tokens=meter.input_tokens if meter else 0,
                output_tokens=meter.output_tokens if meter else 0,
            )
            metrics = self._manager.metrics
            if metered and metrics is not None:
                if 200 <= status < 400:
                    metrics.llm_call(
                        "anthropic",
                        model,
                        time.monotonic() - started,
                        meter.input_tokens if meter else 0,
                        meter.output_tokens if meter else 0,
                    )
                else:
                    kind = f"http_{status}" if status else "unreachable"
                    metrics.llm_error("anthropic", model, kind)

    def _upstream_error(
        self, job_id: str, status: int, headers: Mapping[str, str], raw: bytes
    ) -> web.Response:
        if status in (401, 403):
            # About the orchestrator's credential, not the job's: the CLI must not ask its
            # user to log in, and retrying cannot help.
            log.error("upstream refused the Anthropic credential", job_id=job_id, status=status)
            return anthropic_error(
                502,
                "api_error",
                self._scrub(
                    f"the upstream refused the orchestrator's Anthropic credential (HTTP "
                    f"{status}: {_error_text(raw)}); fix ANTHROPIC_API_KEY or "
                    "CLAUDE_CODE_OAUTH_TOKEN on the orchestrator"
                ),
                retry=False,
            )
        return web.Response(
            body=self._scrub_bytes(raw), status=status, headers=_response_headers(headers)
        )

    def _upstream_headers(self, incoming: Mapping[str, str]) -> dict[str, str]:
        headers = pick_headers(incoming, _FORWARDED_REQUEST_HEADERS, _FORWARDED_REQUEST_PREFIXES)
        # Plain bytes from the upstream: they are passed on exactly as they come.
        headers["Accept-Encoding"] = "identity"
        if self._api_key is not None:
            headers["x-api-key"] = self._api_key.reveal()
        elif self._oauth_token is not None:
            headers["Authorization"] = f"Bearer {self._oauth_token.reveal()}"
            betas = [b.strip() for b in headers.pop("anthropic-beta", "").split(",") if b.strip()]
            if OAUTH_BETA not in betas:
                betas.insert(0, OAUTH_BETA)
            headers["anthropic-beta"] = ",".join(betas)
        return headers

    def _secrets(self) -> list[str]:
        return [s.reveal() for s in (self._api_key, self._oauth_token) if s and s.reveal()]

    def _scrub(self, text: str) -> str:
        for secret in self._secrets():
            text = text.replace(secret, "***")
        return text

    def _scrub_bytes(self, data: bytes) -> bytes:
        for secret in self._secrets():
            data = data.replace(secret.encode(), b"***")
        return data


async def _relay_events(
    upstream: aiohttp.ClientResponse,
    response: web.StreamResponse,
    meter: UsageMeter,
    reservation: Reservation,
) -> bool:
    """Passes a Messages stream on event by event; True when it was cut for running past the
    output tokens its reservation granted (by its own count in ``message_delta``, or by the
    text its deltas carried), with Anthropic's ``error`` event after the last whole event."""
    splitter = SseSplitter()
    granted = reservation.max_tokens
    text_chars = 0
    async for chunk in upstream.content.iter_any():
        out = bytearray()
        for event in splitter.feed(chunk):
            meter.feed(event)
            out += event
            text_chars += _delta_chars(event)
            if meter.output_tokens > granted or text_chars > CHARS_PER_TOKEN_CEILING * granted:
                out += encode_event(
                    {
                        "type": "error",
                        "error": {
                            "type": "invalid_request_error",
                            "message": f"the answer ran past the {granted} output tokens the "
                            "job's LLM budget granted this call: the stream was cut",
                            "refusal": Refusal.TOKEN_BUDGET.value,
                        },
                    },
                    "error",
                )
                await response.write(bytes(out))
                log.warning(
                    "anthropic stream cut past its grant",
                    job_id=reservation.job_id,
                    granted=granted,
                )
                return True
        if out:
            await response.write(bytes(out))
    rest = splitter.rest()
    if rest:
        meter.feed(rest)
        await response.write(rest)
    return False


def _delta_chars(event: bytes) -> int:
    """Characters of generated text (or tool input) a ``content_block_delta`` event carries."""
    if b"content_block_delta" not in event:
        return 0
    document = event_json(event_fields(event)[1])
    delta = document.get("delta") if document is not None else None
    if not isinstance(delta, dict):
        return 0
    for key in ("text", "partial_json", "thinking"):
        value = delta.get(key)
        if isinstance(value, str):
            return len(value)
    return 0


def _response_headers(upstream: Mapping[str, str]) -> dict[str, str]:
    return pick_headers(upstream, _FORWARDED_RESPONSE_HEADERS, _FORWARDED_RESPONSE_PREFIXES)


def _error_text(raw: bytes) -> str:
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        return raw.decode(errors="replace").strip()[:300] or "no details"
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict):
        parts = [str(error[key]) for key in ("type", "message") if error.get(key)]
        if parts:
            return ": ".join(parts)[:300]
    return "no details"


def add_anthropic_routes(
    app: web.Application,
    manager: ContainerJobManager,
    authenticate: Authenticate,
    http: UpstreamHttp | None = None,
) -> AnthropicPassthrough:
    """Adds the per-job Anthropic routes to the worker API ``app``."""
    passthrough = AnthropicPassthrough(manager, authenticate, http)
    app.router.add_post(f"{ROUTE_PREFIX}/v1/messages", passthrough.messages)
    app.router.add_post(f"{ROUTE_PREFIX}/v1/messages/count_tokens", passthrough.count_tokens)
    app.on_cleanup.append(passthrough.close)
    return passthrough


def openapi_paths() -> dict[str, Any]:
    """The routes' part of the worker API's OpenAPI document."""
    error = {
        "type": "object",
        "required": ["type", "error"],
        "properties": {
            "type": {"const": "error"},
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {
                    "type": {"type": "string"},
                    "message": {"type": "string"},
                    "refusal": {
                        "type": "string",
                        "enum": [code.value for code in Refusal],
                        "description": "why the job's policy refused the call (403, 429)",
                    },
                },
            },
        },
    }
    errors = {
        "400": "Malformed path or body",
        "401": "Invalid LLM key (x-api-key or bearer): missing, unknown, revoked, another "
        "job's, or the job's worker token",
        "403": "Not a Claude Code job, or a model the job may not use (refusal model_not_allowed)",
        "413": "Request body too large",
        "429": "The job's LLM budget is exhausted (refusal call_budget_exhausted or "
        "token_budget_exhausted; the message has the numbers)",
        "502": "The upstream failed or refused the orchestrator's credential",
        "503": "No Anthropic credential configured",
    }
    answer = {
        "description": "The upstream's answer, passed through (SSE when the request streams)",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    }

    def operation(summary: str) -> dict[str, Any]:
        responses: dict[str, Any] = {"200": answer}
        for code, text in errors.items():
            responses[code] = {
                "description": text,
                "content": {"application/json": {"schema": error}},
            }
        return {
            "summary": summary,
            # The job's LLM key, which the CLI sends as x-api-key; as a bearer token too.
            "security": [{"llm_key": []}, {"bearer": []}],
            "parameters": [
                {
                    "name": "job_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "format": "uuid"},
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["model"],
                            "properties": {"model": {"type": "string"}},
                        }
                    }
                },
            },
            "responses": responses,
        }

    return {
        f"{ROUTE_PREFIX}/v1/messages": {
            "post": operation("Anthropic Messages for Claude Code (metered on the job)")
        },
        f"{ROUTE_PREFIX}/v1/messages/count_tokens": {
            "post": operation("Anthropic token counting for Claude Code (counts as a call)")
        },
    }


__all__ = [
    "AnthropicPassthrough",
    "ModelNotAllowed",
    "UsageMeter",
    "add_anthropic_routes",
    "allowed_claude_models",
    "anthropic_error",
    "openapi_paths",
    "parse_request_body",
    "prepare_request_body",
    "resolve_claude_model",
    "upstream_body",
]
