"""Per-request log context: the job id on every worker-API log line, a request id on every
control-plane one.

Both doors run each request in its own asyncio task, so values bound with structlog's
contextvars stay with that request and are merged into every line it logs.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog
from aiohttp import web

REQUEST_ID_HEADER = "x-request-id"
# A client-chosen id is echoed into logs: keep it short and printable.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_id_from_metadata(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The caller's ``x-request-id`` when it is well-formed, else a fresh one."""
    for key, value in metadata or ():
        if key.lower() == REQUEST_ID_HEADER:
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            if _REQUEST_ID.match(text):
                return text
    return uuid.uuid4().hex


def bind_request(metadata: Iterable[tuple[str, Any]] | None, job_id: str = "") -> str:
    """Binds ``request_id`` (and ``job_id`` when given) for the rest of this RPC's task."""
    request_id = request_id_from_metadata(metadata)
    values: dict[str, str] = {"request_id": request_id}
    if job_id:
        values["job_id"] = job_id
    structlog.contextvars.bind_contextvars(**values)
    return request_id


@web.middleware
async def job_log_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Binds the path's ``job_id`` (as written; authentication validates it) for the request."""
    job_id = request.match_info.get("job_id", "")[:64]
    if not job_id:
        return await handler(request)
    with structlog.contextvars.bound_contextvars(job_id=job_id):
        return await handler(request)
