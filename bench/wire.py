"""Just enough HTTP/1.1 framing for the benchmark's own fast server and client.

Both sides of the load run on plain ``asyncio.Protocol``s instead of a web framework, so the
harness costs a few tens of microseconds per request and is never what limits a measurement.
Only what the peers here send is handled: ``Content-Length`` or chunked bodies, keep-alive.
"""

from __future__ import annotations

from dataclasses import dataclass

_CRLF = b"\r\n"
_HEAD_END = b"\r\n\r\n"


@dataclass(frozen=True)
class Message:
    """One parsed request or response: the start line, lower-cased headers, the body."""

    start_line: bytes
    headers: dict[bytes, bytes]
    body: bytes

    @property
    def status(self) -> int:
        """The status code of a response (``HTTP/1.1 200 OK`` → 200)."""
        return int(self.start_line[9:12])


class FramingError(Exception):
    """The peer sent something that is not HTTP/1.1 as handled here."""


def take_message(buffer: bytearray) -> Message | None:
    """Removes one complete message from the front of ``buffer``; None if it is incomplete."""
    head_end = buffer.find(_HEAD_END)
    if head_end < 0:
        if len(buffer) > 64 * 1024:
            raise FramingError("header section larger than 64 KiB")
        return None
    lines = bytes(buffer[:head_end]).split(_CRLF)
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    start = head_end + 4
    length = headers.get(b"content-length")
    if length is not None:
        end = start + int(length)
        if len(buffer) < end:
            return None
        body = bytes(buffer[start:end])
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        chunked = _take_chunked(buffer, start)
        if chunked is None:
            return None
        body, end = chunked
    else:
        body, end = b"", start
    del buffer[:end]
    return Message(lines[0], headers, body)


def _take_chunked(buffer: bytearray, position: int) -> tuple[bytes, int] | None:
    parts: list[bytes] = []
    while True:
        line_end = buffer.find(_CRLF, position)
        if line_end < 0:
            return None
        size = int(bytes(buffer[position:line_end]).split(b";")[0].strip(), 16)
        position = line_end + 2
        if size == 0:
            # Trailers (none expected) end with an empty line.
            trailer_end = buffer.find(_CRLF, position)
            while trailer_end > position:
                position = trailer_end + 2
                trailer_end = buffer.find(_CRLF, position)
            if trailer_end < 0:
                return None
            return b"".join(parts), trailer_end + 2
        if len(buffer) < position + size + 2:
            return None
        parts.append(bytes(buffer[position : position + size]))
        position += size + 2


def build_request(
    method: str, host: str, port: int, path: str, headers: dict[str, str], body: bytes
) -> bytes:
    """A complete keep-alive request, built once and sent many times."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def build_response(status: int, reason: str, body: bytes, content_type: str) -> bytes:
    """A complete keep-alive response."""
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body
