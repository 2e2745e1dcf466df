"""The worker HTTP API: the only door out of a job container (SPEC.md, "Worker HTTP API").

Every ``/worker/{job_id}/...`` route needs the job's own bearer token, except the Anthropic
route of a Claude Code job, which takes the job's LLM key instead (and refuses the token, as
every other route refuses the key). Errors are JSON ``{"error", "message", "refusal"?}`` with
the spec's codes, never a stack trace; ``refusal`` is the code a client acts on.
"""

from __future__ import annotations

import re
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ironclaw_contract.job_keys import LLM_KEY_PREFIX
from ironclaw_contract.json_bounds import json_size
from ironclaw_contract.worker_api import (
    MAX_COMPLETE_BODY_BYTES,
    MAX_COMPLETE_DETAILS_BYTES,
    MAX_REPORT_BODY_BYTES,
    WARM_CLAIM,
    WARM_CLAIM_POLL_S,
    WORKSPACE,
    WORKSPACE_MEDIA_TYPE,
    Refusal,
)
from orchestrator.accept_errors import listening_socket
from orchestrator.domain.jobs import JobMode
from orchestrator.errors import (
    ErrorKind,
    InvalidArgument,
    OrchestratorError,
    RateLimited,
    SchemaViolation,
    Unauthenticated,
)
from orchestrator.http_api import schemas
from orchestrator.http_api.anthropic_route import add_anthropic_routes
from orchestrator.http_api.bodies import check_declared_length, read_body
from orchestrator.http_api.connection_limits import ConnectionLimits
from orchestrator.http_api.guarded_server import ConnectionGuard, GuardedSite
from orchestrator.http_api.job_info import build_job_info
from orchestrator.http_api.openai_route import add_openai_routes
from orchestrator.http_api.openapi import build_openapi
from orchestrator.http_api.rate_limit import JobRateLimiter, call_cost, retry_after_header
from orchestrator.http_api.strict_json import loads_strict
from orchestrator.jobs.manager import ContainerJobManager
from orchestrator.jobs.start_gate import START_HOLD_S
from orchestrator.llm.http_upstream import UpstreamHttp
from orchestrator.llm.proxy import LlmProxy
from orchestrator.log_context import job_log_context
from orchestrator.logging import get_logger
from orchestrator.metrics import Metrics

log = get_logger(__name__)
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MANAGER_KEY = web.AppKey("manager", ContainerJobManager)
PROXY_KEY = web.AppKey("proxy", LlmProxy)
MAX_BODY_KEY = web.AppKey("max_body", int)
_BEARER = "Bearer "


