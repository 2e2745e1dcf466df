"""Request bodies are read as strict JSON: one meaning per document, nesting bounded before
anything recursive can run out of stack."""

from __future__ import annotations

import json
import time

import pytest

from ironclaw_contract.worker_api import MAX_JSON_DEPTH
from orchestrator.errors import InvalidArgument
from orchestrator.http_api.strict_json import loads_strict


def _nested(depth: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * depth + close * depth).encode()


def _objects(depth: int) -> bytes:
    return ('{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)).encode()


def test_plain_json_is_parsed() -> None:
    assert loads_strict(b'{"a": [1, 2.5, "x", null, true], "b": {}}') == {
        "a": [1, 2.5, "x", None, True],
        "b": {},
    }


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b'{"model": "opus", "max_tokens": 1, "model": "sonnet"}', "model"),
        (b'{"messages": [{"role": "user", "role": "assistant"}]}', "role"),
        (b'{"a": {"b": {"c": 1, "c": 2}}}', "c"),
    ],
)
def test_a_duplicate_key_is_refused_by_name(raw: bytes, key: str) -> None:
    with pytest.raises(InvalidArgument, match=f"the key '{key}' appears twice"):
        loads_strict(raw)


def test_the_same_key_in_different_objects_is_fine() -> None:
    assert loads_strict(b'[{"a": 1}, {"a": 2}]') == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize("make", [_nested, _objects])
def test_nesting_up_to_the_bound_is_accepted_and_one_more_is_refused(make: object) -> None:
    assert callable(make)
    loads_strict(make(MAX_JSON_DEPTH))
    with pytest.raises(InvalidArgument, match=f"nested deeper than {MAX_JSON_DEPTH} levels"):
        loads_strict(make(MAX_JSON_DEPTH + 1))


@pytest.mark.parametrize("depth", [201, 200_000, 5_000_000])
def test_very_deep_nesting_is_refused_without_recursing(depth: int) -> None:
    # The stdlib parser raises RecursionError on these; nothing here may.
    with pytest.raises(InvalidArgument, match="nested deeper"):
        loads_strict(_nested(depth))
    with pytest.raises(InvalidArgument, match="nested deeper"):
        loads_strict(b'{"x": ' + _nested(depth) + b"}")
    with pytest.raises(RecursionError):
        json.loads(_nested(200_000))


def test_deep_nesting_is_refused_quickly() -> None:
    started = time.perf_counter()
    for _ in range(20):
        with pytest.raises(InvalidArgument):
            loads_strict(_nested(5_000_000))  # 10 MB
    # Not a benchmark: a parser that read it all into Python objects would take seconds.
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(
    "raw",
    [b"NaN", b'{"a": Infinity}', b'{"a": -Infinity}', b"{", b"", b"\xff", b'{"a": "\\ud800"}'],
)
def test_what_is_not_json_is_refused(raw: bytes) -> None:
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        loads_strict(raw)
