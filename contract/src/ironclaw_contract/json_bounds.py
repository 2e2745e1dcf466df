"""Bounding a JSON value in bytes, the same way on both sides of the container boundary.

The worker and the bridge bound event data and result details before sending them; the
orchestrator bounds them again on receipt, whatever arrived, so it never keeps more than the
bound. Text that is cut says so (``…[truncated N chars]``), and so does a value from which
whole entries had to be dropped (its :data:`TRUNCATED_KEY` entry).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

from ironclaw_contract.worker_api import MAX_JSON_DEPTH

# The entry added to an object (or the item appended to a list) from which whole values were
# dropped to fit the bound.
TRUNCATED_KEY: Final = "…truncated"
TOO_DEEP: Final = "…[truncated: nested too deep]"
MAX_KEY_CHARS: Final = 256
# Strings are first cut to the caller's limit, then, while the whole is still too large, to half
# as much each round down to this floor; past it, later values are dropped instead.
_MIN_STRING_CHARS = 64


def truncate_text(text: str, limit: int) -> str:
    """Cuts ``text`` to ``limit`` characters, saying how many were dropped."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[truncated {len(text) - limit} chars]"


def json_size(value: Any) -> int:
    """The size in bytes of ``value`` as compact UTF-8 JSON (how the bounds measure it)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=True)
    return len(text.encode("utf-8", "surrogatepass"))


def bound_json(
    value: Any, *, max_bytes: int, max_string: int, max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """``value`` cut so that its compact JSON is at most ``max_bytes`` bytes.

    Strings longer than ``max_string`` characters are cut first. While the whole is still too
    large, every string is cut shorter (half as long each round), so each field keeps a part
    rather than the first ones keeping everything; when even that does not fit (a value made of
    very many small parts), the values that do not fit are dropped, in order, and the result
    says so with a :data:`TRUNCATED_KEY` entry. Containers nested deeper than ``max_depth`` and
    values JSON cannot carry become marker strings. ``value`` itself is returned when nothing
    needs cutting; it is never modified.
    """
    if max_bytes < 128:
        raise ValueError("max_bytes must be at least 128")
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        text = None  # not plain JSON (or too deep for the encoder): the walk below fixes it
    # A text no longer than max_string holds no longer string, its bytes are at most 4 a char,
    # and with fewer brackets than max_depth it cannot be nested deeper.
    if (
        text is not None
        and len(text) <= max_string
        and (len(text) * 4 <= max_bytes or len(text.encode("utf-8", "surrogatepass")) <= max_bytes)
        and text.count("[") + text.count("{") <= max_depth
    ):
        return value
    limit = max_string
    while True:
        # A walk stops as soon as even strings cut to the floor could not fit: values must be
        # dropped then, and the rest of a huge value is never looked at.
        walk = _Walk(limit, max_depth, budget=None, hopeless_over=max_bytes)
        try:
            bounded = walk.value(value, 1)
        except _Hopeless:
            break
        if walk.size <= max_bytes:
            return bounded
        if limit <= _MIN_STRING_CHARS:
            break
        limit = max(_MIN_STRING_CHARS, min(limit, walk.longest) // 2)
    return _fit(value, min(limit, _MIN_STRING_CHARS), max_depth, max_bytes)


def _fit(value: Any, limit: int, max_depth: int, max_bytes: int) -> Any:
    """The values that fit ``max_bytes`` (strings cut to ``limit``), in order, plus the marker."""
    marker = f"…[truncated: the JSON exceeded {max_bytes} bytes]"
    is_object = isinstance(value, Mapping)
    # Room for the marker entry (or item) and its comma.
    reserve = _str_size(marker) + 1 + ((_str_size(TRUNCATED_KEY) + 1) if is_object else 0)
    if not isinstance(value, Mapping | list | tuple):
        reserve = 0  # a lone string is cut to fit; nothing else can be this large
    walk = _Walk(limit, max_depth, budget=max_bytes - reserve)
    bounded = walk.value(value, 1)
    if walk.full or bounded is _DROPPED:
        if isinstance(bounded, dict):
            bounded[TRUNCATED_KEY] = marker
        elif isinstance(bounded, list):
            bounded.append(marker)
        elif bounded is _DROPPED:
            bounded = {TRUNCATED_KEY: marker} if is_object else marker
    if json_size(bounded) > max_bytes:  # cannot happen: the walk counts exactly
        return {TRUNCATED_KEY: marker} if is_object else marker
    return bounded


_DROPPED: Any = object()


class _Hopeless(Exception):
    """Cutting strings cannot make this value fit: values have to be dropped."""


class _Walk:
    """One pass over a value: cuts strings to ``limit``, replaces what JSON cannot carry, and
    counts the compact JSON size exactly. With a ``budget``, a value that does not fit is
    dropped (a string is cut to fit) and nothing after it is taken: ``full`` says so."""

    __slots__ = (
        "budget",
        "cuttable",
        "full",
        "hopeless_over",
        "limit",
        "longest",
        "max_depth",
        "size",
    )

    def __init__(
        self, limit: int, max_depth: int, budget: int | None, hopeless_over: int | None = None
    ) -> None:
        self.limit = limit
        self.max_depth = max_depth
        self.budget = budget
        self.hopeless_over = hopeless_over
        self.size = 0
        # Bytes that cutting every string down to the floor could save, at most.
        self.cuttable = 0
        self.longest = 0  # characters of the longest string, as cut
        self.full = False

    def _take(self, cost: int) -> bool:
        if self.budget is not None and self.size + cost > self.budget:
            self.full = True
            return False
        self.size += cost
        if self.hopeless_over is not None and self.size - self.cuttable > self.hopeless_over:
            raise _Hopeless
        return True

    def value(self, value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return self._string(value)
        if value is None or isinstance(value, bool):
            return value if self._take(4 if value is not False else 5) else _DROPPED
        if isinstance(value, int):
            try:
                text = str(int(value))
            except ValueError:  # more digits than Python prints
                return self._string("…[a number too large]")
            return value if self._take(len(text)) else _DROPPED
        if isinstance(value, float):
            if not math.isfinite(value):
                return self._string(repr(value))
            return value if self._take(len(repr(value))) else _DROPPED
        if isinstance(value, Mapping | list | tuple) and depth > self.max_depth:
            return self._string(TOO_DEEP)
        if isinstance(value, Mapping):
            return self._object(value, depth)
        if isinstance(value, list | tuple):
            return self._array(value, depth)
        return self._string(str(value))

    def _string(self, original: str) -> Any:
        text = truncate_text(original, self.limit)
        size = _str_size(text)
        if self.budget is None:
            self.cuttable += max(0, size - _MIN_STRING_CHARS - 2)
            self.longest = max(self.longest, min(len(original), self.limit))
            self._take(size)
            return text
        if self._take(size):
            return text
        # Cut to what is left, if that leaves something worth reading.
        room = self.budget - self.size
        keep = min(len(original), self.limit, room)
        while keep >= 16:
            candidate = truncate_text(original, keep)
            size = _str_size(candidate)
            if size <= room:
                self.size += size
                return candidate
            keep -= max(1, size - room)
        return _DROPPED

    def _object(self, value: Mapping[Any, Any], depth: int) -> Any:
        if not self._take(2):
            return _DROPPED
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = key if isinstance(key, str) else str(key)
            name = name[:MAX_KEY_CHARS]
            cost = _str_size(name) + 1 + (1 if out else 0)
            if not self._take(cost):
                break
            bounded = self.value(item, depth + 1)
            if bounded is _DROPPED:
                self.size -= cost
                break
            out[name] = bounded
            if self.full:
                break
        return out

    def _array(self, value: list[Any] | tuple[Any, ...], depth: int) -> Any:
        if not self._take(2):
            return _DROPPED
        out: list[Any] = []
        for item in value:
            comma = 1 if out else 0
            if not self._take(comma):
                break
            bounded = self.value(item, depth + 1)
            if bounded is _DROPPED:
                self.size -= comma
                break
            out.append(bounded)
            if self.full:
                break
        return out


def _str_size(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8", "surrogatepass"))