def error_response(kind: ErrorKind, message: str, refusal: Refusal | None = None) -> web.Response:
    """The JSON error body of ``kind``, with the refusal's code when there is one."""
    codes = kind.value
    body = {"error": codes.http_code, "message": message}
    if refusal is not None:
        body["refusal"] = refusal.value
    return web.json_response(body, status=codes.http_status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turns every failure into the spec's JSON error body."""
    try:
        return await handler(request)
    except RateLimited as exc:
        response = error_response(exc.kind, exc.message, exc.refusal)
        response.headers["Retry-After"] = retry_after_header(exc.retry_after_s)
        return response
    except OrchestratorError as exc:
        return error_response(exc.kind, exc.message, exc.refusal)
    except web.HTTPRequestEntityTooLarge as exc:
        return error_response(ErrorKind.PAYLOAD_TOO_LARGE, f"request body too large: {exc.text}")
    except web.HTTPNotFound:
        return web.json_response(
            {"error": "not_found", "message": f"no route {request.method} {request.path}"},
            status=404,
        )
    except web.HTTPMethodNotAllowed as exc:
        return web.json_response(
            {"error": "method_not_allowed", "message": f"{exc.method} is not allowed here"},
            status=405,
        )
    except web.HTTPException as exc:
        return web.json_response(
            {"error": exc.reason.lower().replace(" ", "_"), "message": exc.text or exc.reason},
            status=exc.status,
        )
    except ConnectionResetError:
        if request.transport is not None and not request.transport.is_closing():
            log.exception("worker API request failed", path=request.path)
            return error_response(ErrorKind.INTERNAL, "internal error; see the orchestrator log")
        # The client went away (or its connection was closed for being too slow): there is
        # nobody to answer and nothing worth a traceback.
        log.debug("worker API client disconnected", path=request.path)
        return error_response(ErrorKind.INTERNAL, "client disconnected")
    except Exception:
        log.exception("worker API request failed", path=request.path)
        return error_response(ErrorKind.INTERNAL, "internal error; see the orchestrator log")


# The form job ids are issued in: a path that already has it needs no parsing (on the proxy's
# hot path two UUID parses a request were a measurable share of its CPU).
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def canonical_job_id(raw: str) -> str | None:
    """The job id in its canonical form, or None if ``raw`` is not a UUID."""
    if _CANONICAL_UUID.fullmatch(raw):
        return raw
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        return None


def _job_id(request: web.Request) -> str:
    raw = request.match_info["job_id"]
    job_id = canonical_job_id(raw)
    if job_id is None:
        raise InvalidArgument(f"job id {raw[:64]!r} is not a UUID")
    return job_id


def request_token(request: web.Request, allow_api_key: bool = False) -> str:
    """The bearer token the request carries ("" if none)."""
    header = request.headers.get("Authorization", "")
    if header.startswith(_BEARER):
        return header[len(_BEARER) :].strip()
    if allow_api_key:
        return request.headers.get("x-api-key", "").strip()
    return ""


def authenticate(request: web.Request) -> str:
    """The path's job id, if the request carries that job's live worker token (bearer)."""
    job_id = _job_id(request)
    token = request_token(request)
    if not token:
        raise Unauthenticated()
    request.app[MANAGER_KEY].authenticate(job_id, token)
    return job_id


@web.middleware
async def start_gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Holds a job's calls while its container is being verified (jobs/start_gate.py)."""
    raw = request.match_info.get("job_id")
    token = request_token(request, allow_api_key=True) if raw else ""
    if raw and token:
        job_id = canonical_job_id(raw)
        if job_id is None:
            return await handler(request)  # the handler answers 400
        manager = request.app[MANAGER_KEY]
        if not await manager.hold_while_creating(job_id, token, START_HOLD_S):
            return web.json_response(
                {
                    "error": ErrorKind.UNAVAILABLE.value.http_code,
                    "message": f"job {job_id} is still starting: retry shortly",
                },
                status=ErrorKind.UNAVAILABLE.value.http_status,
                headers={"Retry-After": "1"},
            )
    return await handler(request)


def authenticate_llm_key(request: web.Request) -> str:
    """The path's job id, if the request carries that job's live LLM key, as ``x-api-key`` (how
    the Claude Code CLI sends it) or as a bearer token. The worker token is refused here."""
    job_id = _job_id(request)
    header = request.headers.get("Authorization", "")
    if header.startswith(_BEARER):
        key = header[len(_BEARER) :].strip()
    else:
        key = request.headers.get("x-api-key", "").strip()
    if not key or not request.app[MANAGER_KEY].tokens.validate_llm_key(job_id, key):
        raise Unauthenticated("Invalid LLM key")
    return job_id


def authenticate_job_key(request: web.Request) -> str:
    """The path's job id, if the request carries that job's live worker token or LLM key, as
    a bearer token or as ``x-api-key``: what any OpenAI client sends as its API key."""
    job_id = _job_id(request)
    header = request.headers.get("Authorization", "")
    if header.startswith(_BEARER):
        key = header[len(_BEARER) :].strip()
    else:
        key = request.headers.get("x-api-key", "").strip()
    tokens = request.app[MANAGER_KEY].tokens
    if not key or not (tokens.validate(job_id, key) or tokens.validate_llm_key(job_id, key)):
        raise Unauthenticated("Invalid API key: use the job's worker token or its LLM key")
    return job_id


def authenticate_completion(request: web.Request) -> str:
    """``/complete``: the job's worker token, or, for an agent-mode job, its LLM key too: the
    catalogue agent holds only that key, and may end its job with a result before its command
    exits (the runner reports when the command exits 0)."""
    job_id = _job_id(request)
    manager = request.app[MANAGER_KEY]
    key = request_token(request)
    if key.startswith(LLM_KEY_PREFIX) and manager.tokens.validate_llm_key(job_id, key):
        if manager.get_job(job_id).mode is JobMode.AGENT:
            return job_id
        raise Unauthenticated()
    return authenticate(request)


async def parse_body(
    request: web.Request, model: type[M], limit: int | None = None, raw: bytes | None = None
) -> M:
    """Reads (unless ``raw`` was) and validates a JSON body: 413 over ``limit`` bytes (default:
    the application's limit), 400 if it is not strict JSON (duplicate keys, nesting deeper than
    ``MAX_JSON_DEPTH``), 422 if it breaks the schema."""
    if raw is None:
        raw = await read_body(request, limit or request.app[MAX_BODY_KEY])
    if not raw:
        raise InvalidArgument("request body is empty: send a JSON object")
    # Parsed once, strictly, then validated from the parsed value: the same strict types as
    # validating the bytes, for a microsecond or two more on a small body.
    value = loads_strict(raw)
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        described = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors[:5]
        )
        raise SchemaViolation(f"request body does not match the schema: {described}") from None


