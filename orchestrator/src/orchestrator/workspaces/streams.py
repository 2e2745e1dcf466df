"""Bytes between the event loop and the thread that unpacks or packs an archive.

The gRPC stream is read on the event loop; ``tarfile`` reads and writes blocking file objects.
:class:`ChunkPipe` carries chunks from one to the other with a bounded depth, so a fast sender
waits for the disk instead of filling memory, and either side can give up: a refused archive
closes the pipe, which ends the sender's wait at once. :class:`LimitedReader` is the file the
unpacking thread reads: the archive uncompressed, its size counted on every byte, so the limit
holds for the names and headers tarfile reads too, not only for file contents.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import zlib
from collections import deque

from ironclaw_contract.archive_extract import ArchiveCorrupt, ArchiveTruncated
from orchestrator.errors import TooLarge

__all__ = ["ArchiveCorrupt", "ArchiveTruncated", "ChunkPipe", "LimitedReader", "PipeClosed"]

_GZIP_MAGIC = b"\x1f\x8b"


class PipeClosed(Exception):
    """The other side of the pipe gave up."""


class ChunkPipe:
    """A bounded queue of chunks between the event loop and one thread, either way round:
    the loop side uses ``put`` / ``get``, the thread side ``put_blocking`` / ``get_blocking``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, depth: int = 4) -> None:
        self._loop = loop
        self._depth = depth
        self._items: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._ended = False
        self._error: BaseException | None = None
        self._closed = False
        self._changed = asyncio.Event()

    def _signal(self) -> None:
        # Called with the condition held: wakes a waiting thread and the loop side.
        self._cond.notify_all()
        # RuntimeError: the loop closed under us, so nobody is waiting there any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._changed.set)

    async def put(self, chunk: bytes) -> None:
        """Queues a chunk, waiting while the pipe is full; raises PipeClosed once the other
        side gave up (or finished)."""
        while True:
            with self._cond:
                if self._closed:
                    raise PipeClosed()
                if len(self._items) < self._depth:
                    self._items.append(chunk)
                    self._signal()
                    return
                self._changed.clear()
            await self._changed.wait()

    def put_blocking(self, chunk: bytes) -> None:
        """``put`` for the thread side."""
        with self._cond:
            while len(self._items) >= self._depth and not self._closed:
                self._cond.wait()
            if self._closed:
                raise PipeClosed()
            self._items.append(chunk)
            self._signal()

    def end(self, error: BaseException | None = None) -> None:
        """No more chunks: the reader sees the end of the data (or ``error``) after the ones
        queued."""
        with self._cond:
            self._ended = True
            self._error = error
            self._signal()

    def close(self) -> None:
        """Either side gives up: every later ``put`` and ``get`` raises PipeClosed."""
        with self._cond:
            self._closed = True
            self._signal()

    async def get(self) -> bytes:
        """The next chunk; b"" at the end; raises the writer's error, or PipeClosed."""
        while True:
            with self._cond:
                if self._closed:
                    raise PipeClosed()
                if self._items:
                    chunk = self._items.popleft()
                    self._signal()
                    return chunk
                if self._ended:
                    if self._error is not None:
                        raise self._error
                    return b""
                self._changed.clear()
            await self._changed.wait()

    def get_blocking(self) -> bytes:
        """``get`` for the thread side."""
        with self._cond:
            while not self._items and not self._ended and not self._closed:
                self._cond.wait()
            if self._closed:
                raise PipeClosed()
            if not self._items:
                if self._error is not None:
                    raise self._error
                return b""
            chunk = self._items.popleft()
            self._signal()
            return chunk


class LimitedReader:
    """The archive as a blocking, read-only file, gunzipped when it starts with the gzip magic
    (or when ``compressed`` says so), at most ``limit`` bytes uncompressed (TooLarge)."""

    def __init__(self, pipe: ChunkPipe, limit: int, compressed: bool | None = None) -> None:
        self._pipe = pipe
        self._limit = limit
        self._compressed = compressed
        self._inflate: zlib._Decompress | None = None
        self._pending = b""  # received, not yet inflated
        # Inflated, not yet read: read from an offset, never shifted (tarfile reads 10 KiB at
        # a time; shifting a megabyte each time would cost a hundred times the data).
        self._current = b""
        self._offset = 0
        self._source_done = False
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        want = size if size >= 0 else 1 << 62
        pieces: list[bytes] = []
        got = 0
        while got < want:
            if self._offset >= len(self._current):
                if not self._fill():
                    break
                continue
            piece = self._current[self._offset : self._offset + (want - got)]
            self._offset += len(piece)
            got += len(piece)
            pieces.append(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _fill(self) -> bool:
        """Replaces the consumed bytes with the next uncompressed ones (possibly none yet);
        False at the end of the archive."""
        if not self._pending:
            if self._source_done:
                return False
            chunk = self._pipe.get_blocking()
            if not chunk:
                self._source_done = True
                return self._drain()
            self._pending = chunk
        if self._compressed is None:
            if len(self._pending) < 2:
                more = self._pipe.get_blocking()
                if more:
                    self._pending += more
                    return True
                self._source_done = True
            self._compressed = self._pending.startswith(_GZIP_MAGIC)
        if self._compressed:
            data = self._inflated()
        else:
            data, self._pending = self._pending, b""
        self._take(data)
        return True

    def _drain(self) -> bool:
        """At the end of the input: what the inflater still holds, or the end (an inflater
        short of the end of its gzip data means the archive was cut off)."""
        if self._inflate is None or self._inflate.eof:
            return False
        data = self._inflate.decompress(b"", self._room())
        if not data:
            raise ArchiveTruncated()
        self._take(data)
        return True

    def _inflated(self) -> bytes:
        if self._inflate is not None and self._inflate.eof:
            if not self._pending.startswith(_GZIP_MAGIC):
                self._pending = b""  # bytes after the gzip data: ignored, as gzip does
                return b""
            self._inflate = None  # a gzip file may be several members, one after another
        if self._inflate is None:
            self._inflate = zlib.decompressobj(wbits=31)
        try:
            data = self._inflate.decompress(self._pending, self._room())
        except zlib.error as exc:
            raise ArchiveCorrupt(f"the archive is not valid gzip data ({exc})") from None
        self._pending = self._inflate.unconsumed_tail or self._inflate.unused_data
        return data

    def _room(self) -> int:
        # Never more out at once than the limit allows plus one byte, whatever a bomb's ratio.
        return min(max(1, self._limit - self.total + 1), 1 << 20)

    def _take(self, data: bytes) -> None:
        self.total += len(data)
        if self.total > self._limit:
            raise TooLarge(
                f"the workspace archive is larger than {self._limit // (1024 * 1024)} MiB "
                "unpacked (WORKSPACE_UPLOAD_MAX_MB)"
            )
        self._current = data
        self._offset = 0
