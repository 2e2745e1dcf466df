"""The server name of a TLS ClientHello (RFC 8446 4.1.2, RFC 6066 3), read with bounds.

After ``CONNECT api.example:443`` the gateway reads the client's first flight before it
connects anywhere: the ClientHello must name the host ``CONNECT`` named, or a job could open a
tunnel to an allowed host's address and talk TLS to another name served there (domain fronting
through a shared CDN address). Everything is bounded: records of at most 2^14 bytes (what TLS
allows), a handshake message of at most :data:`MAX_HELLO_BYTES`, and whatever is not a
well-formed ClientHello is a :class:`ClientHelloError`, never a traceback.
"""

from __future__ import annotations

import asyncio
import struct

HANDSHAKE_RECORD = 22
CLIENT_HELLO = 1
SERVER_NAME_EXTENSION = 0
HOST_NAME_TYPE = 0
MAX_RECORD_BYTES = 1 << 14
# A hello with a post-quantum key share is ~1.8 KiB; 64 KiB leaves room for any real one.
MAX_HELLO_BYTES = 1 << 16


class ClientHelloError(ValueError):
    """What the client sent is not a well-formed TLS ClientHello."""


class _Cursor:
    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, count: int) -> bytes:
        end = self._pos + count
        if end > len(self._data):
            raise ClientHelloError("ClientHello is truncated")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> bytes:
        return self.take(self.uint(length_size))

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos


def parse_client_hello(message: bytes) -> str | None:
    """The host name a ClientHello handshake message (type, length, body) asks for, None when
    it carries no server_name extension."""
    cursor = _Cursor(message)
    if cursor.uint(1) != CLIENT_HELLO:
        raise ClientHelloError("the first handshake message is not a ClientHello")
    body = _Cursor(cursor.vector(3))
    if cursor.remaining:
        raise ClientHelloError("bytes after the ClientHello in its handshake message")
    body.take(2 + 32)  # legacy_version, random
    if len(body.vector(1)) > 32:
        raise ClientHelloError("session id longer than 32 bytes")
    suites = body.vector(2)
    if not suites or len(suites) % 2:
        raise ClientHelloError("malformed cipher suite list")
    if not body.vector(1):
        raise ClientHelloError("empty compression method list")
    if not body.remaining:
        return None  # a hello without extensions (TLS 1.2 allows it)
    extensions = _Cursor(body.vector(2))
    if body.remaining:
        raise ClientHelloError("bytes after the ClientHello's extensions")
    name: str | None = None
    seen: set[int] = set()
    while extensions.remaining:
        kind = extensions.uint(2)
        data = extensions.vector(2)
        if kind in seen:
            raise ClientHelloError(f"extension {kind} appears twice")
        seen.add(kind)
        if kind == SERVER_NAME_EXTENSION:
            name = _server_name(data)
    return name


def _server_name(data: bytes) -> str | None:
    outer = _Cursor(data)
    names = _Cursor(outer.vector(2))
    if outer.remaining:
        raise ClientHelloError("bytes after the server name list")
    found: str | None = None
    while names.remaining:
        kind = names.uint(1)
        raw = names.vector(2)
        if kind != HOST_NAME_TYPE:
            continue
        if found is not None:
            raise ClientHelloError("two host names in server_name")
        if not raw or not raw.isascii():
            raise ClientHelloError("server name is empty or not ASCII")
        found = raw.decode("ascii")
    return found


async def read_client_hello(reader: asyncio.StreamReader) -> tuple[bytes, str | None]:
    """Reads TLS records until the first handshake message is whole; returns every byte read
    (to forward upstream as it came) and the server name. The caller bounds the time."""
    raw = bytearray()
    message = bytearray()
    needed: int | None = None
    while needed is None or len(message) < needed:
        try:
            header = await reader.readexactly(5)
        except asyncio.IncompleteReadError:
            raise ClientHelloError("the connection ended inside a ClientHello") from None
        kind, major, _minor, length = struct.unpack("!BBBH", header)
        if kind != HANDSHAKE_RECORD or major != 3:
            raise ClientHelloError("not a TLS handshake record")
        if not 0 < length <= MAX_RECORD_BYTES:
            raise ClientHelloError(f"TLS record of {length} bytes")
        try:
            fragment = await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise ClientHelloError("the connection ended inside a ClientHello") from None
        raw += header
        raw += fragment
        message += fragment
        if needed is None and len(message) >= 4:
            needed = 4 + int.from_bytes(message[1:4], "big")
            if needed > MAX_HELLO_BYTES:
                raise ClientHelloError(f"ClientHello of {needed} bytes")
    # Bytes of a second handshake message in the same record are no part of a ClientHello.
    if len(message) != needed:
        raise ClientHelloError("more than the ClientHello in its first flight")
    return bytes(raw), parse_client_hello(bytes(message))