def _ok() -> web.Response:
    return web.json_response({"status": "ok"})


class WorkerApi:
    """Route handlers; each is a thin call into the job manager or the LLM proxy."""

    def __init__(self, manager: ContainerJobManager, proxy: LlmProxy) -> None:
        self._manager = manager
        self._proxy = proxy
        settings = manager.settings
        # One bucket per job for status lines and events together: what a job can make the
        # orchestrator record, and every watcher relay, per second.
        self._reports = JobRateLimiter(
            settings.job_event_rate,
            settings.job_event_burst,
            what="status lines and events",
            setting="JOB_EVENT_RATE, JOB_EVENT_BURST",
        )

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(build_openapi())

    async def warm_claim(self, request: web.Request) -> web.Response:
        """A warm-pool slot's claim channel (jobs/warm_pool.py): answered with the job id and
        token once a job claims the slot, 204 when none did within the poll's time."""
        pool = self._manager.warm_pool
        raw = request.match_info["slot_id"]
        try:
            slot_id = str(uuid.UUID(raw))
        except ValueError:
            raise InvalidArgument(f"slot id {raw[:64]!r} is not a UUID") from None
        secret = request_token(request)
        if pool is None or not secret:
            raise Unauthenticated("Invalid slot secret")
        claim = await pool.await_claim(slot_id, secret, WARM_CLAIM_POLL_S)
        if claim is None:
            return web.Response(status=204)
        return web.json_response({"job_id": claim.job_id, "token": claim.token})

    async def get_job(self, request: web.Request) -> web.Response:
        job_id = authenticate(request)
        manager = self._manager
        tokens = manager.tokens
        grants = tokens.grants(job_id)
        body = build_job_info(
            manager.get_job(job_id),
            manager.settings,
            credential_env={g.name: g.env_name for g in grants},
            orchestrator_url=manager.orchestrator_url,
            llm_refusal=manager.llm_refusal(job_id),
            egress_url=manager.egress_url,
            # Only a job with an injected grant trusts the gateway's CA: no other job's TLS
            # is ever terminated, so no other job has a reason to accept its leaves.
            egress_ca_pem=manager.egress_ca_pem if any(g.injected for g in grants) else None,
            workspace_sync=self._workspace_sync(job_id),
        )
        return web.json_response(body.model_dump(mode="json"))

    def _workspace_sync(self, job_id: str) -> schemas.WorkspaceSyncInfo | None:
        manager = self._manager
        if not manager.syncs_workspaces:
            return None
        return schemas.WorkspaceSyncInfo(
            # A git workspace is cloned into the empty volume instead.
            fetch=manager.get_job(job_id).git is None,
            max_bytes=manager.settings.workspace_upload_max_bytes,
        )

    async def fetch_workspace(self, request: web.Request) -> web.StreamResponse:
        """GET workspace: the job's project as a .tar.gz, for its container to unpack into
        its empty /workspace (a backend without host paths)."""
        job_id = authenticate(request)
        chunks = self._manager.workspace_to_fetch(job_id)  # an async generator
        # The first chunk before the answer starts: a refusal (busy, no such directory) is
        # still a JSON error then. A failure later cuts the stream, which the unpacking side
        # sees as a truncated archive.
        first = await anext(chunks, b"")
        response = web.StreamResponse(headers={"Content-Type": WORKSPACE_MEDIA_TYPE})
        await response.prepare(request)
        try:
            if first:
                await response.write(first)
            async for chunk in chunks:
                await response.write(chunk)
        finally:
            await chunks.aclose()  # the packing thread stops if the container went away
        await response.write_eof()
        return response

    async def push_workspace(self, request: web.Request) -> web.Response:
        """PUT workspace: the job's /workspace as a .tar.gz, pushed before its result; kept
        for DownloadWorkspace. 413 past WORKSPACE_UPLOAD_MAX_MB, 400 for a bad archive."""
        job_id = authenticate(request)
        check_declared_length(request, self._manager.settings.workspace_upload_max_bytes)

        async def body() -> AsyncIterator[bytes]:
            while chunk := await request.content.readany():
                yield chunk

        pushed = await self._manager.receive_workspace_result(job_id, body())
        return web.json_response({"status": "ok", "bytes": pushed.bytes, "entries": pushed.entries})

    async def credentials(self, request: web.Request) -> web.Response:
        job_id = authenticate(request)
        return web.json_response(dict(self._manager.tokens.credentials_for(job_id)))

    async def tools(self, request: web.Request) -> web.Response:
        job_id = authenticate(request)
        return web.json_response(self._manager.served_tools(job_id))

    async def _report_body(self, request: web.Request, job_id: str) -> bytes:
        """A status or event body, once the job's rate allows it: checked before the body is
        read (so a refusal costs nothing) on its declared length, charged for the rest after."""
        check_declared_length(request, MAX_REPORT_BODY_BYTES)
        declared = request.content_length
        self._reports.check(job_id, call_cost(declared or 0))
        raw = await read_body(request, MAX_REPORT_BODY_BYTES)
        if declared is None:
            self._reports.charge(job_id, call_cost(len(raw)) - 1)
        return raw

    async def status(self, request: web.Request) -> web.Response:
        job_id = authenticate(request)
        raw = await self._report_body(request, job_id)
        body = await parse_body(request, schemas.StatusRequest, raw=raw)
        self._manager.record_status(job_id, body.message, body.iteration)
        return _ok()

    async def event(self, request: web.Request) -> web.Response:
        job_id = authenticate(request)
        raw = await self._report_body(request, job_id)
        body = await parse_body(request, schemas.EventRequest, raw=raw)
        # The manager bounds the data (MAX_EVENT_JSON_BYTES), whoever records an event.
        self._manager.record_event(job_id, body.event_type, body.data)
        return _ok()

    async def prompt(self, request: web.Request) -> web.Response:
        job_id = authenticate(request)
        prompt = self._manager.next_prompt(job_id)
        if prompt is None:
            return web.Response(status=204)
        return web.json_response({"content": prompt.content, "done": prompt.done})

    async def complete_job(self, request: web.Request) -> web.StreamResponse:
        job_id = authenticate_completion(request)
        body = await parse_body(request, schemas.JobCompleteRequest, MAX_COMPLETE_BODY_BYTES)
        # Details are refused over their bound (the client bounds them before sending, so only
        # a client that does not is told); a long message is cut by the manager instead.
        if body.details is not None and json_size(body.details) > MAX_COMPLETE_DETAILS_BYTES:
            raise SchemaViolation(
                f"details: larger than {MAX_COMPLETE_DETAILS_BYTES} bytes of JSON"
            )
        # The result is recorded, on disk, and the token revoked now; the container is stopped
        # only after this answer has been sent, so the agent is never killed mid-request.
        await self._manager.complete_job(
            job_id,
            body.success,
            body.message,
            iterations=body.iterations,
            details=body.details,
            teardown=False,
        )
        self._reports.forget(job_id)
        response = web.json_response({"status": "ok"})
        try:
            await response.prepare(request)
            await response.write_eof()
        finally:
            self._manager.begin_teardown(job_id)
        return response

    async def llm_complete(self, request: web.Request) -> web.Response:
        job_id = authenticate(request)
        raw = await read_body(request, request.app[MAX_BODY_KEY])
        body = await parse_body(request, schemas.CompleteRequest, raw=raw)
        result = await self._proxy.complete(
            job_id,
            [m.model_dump(exclude_none=True) for m in body.messages],
            request_bytes=len(raw),  # bounds the input tokens the ledger holds
            max_tokens=body.max_tokens,
            model=body.model,
            temperature=body.temperature,
            stop_sequences=body.stop_sequences,
        )
        return web.json_response(
            {
                "content": result.content,
                "finish_reason": result.finish_reason,
                "input_tokens": result.input_tokens,
                "output_tokens": result.output_tokens,
            }
        )

    async def llm_complete_with_tools(self, request: web.Request) -> web.Response:
        job_id = authenticate(request)
        raw = await read_body(request, request.app[MAX_BODY_KEY])
        body = await parse_body(request, schemas.CompleteWithToolsRequest, raw=raw)
        result = await self._proxy.complete(
            job_id,
            [m.model_dump(exclude_none=True) for m in body.messages],
            request_bytes=len(raw),
            max_tokens=body.max_tokens,
            model=body.model,
            temperature=body.temperature,
            stop_sequences=body.stop_sequences,
            tools=[t.model_dump() for t in body.tools],
            tool_choice=(
                body.tool_choice.model_dump(exclude_none=True)
                if isinstance(body.tool_choice, schemas.NamedToolChoice)
                else body.tool_choice
            ),
        )
        # Extras first, so a provider field can never overwrite the answer's own fields.
        payload: dict[str, Any] = {
            **result.extras,
            "content": result.content,
            "tool_calls": [
                {"id": c.id, "name": c.name, "arguments": dict(c.arguments)}
                for c in result.tool_calls
            ],
            "finish_reason": result.finish_reason,
            "input_tokens": result.input_tokens,
            "output_tokens": result.output_tokens,
        }
        return web.json_response(payload)


