"""TLS server side over an asyncio stream whose first bytes were already read.

The gateway reads a tunnel's ClientHello itself (to check its server name, sni.py) before it
decides to terminate TLS; asyncio's ``start_tls`` would start from the socket and lose those
bytes. So the TLS session runs on memory BIOs: the ClientHello is fed in first, then whatever
the socket brings.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

CHUNK_BYTES = 64 * 1024


class TlsClosed(Exception):
    """The peer went away, or the TLS session failed (handshake or record)."""


class TlsServerStream:
    """Reads and writes plaintext of one TLS session whose records travel over ``reader`` and
    ``writer``."""

    def __init__(
        self,
        context: ssl.SSLContext,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        first_bytes: bytes,
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._incoming.write(first_bytes)
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._reader = reader
        self._writer = writer
        self._buffer = bytearray()
        self._eof = False

    @property
    def alpn(self) -> str | None:
        return self._tls.selected_alpn_protocol()

    async def handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
            except ssl.SSLError as exc:
                await self._flush()  # the alert tells the client why
                raise TlsClosed(f"TLS handshake failed ({exc.reason or exc})") from None
        await self._flush()

    async def _fill(self) -> None:
        data = await self._reader.read(CHUNK_BYTES)
        if not data:
            self._incoming.write_eof()
            raise TlsClosed("the client closed the connection")
        self._incoming.write(data)

    async def _flush(self) -> None:
        pending = self._outgoing.read()
        if pending:
            self._writer.write(pending)
            await self._writer.drain()

    async def read(self, size: int = CHUNK_BYTES) -> bytes:
        """Up to ``size`` bytes of plaintext; b"" at the end of the session."""
        if self._buffer:
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
            return data
        return await self._read_plain(size)

    async def _read_plain(self, size: int = CHUNK_BYTES) -> bytes:
        if self._eof:
            return b""
        while True:
            try:
                return self._tls.read(size)
            except ssl.SSLWantReadError:
                await self._flush()
                try:
                    await self._fill()
                except TlsClosed:
                    self._eof = True
                    return b""
            except ssl.SSLZeroReturnError:
                self._eof = True
                return b""
            except ssl.SSLError as exc:
                raise TlsClosed(f"TLS failed ({exc.reason or exc})") from None

    async def readuntil(self, separator: bytes, limit: int) -> bytes:
        """Plaintext up to and including ``separator``; ValueError past ``limit`` bytes,
        asyncio.IncompleteReadError at the end of the session."""
        while True:
            found = self._buffer.find(separator)
            if found >= 0:
                end = found + len(separator)
                data = bytes(self._buffer[:end])
                del self._buffer[:end]
                return data
            if len(self._buffer) > limit:
                raise ValueError("separator not found within the limit")
            chunk = await self._read_more()
            if not chunk:
                partial = bytes(self._buffer)
                self._buffer.clear()
                raise asyncio.IncompleteReadError(partial, None)
            self._buffer += chunk

    async def readexactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = await self._read_more()
            if not chunk:
                partial = bytes(self._buffer)
                self._buffer.clear()
                raise asyncio.IncompleteReadError(partial, size)
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def _read_more(self) -> bytes:
        return await self._read_plain()

    async def write(self, data: bytes) -> None:
        try:
            self._tls.write(data)
        except ssl.SSLError as exc:
            raise TlsClosed(f"TLS failed ({exc.reason or exc})") from None
        await self._flush()

    async def close(self) -> None:
        """Sends close_notify (best effort); the socket is the caller's to close."""
        with contextlib.suppress(ssl.SSLError, ValueError):
            self._tls.unwrap()
        with contextlib.suppress(ConnectionError, OSError):
            await self._flush()
