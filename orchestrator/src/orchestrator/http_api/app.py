"""The worker HTTP API: the only door out of a job container (SPEC.md, "Worker HTTP API").

Every ``/worker/{job_id}/...`` route needs the job's own bearer token. Errors are JSON
``{"error", "message"}`` with the spec's codes, never a stack trace.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from orchestrator.accept_errors import listening_socket
from orchestrator.errors import (
    ErrorKind,
    InvalidArgument,
    OrchestratorError,
    PayloadTooLarge,
    SchemaViolation,
    Unauthenticated,
)
from orchestrator.http_api import schemas
from orchestrator.http_api.anthropic_route import add_anthropic_routes
from orchestrator.http_api.connection_limits import ConnectionLimits
from orchestrator.http_api.guarded_server import ConnectionGuard, GuardedSite
from orchestrator.http_api.openapi import build_openapi
from orchestrator.jobs.manager import ContainerJobManager
from orchestrator.llm.proxy import LlmProxy
from orchestrator.log_context import job_log_context
from orchestrator.logging import get_logger
from orchestrator.metrics import Metrics

log = get_logger(__name__)
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MANAGER_KEY = web.AppKey("manager", ContainerJobManager)
PROXY_KEY = web.AppKey("proxy", LlmProxy)
_BEARER = "Bearer "


def error_response(kind: ErrorKind, message: str) -> web.Response:
    codes = kind.value
    return web.json_response(
        {"error": codes.http_code, "message": message}, status=codes.http_status
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turns every failure into the spec's JSON error body."""
    try:
        return await handler(request)
    except OrchestratorError as exc:
        return error_response(exc.kind, exc.message)
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


def _job_id(request: web.Request) -> str:
    raw = request.match_info["job_id"]
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise InvalidArgument(f"job id {raw[:64]!r} is not a UUID") from None


def authenticate(request: web.Request, allow_api_key: bool = False) -> str:
    """The path's job id, if the request carries that job's live token."""
    job_id = _job_id(request)
    header = request.headers.get("Authorization", "")
    if header.startswith(_BEARER):
        token = header[len(_BEARER) :].strip()
    elif allow_api_key:
        token = request.headers.get("x-api-key", "")
    else:
        token = ""
    if not token:
        raise Unauthenticated()
    request.app[MANAGER_KEY].authenticate(job_id, token)
    return job_id