def build_app(
    manager: ContainerJobManager, proxy: LlmProxy, metrics: Metrics | None = None
) -> web.Application:
    """The aiohttp application serving the worker API."""
    metrics = metrics or manager.metrics
    counting = [metrics.middleware()] if metrics is not None else []
    app = web.Application(
        middlewares=[*counting, job_log_context, error_middleware, start_gate],
        client_max_size=manager.settings.http_max_body_bytes,
    )
    app[MANAGER_KEY] = manager
    app[PROXY_KEY] = proxy
    app[MAX_BODY_KEY] = manager.settings.http_max_body_bytes
    api = WorkerApi(manager, proxy)
    prefix = "/worker/{job_id}"
    app.router.add_get("/health", api.health)
    app.router.add_get("/openapi.json", api.openapi)
    app.router.add_get(WARM_CLAIM, api.warm_claim)
    app.router.add_get(f"{prefix}/job", api.get_job)
    app.router.add_get(f"{prefix}/credentials", api.credentials)
    app.router.add_get(f"{prefix}/tools", api.tools)
    app.router.add_post(f"{prefix}/status", api.status)
    app.router.add_post(f"{prefix}/event", api.event)
    app.router.add_get(f"{prefix}/prompt", api.prompt)
    app.router.add_post(f"{prefix}/complete", api.complete_job)
    app.router.add_get(f"{prefix}/{WORKSPACE}", api.fetch_workspace)
    app.router.add_put(f"{prefix}/{WORKSPACE}", api.push_workspace)
    app.router.add_post(f"{prefix}/llm/complete", api.llm_complete)
    app.router.add_post(f"{prefix}/llm/complete_with_tools", api.llm_complete_with_tools)
    # One pooled keep-alive client for both passthrough doors (each sets its own timeouts).
    upstream = UpstreamHttp(read_timeout_s=manager.settings.llm_timeout_s)
    add_anthropic_routes(app, manager, authenticate_llm_key, upstream)
    add_openai_routes(app, manager, authenticate_job_key, upstream)

    async def close_upstream(app: web.Application) -> None:
        await upstream.close()

    app.on_cleanup.append(close_upstream)
    return app


# Connections the kernel queues before the loop accepts them: a burst of jobs starting at once.
LISTEN_BACKLOG = 1024


async def start_worker_api(
    app: web.Application,
    host: str,
    port: int,
    limits: ConnectionLimits | None = None,
    metrics: Metrics | None = None,
    tls: ssl.SSLContext | None = None,
) -> tuple[web.AppRunner, int]:
    """Serves ``app`` on host:port (0 picks a free port) behind the connection caps and
    timeouts of ``limits``, over TLS when ``tls`` is given; returns the runner and the port."""
    limits = limits or ConnectionLimits()
    # aiohttp's own keep-alive timer stays as a backstop behind the guard's deadlines.
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=limits.idle_timeout_s + limits.header_timeout_s,
    )
    await runner.setup()
    assert runner.server is not None
    try:
        sock = listening_socket(host, port, LISTEN_BACKLOG)
    except BaseException:
        await runner.cleanup()
        raise
    guard = ConnectionGuard(runner.server, limits, metrics)
    site = GuardedSite(runner, sock, guard, backlog=LISTEN_BACKLOG, tls=tls)
    try:
        await site.start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    return runner, int(sock.getsockname()[1])
