"""Parsing request bodies as strict JSON: one meaning per document, bounded nesting.

A duplicate key gives a document two readings (a check may read the first ``model``, the
upstream the last), so it is refused, naming the key. Nesting is bounded by
``MAX_JSON_DEPTH`` before anything recursive touches the value: the parser (jiter, in Rust,
which the provider SDKs already bring) stops by itself 200 levels down, without recursing on
Python's stack, and the value it returns is then checked against the bound. NaN and Infinity
are not JSON and are refused too.
"""

from __future__ import annotations

import re
from typing import Any

import jiter

from ironclaw_contract.worker_api import MAX_JSON_DEPTH
from orchestrator.errors import InvalidArgument

_DUPLICATE = re.compile(r'^Detected duplicate key "(?P<key>.*)" at line \d+ column (?P<col>\d+)$')


def loads_strict(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value of ``raw``; raises InvalidArgument (HTTP 400) when it is not JSON, has a
    duplicate key or is nested deeper than ``max_depth`` (the outermost value is level 1)."""
    try:
        value = jiter.from_json(raw, catch_duplicate_keys=True, allow_inf_nan=False)
    except ValueError as exc:
        raise InvalidArgument(_describe(str(exc), max_depth)) from None
    if isinstance(value, dict | list) and not _within_depth(value, 1, max_depth):
        raise InvalidArgument(_too_deep(max_depth))
    return value


def _describe(error: str, max_depth: int) -> str:
    found = _DUPLICATE.match(error)
    if found:
        key = found.group("key")
        shown = key if len(key) <= 64 else key[:64] + "…"
        return (
            f"request body is not valid JSON for this API: the key {shown!r} appears twice in "
            f"one object (column {found.group('col')}); send each key once"
        )
    if error.startswith("recursion limit exceeded"):
        return _too_deep(max_depth)
    return "request body is not valid JSON"


def _too_deep(max_depth: int) -> str:
    return f"request body is not valid JSON for this API: nested deeper than {max_depth} levels"


def _within_depth(node: Any, depth: int, max_depth: int) -> bool:
    # Recursion is safe here: the parser stopped at 200 levels. Only containers are visited.
    if depth > max_depth:
        return False
    children = node.values() if type(node) is dict else node
    for child in children:
        kind = type(child)
        if (kind is dict or kind is list) and not _within_depth(child, depth + 1, max_depth):
            return False
    return True
