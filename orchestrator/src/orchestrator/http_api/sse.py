"""Server-sent events as the LLM routes pass them on: split into whole events, so that what a
route adds (an error event when a stream is cut) never lands inside one the upstream sent.

An event ends at a blank line (``\\n\\n``, or ``\\r\\n\\r\\n`` from some servers). Bytes are
kept exactly as they came; only the ``data:`` payload is decoded, and only by whoever asks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

# An event longer than this is not one any provider sends: it is passed on unread.
MAX_EVENT_BYTES = 1 << 20


class SseSplitter:
    """Feeds chunks in, yields complete events (their bytes, blank line included)."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        data = self._pending + chunk if self._pending else chunk
        start = 0
        while True:
            end = _event_end(data, start)
            if end < 0:
                break
            yield data[start:end]
            start = end
        rest = data[start:]
        if len(rest) > MAX_EVENT_BYTES:
            # Too long to be an event worth reading: passed on as it is, never parsed.
            yield rest
            rest = b""
        self._pending = rest

    def rest(self) -> bytes:
        """What is left when the stream ended (an event without its blank line)."""
        rest, self._pending = self._pending, b""
        return rest


def _event_end(data: bytes, start: int) -> int:
    lf = data.find(b"\n\n", start)
    crlf = data.find(b"\r\n\r\n", start)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf + 4
    return lf + 2 if lf >= 0 else -1


def event_fields(event: bytes) -> tuple[str, bytes]:
    """(the ``event:`` name or "", the joined ``data:`` payload) of one event."""
    name = ""
    data: list[bytes] = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode(errors="replace")
    return name, b"\n".join(data)


def event_json(payload: bytes) -> dict[str, Any] | None:
    """The payload as a JSON object, or None (``[DONE]``, not JSON, not an object)."""
    if not payload or payload[:1] != b"{":
        return None
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def encode_event(document: dict[str, Any], name: str | None = None) -> bytes:
    """One event carrying ``document`` as its data (and ``name`` as its type)."""
    head = f"event: {name}\n" if name else ""
    body = json.dumps(document, separators=(",", ":"))
    return f"{head}data: {body}\n\n".encode()
