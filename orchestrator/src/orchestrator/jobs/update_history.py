"""The bounded, ordered update history of one job."""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Iterable, Iterator
from typing import Any

from orchestrator.domain.jobs import HISTORY_MAX_BYTES, JobUpdate, UpdateKind

# Dropped updates are compacted away once they are this share of the limit (or this many).
_COMPACT_DIVISOR = 4
_COMPACT_MIN = 16
# What one history may hold by default (the orchestrator passes JOB_HISTORY_MAX_MB).
# Never dropped, whatever the bounds: the job's transitions and its result are its history.
KEPT_KINDS = frozenset({UpdateKind.STATE, UpdateKind.RESULT})

# How retained bytes are counted: the text an update holds plus this much for each value, key
# and update, about what each costs in memory beyond its text. So a swarm of tiny values (tens
# of thousands of empty lists in one event) is charged for its memory, not for its few bytes of
# JSON.
VALUE_OVERHEAD = 32
UPDATE_OVERHEAD = 160


def retained_size(update: JobUpdate) -> int:
    """The bytes ``update`` is charged against its history's bound."""
    payload = update.payload
    kind = update.kind
    if kind is UpdateKind.EVENT:
        return UPDATE_OVERHEAD + _value_size(payload.get("data"), 0)
    if kind is UpdateKind.STATUS:
        return UPDATE_OVERHEAD + len(payload.get("message") or "")
    if kind is UpdateKind.RESULT:
        result = payload.get("result")
        if result is None:
            return UPDATE_OVERHEAD
        return UPDATE_OVERHEAD + len(result.message) + _value_size(result.details, 0)
    return UPDATE_OVERHEAD


def _value_size(value: Any, depth: int) -> int:
    kind = type(value)
    if kind is str:
        return VALUE_OVERHEAD + len(value)
    if depth > 200:  # what was recorded is bounded far below this; never recurse without end
        return VALUE_OVERHEAD
    if kind is dict or isinstance(value, dict):
        return VALUE_OVERHEAD + sum(
            VALUE_OVERHEAD + len(str(key)) + _value_size(item, depth + 1)
            for key, item in value.items()
        )
    if kind is list or isinstance(value, list | tuple):
        return VALUE_OVERHEAD + sum(_value_size(item, depth + 1) for item in value)
    if isinstance(value, str):
        return VALUE_OVERHEAD + len(value)
    return VALUE_OVERHEAD


class UpdateHistory:
    """The last updates of one job, oldest first: at most ``limit`` of them and ``max_bytes``
    of them (counted by :func:`retained_size`). The oldest are dropped first, except state
    changes and the result, which are always kept.

    A list rather than a ``deque(maxlen=...)``: a deque reserves a 64-slot block up front,
    about 1 KiB with the object, which each of thousands of ended jobs with a handful of updates
    paid. Updates beyond the bounds are dropped from the front in chunks, so appending stays
    O(1) amortized. A kept update that falls off the front moves to a short side list, which
    precedes every retained update in sequence order.
    """

    __slots__ = ("_bytes", "_head", "_items", "_kept", "_limit", "_max_bytes", "_sizes")

    def __init__(self, limit: int, max_bytes: int = HISTORY_MAX_BYTES) -> None:
        self._items: list[JobUpdate] = []
        self._sizes = array("Q")  # retained_size of each item, same index
        self._head = 0  # items before this index are dropped, not yet compacted away
        self._kept: list[JobUpdate] | None = None  # kept updates from before the head
        self._bytes = 0  # retained bytes of the kept updates and of the items from the head on
        self._limit = limit
        self._max_bytes = max_bytes

    @property
    def retained_bytes(self) -> int:
        """What the retained updates are charged, by :func:`retained_size`."""
        return self._bytes

    def append(self, update: JobUpdate) -> None:
        self._add(update)
        self._trim()

    def extend(self, updates: Iterable[JobUpdate]) -> None:
        for update in updates:
            self._add(update)
        self._trim()

    def __len__(self) -> int:
        return len(self._items) - self._head + (len(self._kept) if self._kept else 0)

    def __iter__(self) -> Iterator[JobUpdate]:
        window = itertools.islice(self._items, self._head, None)
        return itertools.chain(self._kept, window) if self._kept else window

    def after(self, sequence: int) -> list[JobUpdate]:
        """Retained updates with a larger sequence number, oldest first. A range that was
        dropped is simply absent: a watcher resuming inside it gets what is still here."""
        items, head = self._items, self._head
        kept = self._kept
        older = [update for update in kept if update.sequence > sequence] if kept else []
        if len(items) == head or sequence >= items[-1].sequence:
            return older
        first = items[head].sequence
        if items[-1].sequence - first == len(items) - head - 1:
            # Contiguous (the usual case): index directly instead of scanning.
            window = items[head + max(0, sequence + 1 - first) :]
        else:
            # History restored from the store keeps transitions older than the retained window.
            window = [
                update
                for update in itertools.islice(items, head, None)
                if update.sequence > sequence
            ]
        return older + window if older else window

    def _add(self, update: JobUpdate) -> None:
        size = retained_size(update)
        self._items.append(update)
        self._sizes.append(size)
        self._bytes += size

    def _trim(self) -> None:
        items, head = self._items, self._head
        kept = len(self._kept) if self._kept else 0
        while head < len(items) and (
            len(items) - head + kept > self._limit or self._bytes > self._max_bytes
        ):
            dropped = items[head]
            if dropped.kind in KEPT_KINDS:
                if self._kept is None:
                    self._kept = []
                self._kept.append(dropped)  # still counted, in bytes and in number
                kept += 1
            else:
                self._bytes -= self._sizes[head]
            head += 1
        self._head = head
        if head >= max(self._limit // _COMPACT_DIVISOR, _COMPACT_MIN):
            del items[:head]
            del self._sizes[:head]
            self._head = 0
