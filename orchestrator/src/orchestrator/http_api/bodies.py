"""Reading a request body within a size limit, without holding more than the limit.

aiohttp's ``client_max_size`` is one limit for the whole application, and ``request.read()``
reads up to it before refusing; the report routes need far less than the LLM routes. A body
whose ``Content-Length`` is over the route's limit is refused before any of it is read, and one
sent without a length is refused as soon as it passes the limit.
"""

from __future__ import annotations

from aiohttp import web

from orchestrator.errors import PayloadTooLarge


def check_declared_length(request: web.Request, limit: int) -> None:
    """Raises PayloadTooLarge (413) when the request's ``Content-Length`` exceeds ``limit``."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(_too_large(limit, declared))


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request's body, at most ``limit`` bytes; raises PayloadTooLarge (413) beyond."""
    check_declared_length(request, limit)
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(_too_large(limit, None))
    return bytes(body)


def _too_large(limit: int, declared: int | None) -> str:
    sent = f" (Content-Length {declared})" if declared is not None else ""
    return f"request body exceeds {limit} bytes, the limit of this route{sent}"
