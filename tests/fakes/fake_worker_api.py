"""A fake of the orchestrator's worker HTTP API (SPEC.md) for tests.

Real HTTP on a loopback port chosen by the OS, with the same auth rules as the real server (a
bearer token bound to one job, revoked after ``/complete``), a scripted model that answers each
LLM call with the next canned response, a queue of follow-up prompts, failure injection per
route, and a record of every request with the status it got.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

EVENT_TYPES = frozenset({"message", "tool_use", "tool_result", "reasoning", "status"})
LLM_ROUTES = frozenset({"llm/complete", "llm/complete_with_tools"})

ModelStep = Mapping[str, Any] | Callable[[Mapping[str, Any]], Mapping[str, Any]]

_call_ids = itertools.count(1)


def text_answer(text: str, **extra: Any) -> dict[str, Any]:
    """A model answer with text and no tool calls (a final answer)."""
    return {
        "content": text,
        "tool_calls": [],
        "finish_reason": "stop",
        "input_tokens": 10,
        "output_tokens": 5,
        **extra,
    }


def tool_call(
    name: str, arguments: Mapping[str, Any], call_id: str | None = None
) -> dict[str, Any]:
    """One tool call as the worker API returns it."""
    return {"id": call_id or f"call_{next(_call_ids)}", "name": name, "arguments": dict(arguments)}


def tool_answer(*calls: Mapping[str, Any], content: str | None = None) -> dict[str, Any]:
    """A model answer that calls tools."""
    return {
        "content": content,
        "tool_calls": [dict(call) for call in calls],
        "finish_reason": "tool_use",
        "input_tokens": 20,
        "output_tokens": 10,
    }


@dataclass
class RecordedRequest:
    """One request the fake received, and the status it answered with."""

    method: str
    route: str  # the part after /worker/{job_id}/, or the full path for other routes
    body: Any
    status: int = 0
    peer: tuple[Any, ...] | None = None  # the client's address: tells connections apart


@dataclass
class _Failure:
    status: int
    error: str
    message: str
    refusal: str | None = None
    retry_after: str | None = None


@dataclass
class FakeWorkerApi:
    """The fake server. Configure the attributes, ``await start()``, point a client at ``url``."""

    task: str = "Create hello.txt containing hello"
    max_iterations: int | None = None
    deadline: str | None = None
    wait_for_prompts: bool = False
    # GET /job's ``claude`` (a Claude Code job: the CLI's settings and key), or None.
    claude: dict[str, Any] | None = None
    # GET /job's ``agent`` (an agent-mode job: its catalogue entry and route), or None.
    agent: dict[str, Any] | None = None
    # GET /job's ``llm_refusal``: what the orchestrator records when it refuses a model call.
    llm_refusal: str | None = None
    credentials: dict[str, Any] = field(default_factory=dict)
    # GET /job's ``workspace_sync`` (a job whose /workspace is a volume of its own), the
    # archive GET workspace answers with, and the archives PUT workspace received.
    workspace_sync: dict[str, Any] | None = None
    workspace_archive: bytes = b""
    pushed_workspaces: list[bytes] = field(default_factory=list)
    # The body of GET /tools; None answers 404, as an orchestrator without custom tools would.
    tools: dict[str, Any] | None = None
    script: list[ModelStep] = field(default_factory=list)
    prompts: deque[dict[str, Any]] = field(default_factory=deque)
    job_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    token: str = field(default_factory=lambda: "irc_" + secrets.token_urlsafe(32))
    requests: list[RecordedRequest] = field(default_factory=list)
    revoked: bool = False
    url: str = ""
    _failures: dict[str, deque[_Failure]] = field(default_factory=dict)
    _revoke_on: set[str] = field(default_factory=set)
    _hold_llm: bool = False
    _llm_entered: asyncio.Event = field(default_factory=asyncio.Event)
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, port: int = 0) -> str:
        """Starts serving on 127.0.0.1 (an OS-chosen port by default); returns the base URL."""
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_route("*", "/worker/{job_id}/{route:.+}", self._worker_route)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def close(self) -> None:
        """Releases held LLM calls and stops the server."""
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def restart(self) -> None:
        """Stops and starts again on the same port, dropping every open connection."""
        port = int(self.url.rsplit(":", 1)[1])
        await self.close()
        self._release = asyncio.Event()
        await self.start(port)

    # -- scripting --------------------------------------------------------------------------

    def fail(
        self,
        route: str,
        status: int,
        *,
        times: int = 1,
        error: str | None = None,
        message: str | None = None,
        refusal: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        """The next ``times`` authorised requests to ``route`` get ``status`` and an error body
        (with a ``refusal`` code and a ``Retry-After`` header when given)."""
        queue = self._failures.setdefault(route, deque())
        for _ in range(times):
            queue.append(
                _Failure(
                    status, error or f"http_{status}", message or "injected", refusal, retry_after
                )
            )

    def revoke_on(self, route: str) -> None:
        """The next request to ``route`` revokes the token and is answered 401."""
        self._revoke_on.add(route)

    def hold_llm(self) -> asyncio.Event:
        """LLM calls block until the fake closes; the returned event is set when one arrives."""
        self._hold_llm = True
        return self._llm_entered

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        """Waits until ``predicate()`` holds, re-checking after every recorded request."""

        async def waiter() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        await asyncio.wait_for(waiter(), timeout)

    # -- views of what happened -------------------------------------------------------------

    def to(self, route: str) -> list[RecordedRequest]:
        """Every request to ``route``, accepted or not."""
        return [r for r in self.requests if r.route == route]

    def accepted(self, route: str) -> list[RecordedRequest]:
        """The requests to ``route`` answered with a 2xx status."""
        return [r for r in self.to(route) if 200 <= r.status < 300]

    @property
    def events(self) -> list[tuple[str, dict[str, Any]]]:
        """Accepted events as ``(event_type, data)``, in arrival order."""
        return [(r.body["event_type"], r.body["data"]) for r in self.accepted("event")]

    @property
    def statuses(self) -> list[tuple[str, int]]:
        """Accepted status updates as ``(message, iteration)``."""
        return [(r.body["message"], r.body["iteration"]) for r in self.accepted("status")]

    @property
    def completions(self) -> list[dict[str, Any]]:
        """Bodies of every ``/complete`` request, accepted or not."""
        return [r.body for r in self.to("complete")]

    @property
    def llm_requests(self) -> list[dict[str, Any]]:
        """Bodies of the accepted LLM calls, in order."""
        return [r.body for r in self.requests if r.route in LLM_ROUTES and r.status == 200]

    # -- handlers ---------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return await self._answer(
            RecordedRequest("GET", "/health", None), web.json_response({"status": "ok"})
        )

    async def _worker_route(self, request: web.Request) -> web.StreamResponse:
        route = request.match_info["route"]
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        record = RecordedRequest(request.method, route, body, peer=peer)
        if route in self._revoke_on and self._authorised(request):
            self._revoke_on.discard(route)
            self.revoked = True
        if not self._authorised(request):
            return await self._answer(record, _error(401, "invalid_token", "Invalid bearer token"))
        failures = self._failures.get(route)
        if failures:
            failure = failures.popleft()
            response = _error(failure.status, failure.error, failure.message, failure.refusal)
            if failure.retry_after is not None:
                response.headers["Retry-After"] = failure.retry_after
            return await self._answer(record, response)
        if route == "workspace" and request.method in ("GET", "PUT"):
            # The archives are bytes both ways, no JSON.
            record.body = None
            if request.method == "PUT":
                self.pushed_workspaces.append(raw)
                return await self._answer(
                    record, web.json_response({"status": "ok", "bytes": len(raw), "entries": 0})
                )
            return await self._answer(
                record,
                web.Response(body=self.workspace_archive, content_type="application/gzip"),
            )
        handler = self._handlers().get((request.method, route))
        if handler is None:
            return await self._answer(record, _error(404, "not_found", f"no route {route}"))
        if not isinstance(body, dict) and request.method == "POST":
            return await self._answer(record, _error(400, "invalid_request", "body must be JSON"))
        return await self._answer(record, await handler(body))

    def _handlers(self) -> dict[tuple[str, str], Callable[[Any], Any]]:
        return {
            ("GET", "job"): self._job,
            ("GET", "credentials"): self._credentials,
            ("GET", "tools"): self._tools,
            ("POST", "llm/complete"): self._llm,
            ("POST", "llm/complete_with_tools"): self._llm,
            ("POST", "status"): self._status,
            ("POST", "event"): self._event,
            ("GET", "prompt"): self._prompt,
            ("POST", "complete"): self._complete,
        }

    def _authorised(self, request: web.Request) -> bool:
        return (
            not self.revoked
            and request.match_info["job_id"] == self.job_id
            and request.headers.get("Authorization") == f"Bearer {self.token}"
        )

    async def _answer(self, record: RecordedRequest, response: web.Response) -> web.Response:
        record.status = response.status
        async with self._changed:
            self.requests.append(record)
            self._changed.notify_all()
        return response

    async def _job(self, _: Any) -> web.Response:
        return web.json_response(
            {
                "job_id": self.job_id,
                "task_description": self.task,
                "project_dir": "/workspace",
                "mode": (
                    "agent"
                    if self.agent is not None
                    else "worker"
                    if self.claude is None
                    else "claude-code"
                ),
                "max_iterations": self.max_iterations,
                "deadline": self.deadline,
                "wait_for_prompts": self.wait_for_prompts,
                "credential_env": {},
                "claude": self.claude,
                "mcp_servers": [],
                "wasm_tools": [],
                "llm_refusal": self.llm_refusal,
                "egress": None,
                "workspace_sync": self.workspace_sync,
                "agent": self.agent,
            }
        )

    async def _credentials(self, _: Any) -> web.Response:
        return web.json_response(self.credentials)

    async def _tools(self, body: Any) -> web.Response:
        if self.tools is None:
            return _error(404, "not_found", "no route tools")
        return web.json_response(self.tools)

    async def _llm(self, body: dict[str, Any]) -> web.Response:
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return _error(422, "invalid_body", "messages must be a non-empty list")
        if self._hold_llm:
            self._llm_entered.set()
            await self._release.wait()
            return _error(503, "unavailable", "shutting down")
        if not self.script:
            return _error(500, "internal", "the model script is exhausted")
        step = self.script.pop(0)
        answer = step(body) if callable(step) else step
        return web.json_response(dict(answer))

    async def _status(self, body: dict[str, Any]) -> web.Response:
        if not isinstance(body.get("message"), str) or not isinstance(body.get("iteration"), int):
            return _error(422, "invalid_body", "status needs message and iteration")
        return web.json_response({"status": "ok"})

    async def _event(self, body: dict[str, Any]) -> web.Response:
        if body.get("event_type") not in EVENT_TYPES or not isinstance(body.get("data"), dict):
            return _error(422, "invalid_body", f"unknown event type {body.get('event_type')!r}")
        return web.json_response({"status": "ok"})

    async def _prompt(self, _: Any) -> web.Response:
        if not self.prompts:
            return web.Response(status=204)
        return web.json_response(self.prompts.popleft())

    async def _complete(self, body: dict[str, Any]) -> web.Response:
        if not isinstance(body.get("success"), bool) or not isinstance(body.get("message"), str):
            return _error(422, "invalid_body", "complete needs success and message")
        self.revoked = True  # as on the real server: the token dies with the job
        return web.json_response({"status": "ok"})


def _error(status: int, code: str, message: str, refusal: str | None = None) -> web.Response:
    body = {"error": code, "message": message}
    if refusal is not None:
        body["refusal"] = refusal
    return web.json_response(body, status=status)