async def parse_body(request: web.Request, model: type[M]) -> M:
    """Reads and validates a JSON body: 400 if it is not JSON, 422 if it breaks the schema."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"request body exceeds {exc.text}") from None
    if not raw:
        raise InvalidArgument("request body is empty: send a JSON object")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise InvalidArgument("request body is not valid JSON") from None
        described = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors[:5]
        )
        raise SchemaViolation(f"request body does not match the schema: {described}") from None


def _ok() -> web.Response:
    return web.json_response({"status": "ok"})


def _bounded(value: Any, limit: int = schemas.MAX_EVENT_TEXT, depth: int = 0) -> Any:
    """Truncates long strings inside event data, with a marker saying how much was cut."""
    if isinstance(value, str):
        if len(value) > limit:
            return value[:limit] + f"…[truncated {len(value) - limit} chars]"
        return value
    if depth > 8:
        return "…[truncated: nested too deep]"
    if isinstance(value, dict):
        return {str(k)[:256]: _bounded(v, limit, depth + 1) for k, v in list(value.items())[:200]}
    if isinstance(value, list):
        return [_bounded(v, limit, depth + 1) for v in value[:200]]
    return value


class WorkerApi:
    """Route handlers; each is a thin call into the job manager or the LLM proxy."""

    def __init__(self, manager: ContainerJobManager, proxy: LlmProxy) -> None:
        self._manager = manager
        self._proxy = proxy

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(build_openapi())

    async def get_job(self, request: web.Request) -> web.Response:
        job_id = authenticate(request)
        job = self._manager.get_job(job_id)
        settings = self._manager.settings
        body = schemas.JobInfo(
            job_id=job.job_id,
            task_description=job.task,
            project_dir="/workspace",
            mode=job.mode.value,
            max_iterations=job.limits.max_iterations,
            deadline=job.deadline.isoformat(),
            wait_for_prompts=job.wait_for_prompts,
            credential_env={g.name: g.env_name for g in self._manager.tokens.grants(job.job_id)},
            claude_max_turns=job.limits.claude_max_turns,
            claude_model=job.limits.claude_model,
            claude_allowed_tools=list(settings.claude_allowed_tools),
        )
        return web.json_response(body.model_dump())

    async def credentials(self, request: web.Request) -> web.Response:
        job_id = authenticate(request)
        return web.json_response(dict(self._manager.tokens.credentials_for(job_id)))

    async def tools(self, request: web.Request) -> web.Response:
        job_id = authenticate(request)
        return web.json_response(self._manager.served_tools(job_id))

    async def status(self, request: web.Request) -> web.Response:
        job_id = authenticate(request)
        body = await parse_body(request, schemas.StatusRequest)
        self._manager.record_status(job_id, body.message, body.iteration)
        return _ok()

    async def event(self, request: web.Request) -> web.Response:
        job_id = authenticate(request)
        body = await parse_body(request, schemas.EventRequest)
        self._manager.record_event(job_id, body.event_type, _bounded(body.data))
        return _ok()

    async def prompt(self, request: web.Request) -> web.Response:
        job_id = authenticate(request)
        prompt = self._manager.next_prompt(job_id)
        if prompt is None:
            return web.Response(status=204)
        return web.json_response({"content": prompt.content, "done": prompt.done})

    async def complete_job(self, request: web.Request) -> web.StreamResponse:
        job_id = authenticate(request)
        body = await parse_body(request, schemas.JobCompleteRequest)
        details = body.details
        if details is not None and len(json.dumps(details, default=str)) > 64_000:
            raise SchemaViolation("details: larger than 64000 bytes of JSON")
        # The result is recorded and the token revoked now; the container is stopped only after
        # this answer has been sent, so the agent is never killed mid-request.
        self._manager.complete_job(
            job_id,
            body.success,
            body.message,
            iterations=body.iterations,
            details=details,
            teardown=False,
        )
        response = web.json_response({"status": "ok"})
        try:
            await response.prepare(request)
            await response.write_eof()
        finally:
            self._manager.begin_teardown(job_id)
        return response

    async def llm_complete(self, request: web.Request) -> web.Response:
        job_id = authenticate(request)
        body = await parse_body(request, schemas.CompleteRequest)
        result = await self._proxy.complete(
            job_id,
            [m.model_dump(exclude_none=True) for m in body.messages],
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
        body = await parse_body(request, schemas.CompleteWithToolsRequest)
        result = await self._proxy.complete(
            job_id,
            [m.model_dump(exclude_none=True) for m in body.messages],
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
        middlewares=[*counting, job_log_context, error_middleware],
        client_max_size=manager.settings.http_max_body_bytes,
    )
    app[MANAGER_KEY] = manager
    app[PROXY_KEY] = proxy
    api = WorkerApi(manager, proxy)
    prefix = "/worker/{job_id}"
    app.router.add_get("/health", api.health)
    app.router.add_get("/openapi.json", api.openapi)
    app.router.add_get(f"{prefix}/job", api.get_job)
    app.router.add_get(f"{prefix}/credentials", api.credentials)
    app.router.add_get(f"{prefix}/tools", api.tools)
    app.router.add_post(f"{prefix}/status", api.status)
    app.router.add_post(f"{prefix}/event", api.event)
    app.router.add_get(f"{prefix}/prompt", api.prompt)
    app.router.add_post(f"{prefix}/complete", api.complete_job)
    app.router.add_post(f"{prefix}/llm/complete", api.llm_complete)
    app.router.add_post(f"{prefix}/llm/complete_with_tools", api.llm_complete_with_tools)
    add_anthropic_routes(app, manager, authenticate)
    return app


# Connections the kernel queues before the loop accepts them: a burst of jobs starting at once.
LISTEN_BACKLOG = 1024


async def start_worker_api(
    app: web.Application,
    host: str,
    port: int,
    limits: ConnectionLimits | None = None,
    metrics: Metrics | None = None,
) -> tuple[web.AppRunner, int]:
    """Serves ``app`` on host:port (0 picks a free port) behind the connection caps and
    timeouts of ``limits``; returns the runner and the port."""
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
    site = GuardedSite(runner, sock, guard, backlog=LISTEN_BACKLOG)
    try:
        await site.start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    return runner, int(sock.getsockname()[1])
