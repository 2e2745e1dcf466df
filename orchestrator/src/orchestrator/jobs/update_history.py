"""The bounded, ordered update history of one job."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

from orchestrator.domain.jobs import JobUpdate

# Dropped updates are compacted away once they are this share of the limit (or this many).
_COMPACT_DIVISOR = 4
_COMPACT_MIN = 16


class UpdateHistory:
    """The last ``limit`` updates of one job, oldest first.

    A list rather than a ``deque(maxlen=...)``: a deque reserves a 64-slot block up front,
    about 1 KiB with the object, which each of thousands of ended jobs with a handful of updates
    paid. Updates beyond the limit are dropped from the front in chunks, so appending stays
    O(1) amortized.
    """

    __slots__ = ("_head", "_items", "_limit")

    def __init__(self, limit: int) -> None:
        self._items: list[JobUpdate] = []
        self._head = 0  # items before this index are dropped, not yet compacted away
        self._limit = limit

    def append(self, update: JobUpdate) -> None:
        self._items.append(update)
        self._trim()

    def extend(self, updates: Iterable[JobUpdate]) -> None:
        self._items.extend(updates)
        self._trim()

    def __len__(self) -> int:
        return len(self._items) - self._head

    def __iter__(self) -> Iterator[JobUpdate]:
        return itertools.islice(self._items, self._head, None)

    def after(self, sequence: int) -> list[JobUpdate]:
        """Retained updates with a larger sequence number, oldest first."""
        items, head = self._items, self._head
        if len(items) == head or sequence >= items[-1].sequence:
            return []
        first = items[head].sequence
        if items[-1].sequence - first == len(items) - head - 1:
            # Contiguous (the usual case): index directly instead of scanning.
            return items[head + max(0, sequence + 1 - first) :]
        # History restored from the store keeps transitions older than the retained window.
        return [
            update for update in itertools.islice(items, head, None) if update.sequence > sequence
        ]

    def _trim(self) -> None:
        excess = len(self._items) - self._head - self._limit
        if excess <= 0:
            return
        self._head += excess
        if self._head >= max(self._limit // _COMPACT_DIVISOR, _COMPACT_MIN):
            del self._items[: self._head]
            self._head = 0
